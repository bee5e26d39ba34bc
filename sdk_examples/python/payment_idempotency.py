"""A payment that happens once, however often it is asked for.

    python sdk_examples/python/payment_idempotency.py

The caller enqueues with an idempotency key derived from what it pays for: a second
request with the same key (a double click, a retried HTTP request) returns the same job
instead of charging again. Inside, the handler calls the payment provider with a key derived
from the job id, so that a retried attempt cannot charge twice either.
"""

from __future__ import annotations

import asyncio
import os

from perdure import Perdure, context

perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"))
provider_charges: dict[str, int] = {}  # a stand-in payment provider, deduplicating by key


@perdure.durable("payments:charge", max_attempts=5)
async def charge(invoice_id: str, cents: int) -> dict:
    key = f"{context().job_id}:charge"
    provider_charges.setdefault(key, cents)  # the provider ignores a repeated key
    return {"invoice": invoice_id, "charged": cents}


async def pay(invoice_id: str, cents: int):
    return await charge.options(idempotency_key=f"invoice-{invoice_id}")(invoice_id, cents)


async def main() -> dict:
    async with perdure:
        first = await pay("inv-7", 4200)
        again = await pay("inv-7", 4200)  # the user clicked twice
        print("same job:", first.id == again.id, "| second request deduplicated:", again.deduplicated)
        result = await again.result(timeout=60)
        print("charged once:", result, "| provider charges:", len(provider_charges))
        return {"first": first.id, "again": again.id, "deduplicated": again.deduplicated, "result": result}


if __name__ == "__main__":
    asyncio.run(main())
