"""Exceptions of the Perdure SDK. Each docstring is the default message."""

from __future__ import annotations


class PerdureError(Exception):
    """Something went wrong in Perdure."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class NotStartedError(PerdureError):
    """Perdure is not started: use `async with perdure:` or `await perdure.start()` first."""


class NotInJobError(PerdureError):
    """perdure.context() is only available inside a durable function's handler."""


class StepNotRecordedError(PerdureError):
    """The step was not recorded: this attempt is no longer the job's current one."""


class EventTimeoutError(PerdureError, TimeoutError):
    """The awaited event did not come in time."""


class SidecarUnavailableError(PerdureError):
    """The perdured sidecar cannot be reached."""


class AuthenticationError(PerdureError):
    """The sidecar refused the call: no token, or one it does not know (UNAUTHENTICATED)."""


class PermissionDeniedError(PerdureError, PermissionError):
    """The token may not use this namespace (PERMISSION_DENIED)."""


class JobNotFoundError(PerdureError, LookupError):
    """No such job in this namespace."""


class InvalidArgumentError(PerdureError, ValueError):
    """The sidecar refused the request as malformed."""


class JobFailedError(PerdureError):
    """The job did not finish with a result."""

    def __init__(self, message: str, *, job_id: str, attempts: int,
                 error_type: str = "", error_message: str = "", traceback: str = "") -> None:
        super().__init__(message)
        self.job_id = job_id
        self.attempts = attempts
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback


class JobDeadError(JobFailedError):
    """The job failed for good: its attempts ran out or it raised a non-retryable error."""


class JobCancelledError(JobFailedError):
    """The job was cancelled."""


class NonRetryableError(Exception):
    """Raise this (or a subclass) in a handler to fail the job at once, without retrying it."""


class ScheduleNotFoundError(PerdureError, LookupError):
    """No such schedule in this namespace."""


class ScheduleExistsError(PerdureError):
    """A schedule of this name exists already: pass replace=True to replace it."""
