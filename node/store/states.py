"""The states a study, a job and a send go through (stored as their string values; ``StrEnum`` members compare equal
to the plain strings read back from the database)."""
from __future__ import annotations

from enum import StrEnum


class StudyState(StrEnum):
    """A study's assembly state: ``receiving`` → ``complete``, or ``route_failed`` (with a plain ``error``)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTE_FAILED = "route_failed"


class JobState(StrEnum):
    """A job's state in the queue: ``queued`` → ``running`` → ``done`` | ``failed`` | ``dead``."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class JobOutcome(StrEnum):
    """What a ``done`` job did."""

    REGISTERED = "registered"
    NO_PRIOR = "no_prior"
    SKIPPED = "skipped"


class SendState(StrEnum):
    """A send's state: ``queued`` → ``sending`` → ``done`` | ``dead``."""

    QUEUED = "queued"
    SENDING = "sending"
    DONE = "done"
    DEAD = "dead"


STUDY_STATES = tuple(StudyState)
JOB_STATES = tuple(JobState)
JOB_TERMINAL = (JobState.DONE, JobState.FAILED, JobState.DEAD)
SEND_STATES = tuple(SendState)
