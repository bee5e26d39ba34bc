"""A step the sidecar cannot record because of a database error (PostgreSQL restarting, say)
fails its attempt at once, which is retried; the handler does not wait for an answer that
never comes until its attempt times out. (Found by the chaos soak, bench/chaos.py.)"""

from __future__ import annotations

import psycopg

import perdure as sdk


async def test_step__a_database_error_recording_it_fails_the_attempt_instead_of_hanging(
        make_client, database_url) -> None:
    perdure = make_client()

    async def rename_steps(old: str, new: str) -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f"ALTER TABLE perdure.{old} RENAME TO {new}")

    @perdure.durable("steps:unrecordable_once", timeout=120, max_attempts=3, initial_delay=0.05, jitter=0)
    async def unrecordable_once() -> str:
        ctx = sdk.context()
        if ctx.attempt == 1:  # a real database error, for this attempt's step only
            await rename_steps("steps", "steps_away")
        try:
            return await ctx.step("one", lambda: "done")
        finally:
            if ctx.attempt == 1:
                await rename_steps("steps_away", "steps")

    async with perdure:
        handle = await unrecordable_once()
        assert await handle.result(timeout=20) == "done"  # far within the attempt's timeout
        details = await handle.details()
    assert [a.outcome for a in details.attempts] == ["failed", "succeeded"]
    assert details.attempts[0].error is not None
    assert details.attempts[0].error.type.endswith("StepNotRecordedError")
    assert [step.name for step in details.steps] == ["one"]
