"""The quick start: a durable function that fails once, is retried, and returns its result.

    python sdk_examples/python/quickstart.py

With no arguments Perdure starts its own perdured on an embedded PostgreSQL in ./.perdure.
"""

import asyncio

from perdure import Perdure

perdure = Perdure()
calls: dict[str, int] = {}


@perdure.durable("notifications:email:send", max_attempts=5, backoff="exponential",
                 initial_delay=0.2, max_delay=5.0, timeout=30.0, jitter=0.1)
async def send_email(to: str, subject: str) -> dict:
    calls[to] = calls.get(to, 0) + 1
    if calls[to] == 1:
        raise ConnectionError("the mail server hung up (the first attempt always fails here)")
    return {"sent": True, "to": to, "subject": subject, "attempt": calls[to]}


async def main() -> None:
    async with perdure:
        handle = await send_email("user@example.com", "Welcome!")
        print(f"enqueued job {handle.id}")
        result = await handle.result(timeout=60)
        print(f"result: {result}")
        details = await handle.details()
        for attempt in details.attempts:
            error = f" ({attempt.error.type}: {attempt.error.message})" if attempt.error else ""
            print(f"  attempt {attempt.number}: {attempt.outcome}{error}")
        print(f"status: {details.status}")


if __name__ == "__main__":
    asyncio.run(main())
