"""A job that waits for a person: an expense report is filed, waits (suspended, holding no
worker) for an approval event, then is paid or rejected.

    python sdk_examples/python/approval.py

The wait is durable: the sidecar, the worker or both may restart meanwhile; the job resumes
when the event is emitted, from any process or language (`perdure.emit_event`, or the
EmitEvent RPC), or fails with EventTimeoutError after its timeout.
"""

from __future__ import annotations

import asyncio
import os

from perdure import EventTimeoutError, Perdure, context

perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"))


@perdure.durable("expenses:process")
async def process_expense(report_id: str, amount: int) -> dict:
    ctx = context()
    await ctx.step("notify-approver", lambda: f"asked the approver about {report_id}")
    try:
        decision = await ctx.wait_for_event(f"expense-approval:{report_id}", timeout=7 * 24 * 3600)
    except EventTimeoutError:
        return {"report": report_id, "status": "expired"}
    if not decision["approved"]:
        return {"report": report_id, "status": "rejected", "by": decision["by"]}
    await ctx.step("pay", lambda: f"paid {amount}")
    return {"report": report_id, "status": "paid", "by": decision["by"]}


async def main() -> dict:
    async with perdure:
        handle = await process_expense("exp-12", 180)
        while await handle.status() != "suspended":  # filed, now waiting for the approver
            await asyncio.sleep(0.05)
        print("waiting for:", (await handle.details()).waiting_for)
        await perdure.emit_event("expense-approval:exp-12", {"approved": True, "by": "dana"})
        result = await handle.result(timeout=60)
        print(result)
        return result


if __name__ == "__main__":
    asyncio.run(main())
