"""Trace context across the queue, when OpenTelemetry is installed (it is optional).

The call that enqueues a job sends its current trace context (W3C `traceparent` and
`tracestate`, through the globally configured propagator) with the job; every attempt's
handler then runs inside a span `perdure.job <name>` whose parent is that context, so the
work done later, in another process, joins the caller's trace.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def job_span(name: str, job_id: str, attempt: int, carrier: Mapping[str, str]) -> Iterator[None]:
    """Run an attempt inside a span that continues the enqueuing call's trace."""
    # Without a configured tracer provider a span would record nothing: skip its cost.
    if propagate is None or isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider,
                                                                     trace.NoOpTracerProvider)):
        yield
        return
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
