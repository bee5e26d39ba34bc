"""Sending an email with retries: the mail server fails twice, the third attempt gets through.

    python sdk_examples/python/email_send.py

Each failed attempt is recorded (`details().attempts`) and retried after an exponential
backoff; after `max_attempts` the job would be dead, and `result()` would raise
JobDeadError with the last error.
"""

from __future__ import annotations

import asyncio
import os

from perdure import Perdure, context

# PERDURE_ADDRESS names a running sidecar; without it, Perdure starts its own.
perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"))
sent: list[tuple[str, str]] = []  # a stand-in mail server's outbox


class MailServerBusy(Exception):
    pass


@perdure.durable("notifications:email:send", max_attempts=5, initial_delay=0.1, max_delay=2.0)
async def send_email(to: str, subject: str) -> dict:
    if context().attempt < 3:  # the first two attempts find the server busy
        raise MailServerBusy("421 try again later")
    sent.append((to, subject))
    return {"to": to, "subject": subject, "attempt": context().attempt}


async def main() -> dict:
    async with perdure:
        handle = await send_email("user@example.com", "Welcome!")
        result = await handle.result(timeout=60)
        details = await handle.details()
        for attempt in details.attempts:
            error = f" ({attempt.error.type}: {attempt.error.message})" if attempt.error else ""
            print(f"attempt {attempt.number}: {attempt.outcome}{error}")
        print("sent:", result)
        return {"result": result, "outcomes": [a.outcome for a in details.attempts]}


if __name__ == "__main__":
    asyncio.run(main())
