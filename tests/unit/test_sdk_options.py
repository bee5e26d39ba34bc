"""The SDK checks options where they are written, before anything reaches the sidecar."""

from __future__ import annotations

import pytest

from perdure import FunctionLimits, Perdure, RateLimit
from perdure._options import JobOptions
from perdure.v1 import types_pb2


@pytest.mark.parametrize(("options", "message"), [
    ({"max_attempts": 0}, "max_attempts must be an integer of at least 1"),
    ({"max_attempts": 2.5}, "max_attempts must be an integer"),
    ({"max_attempts": True}, "max_attempts must be an integer"),
    ({"backoff": "random"}, "backoff must be one of exponential, linear, fixed"),
    ({"initial_delay": -1}, "initial_delay must be a number of seconds, not negative"),
    ({"delay": -0.5}, "delay must be a number of seconds, not negative"),
    ({"max_delay": float("inf")}, "max_delay must be a number of seconds"),
    ({"timeout": 0}, "timeout must be a number of seconds greater than 0"),
    ({"jitter": 2}, "jitter must be between 0 and 1"),
    ({"initial_delay": 5, "max_delay": 1}, "max_delay (1) must not be less than initial_delay (5)"),
    ({"idempotency_key": ""}, "idempotency_key must be a non-empty string"),
    ({"concurrency_key": 7}, "concurrency_key must be a non-empty string"),
    ({"start_within": 0}, "start_within must be a number of seconds greater than 0"),
    ({"max_duration": -1}, "max_duration must be a number of seconds greater than 0"),
])
def test_bad_option__fails_at_the_call_site(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as caught:
        JobOptions().merged(**options)
    assert message in str(caught.value)


def test_unknown_option__is_a_type_error_listing_the_known_ones() -> None:
    with pytest.raises(TypeError, match="unknown option.*retries.*expected some of"):
        JobOptions().merged(retries=3)


def test_options__become_the_enqueue_request_with_seconds_as_durations() -> None:
    options = JobOptions().merged(max_attempts=5, backoff="linear", initial_delay=0.25, max_delay=9,
                                  jitter=0.0, timeout=2.5, idempotency_key="k", delay=3)
    message = options.request(namespace="ns", name="f", payload=types_pb2.Payload())
    assert message.retry.max_attempts == 5 and message.retry.backoff == types_pb2.BACKOFF_LINEAR
    assert message.retry.initial_delay.ToNanoseconds() == 250_000_000
    assert message.retry.HasField("jitter") and message.retry.jitter == 0.0
    assert message.timeout.ToNanoseconds() == 2_500_000_000
    assert message.delay.seconds == 3 and message.idempotency_key == "k"


def test_unset_options__are_left_to_the_sidecar_defaults() -> None:
    message = JobOptions().request(namespace="ns", name="f", payload=types_pb2.Payload())
    assert not message.retry.HasField("max_attempts") and not message.retry.HasField("jitter")
    assert not message.HasField("timeout") and not message.HasField("delay")


def test_durable__refuses_bad_names_and_duplicates() -> None:
    perdure = Perdure(address="127.0.0.1:1")
    with pytest.raises(ValueError, match="non-empty name"):
        perdure.durable("")
    perdure.durable("a")(lambda: None)
    with pytest.raises(ValueError, match="already registered"):
        perdure.durable("a")(lambda: None)
    with pytest.raises(ValueError, match="max_attempts"):
        perdure.durable("b", max_attempts=0)


def test_client__refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="either address .* or storage"):
        Perdure(address="127.0.0.1:1", storage="postgresql://x")
    with pytest.raises(ValueError, match="worker_concurrency"):
        Perdure(address="127.0.0.1:1", worker_concurrency=0)
    with pytest.raises(ValueError, match="unknown event 'job:finish'"):
        Perdure(address="127.0.0.1:1").on("job:finish", print)


async def test_calls_before_start__say_how_to_start() -> None:
    perdure = Perdure(address="127.0.0.1:1")
    from perdure import NotStartedError

    with pytest.raises(NotStartedError, match="async with perdure"):
        await perdure.enqueue("f")


@pytest.mark.parametrize(("limits", "message"), [
    ({"concurrency": 0}, "concurrency must be an integer of at least 1"),
    ({"key_concurrency": 1.5}, "key_concurrency must be an integer of at least 1"),
    ({"rate_limit": (10, 60)}, "rate_limit must be a perdure.RateLimit"),
])
def test_bad_limits__fail_where_the_function_is_defined(limits: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Perdure(address="127.0.0.1:1").durable("f", **limits)  # type: ignore[arg-type]


def test_bad_rate_limit__is_refused() -> None:
    with pytest.raises(ValueError, match="limit must be an integer of at least 1"):
        RateLimit(0, per=1)
    with pytest.raises(ValueError, match="period .per. must be a number of seconds greater than 0"):
        RateLimit(1, per=0)


def test_limits__become_the_registration_message() -> None:
    message = FunctionLimits(concurrency=5, rate_limit=RateLimit(10, per=0.5)).message("f")
    assert (message.name, message.concurrency, message.HasField("key_concurrency")) == ("f", 5, False)
    assert (message.rate_limit.limit, message.rate_limit.period.ToNanoseconds()) == (10, 500_000_000)
    assert not FunctionLimits().declared
