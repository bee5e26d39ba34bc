"""Order fulfilment: an orchestration of durable functions, each one its own job.

    python sdk_examples/python/order_fulfilment.py

`orders:fulfil` charges the payment, reserves the inventory and creates the shipment, each a
child job it awaits. Spawning and awaiting are checkpoints: if the orchestrator crashes and
is retried, it picks up the same children and their results instead of charging twice.
While it waits for a child it is suspended and holds no worker slot, so this runs even with
worker_concurrency=1. The payment uses the job id as its idempotency key, as external APIs
should be called from durable code.
"""

from __future__ import annotations

import asyncio
import os

from perdure import JobDeadError, NonRetryableError, Perdure, context

# PERDURE_ADDRESS names a running sidecar; without it, Perdure starts its own.
perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"), worker_concurrency=1)
# Stand-ins for the outside world, so that the example runs on its own.
charges: dict[str, int] = {}
stock = {"book": 3, "lamp": 0}


@perdure.durable("payments:charge", max_attempts=5, initial_delay=0.2)
async def charge(order_id: str, amount: int) -> dict:
    # Same key on every retry: the payment provider would drop a duplicate charge.
    key = f"{context().job_id}:charge"
    charges.setdefault(key, amount)
    return {"order": order_id, "charged": amount, "key": key}


@perdure.durable("inventory:reserve")
async def reserve(order_id: str, item: str) -> dict:
    if stock.get(item, 0) <= 0:
        raise NonRetryableError(f"{item} is out of stock")
    stock[item] -= 1
    return {"order": order_id, "reserved": item}


@perdure.durable("shipping:create")
async def ship(order_id: str, address: str) -> dict:
    return {"order": order_id, "tracking": f"TRACK-{order_id.upper()}", "to": address}


@perdure.durable("orders:fulfil")
async def fulfil(order_id: str, item: str, amount: int, address: str) -> dict:
    ctx = context()
    ctx.log.info(f"fulfilling {order_id}")
    payment = await (await charge(order_id, amount)).result()
    ctx.progress(1, 3, "charged")
    try:
        reservation = await (await reserve(order_id, item)).result()
    except JobDeadError as exc:
        ctx.log.warning(f"cannot reserve {item}: {exc.error_message}")
        return {"order": order_id, "status": "backordered", "payment": payment}
    ctx.progress(2, 3, "reserved")
    shipment = await (await ship(order_id, address)).result()
    ctx.progress(3, 3, "shipped")
    return {"order": order_id, "status": "shipped", "payment": payment, "reservation": reservation,
            "shipment": shipment}


async def main() -> list[dict]:
    async with perdure:
        orders = [await fulfil("o-1", "book", 25, "1 Main St"), await fulfil("o-2", "lamp", 40, "2 High St")]
        results = [await order.result(timeout=60) for order in orders]
        for result in results:
            print(result["order"], result["status"])
        return results


if __name__ == "__main__":
    asyncio.run(main())
