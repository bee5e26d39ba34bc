"""Retry delays for every backoff kind: values, caps, jitter bounds, huge attempt numbers."""

from __future__ import annotations

import random

import pytest

from perdured.backoff import RetryPolicy, retry_delay


def policy(**overrides: object) -> RetryPolicy:
    return RetryPolicy(**{"jitter": 0.0, **overrides})  # type: ignore[arg-type]


@pytest.mark.parametrize(("attempt", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (8, 60.0)])
def test_exponential__doubles_from_initial_delay_up_to_the_cap(attempt: int, expected: float) -> None:
    assert retry_delay(policy(backoff="exponential"), attempt) == expected


@pytest.mark.parametrize(("attempt", "expected"), [(1, 0.5), (2, 1.0), (3, 1.5), (40, 10.0)])
def test_linear__grows_by_initial_delay_up_to_the_cap(attempt: int, expected: float) -> None:
    assert retry_delay(policy(backoff="linear", initial_delay=0.5, max_delay=10.0), attempt) == expected


@pytest.mark.parametrize("attempt", [1, 2, 50])
def test_fixed__is_always_the_initial_delay(attempt: int) -> None:
    assert retry_delay(policy(backoff="fixed", initial_delay=2.5), attempt) == 2.5


def test_fixed__is_still_capped_by_max_delay() -> None:
    assert retry_delay(policy(backoff="fixed", initial_delay=5.0, max_delay=1.0), 1) == 1.0


@pytest.mark.parametrize("backoff", ["exponential", "linear", "fixed"])
@pytest.mark.parametrize("attempt", [1_000, 1_025, 2**31 - 1, 10**30])
def test_huge_attempt_numbers__never_overflow_and_stay_capped(backoff: str, attempt: int) -> None:
    assert retry_delay(policy(backoff=backoff, initial_delay=1.0, max_delay=60.0), attempt) <= 60.0
    assert retry_delay(policy(backoff=backoff, initial_delay=1.0, max_delay=60.0, jitter=1.0), attempt) >= 0.0


@pytest.mark.parametrize("backoff", ["exponential", "linear", "fixed"])
def test_jitter__keeps_every_delay_within_its_range(backoff: str) -> None:
    rand = random.Random(7)
    jittered = policy(backoff=backoff, initial_delay=1.0, max_delay=60.0, jitter=0.3)
    for attempt in range(1, 12):
        full = retry_delay(policy(backoff=backoff, initial_delay=1.0, max_delay=60.0), attempt)
        values = [retry_delay(jittered, attempt, rand) for _ in range(200)]
        assert all(full * 0.7 - 0.001 <= value <= full for value in values)
        assert len(set(values)) > 1  # it really varies


def test_delays__have_millisecond_precision() -> None:
    delay = retry_delay(policy(backoff="fixed", initial_delay=0.0123456), 1)
    assert delay == 0.012
    rand = random.Random(1)
    for _ in range(100):
        value = retry_delay(RetryPolicy(jitter=0.5), 3, rand)
        assert round(value, 3) == value


def test_zero_initial_delay__retries_at_once() -> None:
    assert retry_delay(policy(initial_delay=0.0, max_delay=0.0), 5) == 0.0


def test_attempt_below_one__is_refused() -> None:
    with pytest.raises(ValueError, match="attempt must be at least 1"):
        retry_delay(policy(), 0)


def test_unknown_backoff__is_refused() -> None:
    with pytest.raises(ValueError, match="unknown backoff 'random'"):
        retry_delay(policy(backoff="random"), 1)


def test_defaults__are_three_attempts_exponential_1s_to_60s_with_a_tenth_of_jitter() -> None:
    assert RetryPolicy() == RetryPolicy(max_attempts=3, backoff="exponential", initial_delay=1.0,
                                        max_delay=60.0, jitter=0.1)
