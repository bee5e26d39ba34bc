"""How long a failed attempt waits before the next one."""

from __future__ import annotations

import random
from dataclasses import dataclass

BACKOFF_KINDS = ("exponential", "linear", "fixed")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    backoff: str = "exponential"
    initial_delay: float = 1.0  # seconds
    max_delay: float = 60.0  # seconds
    jitter: float = 0.1  # 0..1


def retry_delay(policy: RetryPolicy, attempt: int, rand: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based), in whole milliseconds.

    The raw delay is capped at max_delay, then jitter takes a random share of it off:
    the result lies in [d * (1 - jitter), d]. Never overflows, whatever the attempt number.
    """
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    initial, cap = policy.initial_delay, policy.max_delay
    if policy.backoff == "fixed":
        delay = initial
    elif policy.backoff == "linear":
        delay = initial * attempt
    elif policy.backoff == "exponential":
        # Past 2**1000 every delay is over any cap; capping the exponent keeps it finite.
        delay = initial * 2.0 ** min(attempt - 1, 1000)
    else:
        raise ValueError(f"unknown backoff {policy.backoff!r}; expected one of {', '.join(BACKOFF_KINDS)}")
    delay = min(delay, cap)
    if policy.jitter:
        delay -= delay * policy.jitter * (rand or random).random()
    return round(max(delay, 0.0), 3)
