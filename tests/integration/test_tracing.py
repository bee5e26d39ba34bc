"""OpenTelemetry: a handler's span continues the trace of the call that enqueued its job."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk", reason="opentelemetry-sdk is in the dev dependencies")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from perdure import _tracing  # noqa: E402

EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="module", autouse=True)
def tracer_provider():
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    trace.set_tracer_provider(provider)  # once per process: OpenTelemetry allows no other
    _tracing.forget_provider()  # jobs of earlier tests found none a moment ago
    yield


async def test_handler_span__is_a_child_of_the_enqueuing_span(make_client) -> None:
    client = make_client()
    seen: dict[str, int] = {}

    @client.durable("traced:async")
    async def traced_async() -> None:
        seen["async"] = trace.get_current_span().get_span_context().trace_id

    @client.durable("traced:sync")
    def traced_sync() -> None:  # runs in a thread: the context goes with it
        seen["sync"] = trace.get_current_span().get_span_context().trace_id

    async with client:
        await client.wait_until_serving()
        with trace.get_tracer("test").start_as_current_span("checkout") as checkout:
            first, second = await traced_async(), await traced_sync()
        await first.result(timeout=30)
        await second.result(timeout=30)

    caller = checkout.get_span_context()
    assert seen == {"async": caller.trace_id, "sync": caller.trace_id}
    spans = {span.name: span for span in EXPORTER.get_finished_spans()}
    job_span = spans["perdure.job traced:async"]
    assert job_span.parent is not None and job_span.parent.span_id == caller.span_id
    assert job_span.kind == trace.SpanKind.CONSUMER
    assert job_span.attributes["perdure.job_id"] == first.id
