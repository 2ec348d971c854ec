"""The public API is pinned: changing it is a decision, not an accident."""

import jobboard


def test_public_names_are_pinned():
    assert sorted(jobboard.__all__) == [
        "AtomState", "Board", "Claimer", "Conductor", "Engine", "Executor", "FlowState",
        "Job", "JobBoardError", "JobOutcome", "JobState", "Locks", "Logbook", "Outcome",
        "Retry", "Task", "ThreadExecutor", "__version__", "flows", "task",
    ]
    for name in jobboard.__all__:
        assert getattr(jobboard, name) is not None


def test_every_error_is_a_jobboard_error():
    import inspect

    from jobboard import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if c.__module__ == errors.__name__]
    assert len(classes) > 15
    assert all(issubclass(c, errors.JobBoardError) for c in classes)
    for name in ("JobNotFound", "AlreadyClaimed", "NotOwner", "StaleOwner",
                 "FactoryNotAllowed", "LockTimeout", "PayloadTooLarge"):
        assert name in errors.__doc__
