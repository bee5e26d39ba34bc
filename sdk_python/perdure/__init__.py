"""Perdure: make any function survive crashes, restarts and deployments.

    from perdure import Perdure

    perdure = Perdure()

    @perdure.durable("notifications:email:send", max_attempts=5)
    async def send_email(to: str, subject: str) -> dict: ...

    async with perdure:
        handle = await send_email("user@example.com", "Welcome!")
        print(await handle.result())

For code without an event loop (Flask, Django, scripts), `perdure.sync` is the same API, blocking.
"""

from perdure._client import DurableFunction, Perdure
from perdure._context import JobContext, context
from perdure._errors import (
    AuthenticationError,
    EventTimeoutError,
    InvalidArgumentError,
    JobCancelledError,
    JobDeadError,
    JobFailedError,
    JobNotFoundError,
    NonRetryableError,
    NotInJobError,
    NotStartedError,
    PerdureError,
    PermissionDeniedError,
    ScheduleExistsError,
    ScheduleNotFoundError,
    SidecarUnavailableError,
    StepNotRecordedError,
)
from perdure._handle import AttemptRecord, ErrorInfo, JobDetails, JobHandle, LogInfo, ProgressInfo, StepInfo
from perdure._options import FunctionLimits, JobOptions, RateLimit
from perdure._schedules import Schedule, Schedules
from perdure._worker import JobEvent

__version__ = "0.1.0"

__all__ = [
    "AttemptRecord",
    "AuthenticationError",
    "DurableFunction",
    "ErrorInfo",
    "EventTimeoutError",
    "FunctionLimits",
    "InvalidArgumentError",
    "JobCancelledError",
    "JobContext",
    "JobDeadError",
    "JobDetails",
    "JobEvent",
    "JobFailedError",
    "JobHandle",
    "JobNotFoundError",
    "JobOptions",
    "LogInfo",
    "NonRetryableError",
    "NotInJobError",
    "NotStartedError",
    "Perdure",
    "PerdureError",
    "PermissionDeniedError",
    "ProgressInfo",
    "RateLimit",
    "Schedule",
    "ScheduleExistsError",
    "ScheduleNotFoundError",
    "Schedules",
    "SidecarUnavailableError",
    "StepInfo",
    "StepNotRecordedError",
    "__version__",
    "context",
]
