"""A cron job: a durable function that runs on a schedule, once per tick however many
workers and sidecars run.

    python sdk_examples/python/cron_cleanup.py

In production the schedule would be, say, "0 3 * * *" (03:00 every day) with a time zone;
here it is every two seconds (a leading seconds field) so that the example finishes quickly.
The schedule is created when this process starts serving the function.
"""

from __future__ import annotations

import asyncio
import os

from perdure import Perdure

perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"))
runs: list[str] = []


@perdure.durable("maintenance:cleanup", schedule="*/2 * * * * *", timezone="UTC", missed="skip")
async def cleanup() -> dict:
    runs.append("cleaned")
    return {"removed_files": 3}


async def main(runs_wanted: int = 2) -> dict:
    async with perdure:
        schedule = await perdure.schedules.get("maintenance:cleanup")
        print(f"schedule {schedule.name!r}: {schedule.cron} ({schedule.timezone}), next run {schedule.next_run_at}")
        jobs: list = []
        while len(jobs) < runs_wanted:  # the ticks' jobs, once their results are recorded
            await asyncio.sleep(0.1)
            jobs = await perdure.list_jobs("maintenance:cleanup", status="success", labels={"schedule": schedule.name})
        print(f"{len(runs)} runs so far; jobs: {[job.id for job in jobs]}")
        await perdure.schedules.delete("maintenance:cleanup")  # an example should not leave it behind
        return {"schedule": schedule.name, "runs": len(runs), "jobs": len(jobs)}


if __name__ == "__main__":
    asyncio.run(main())
