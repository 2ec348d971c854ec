"""The conductor daemon: claims jobs, runs their flows, reclaims and resumes."""

from jobboard.conductor.conductor import Conductor, default_name
from jobboard.conductor.run import JobRun

__all__ = ["Conductor", "JobRun", "default_name"]
