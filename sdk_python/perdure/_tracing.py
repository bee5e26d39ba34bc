"""Trace context across the queue, when OpenTelemetry is installed (it is optional).

The call that enqueues a job sends its current trace context (W3C `traceparent` and
`tracestate`, through the globally configured propagator) with the job; every attempt's
handler then runs inside a span `perdure.job <name>` whose parent is that context, so the
work done later, in another process, joins the caller's trace.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping

try:
    from opentelemetry import propagate, trace
except ImportError:  # not installed: nothing to propagate
    propagate = None  # type: ignore[assignment]


def current_context() -> dict[str, str]:
    """The caller's trace context, to send with a job (empty without OpenTelemetry)."""
    carrier: dict[str, str] = {}
    if propagate is not None:
        propagate.inject(carrier)
    return carrier


# Whether a tracer provider is configured, as last looked up (monotonic time): looking it up
# reads the environment each time, a good part of a short job's cost in its worker. Once set,
# a provider stays (OpenTelemetry allows one); one set later is seen within a second.
RECHECK_SECONDS = 1.0
_traced, _checked_at = False, -RECHECK_SECONDS


def _tracing() -> bool:
    global _traced, _checked_at
    if propagate is None or _traced:
        return _traced
    if (now := time.monotonic()) - _checked_at >= RECHECK_SECONDS:
        provider = trace.get_tracer_provider()
        _traced = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
        _checked_at = now
    return _traced


def forget_provider() -> None:
    """Look the tracer provider up again at the next job (one was just set)."""
    global _checked_at
    _checked_at = -RECHECK_SECONDS


def job_span(name: str, job_id: str, attempt: int, carrier: Mapping[str, str]) -> contextlib.AbstractContextManager[None]:
    """Run an attempt inside a span that continues the enqueuing call's trace."""
    # Without a configured tracer provider a span would record nothing: skip its cost.
    return _job_span(name, job_id, attempt, carrier) if _tracing() else _NO_SPAN


_NO_SPAN = contextlib.nullcontext()


@contextlib.contextmanager
def _job_span(name: str, job_id: str, attempt: int, carrier: Mapping[str, str]) -> Iterator[None]:
    tracer = trace.get_tracer("perdure")
    with tracer.start_as_current_span(
        f"perdure.job {name}", context=propagate.extract(dict(carrier)), kind=trace.SpanKind.CONSUMER,
        attributes={"perdure.function": name, "perdure.job_id": job_id, "perdure.attempt": attempt},
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield
        except Exception as exc:  # the handler failed; a suspension or a cancellation is no error
            span.record_exception(exc)
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
            raise
