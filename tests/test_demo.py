"""`jobboard demo` end to end: its own ZooKeeper, two conductor processes, a kill."""

from click.testing import CliRunner

from jobboard.cli import main


def test_demo_kills_a_conductor_and_every_job_completes():
    result = CliRunner().invoke(main, ["demo", "--jobs", "4"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "4/4 jobs COMPLETE; finished tasks run again: 0" in result.output
    assert "kill -9 alpha" in result.output
    assert "ran on alpha then beta" in result.output
