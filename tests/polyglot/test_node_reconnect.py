"""A Node.js worker whose sidecar is killed (kill -9) while it runs jobs comes back to the
restarted sidecar on one stream, and serves; the jobs it held are run again, not lost.

The Node.js twin of tests/e2e/test_reconnect.py: there, the Python SDK's abandoned handlers
answered after their stream was gone and raced the new stream's registration, which left a second,
dead stream registered (its jobs waited out their timeout) or got the worker refused for good.
The worker here is tests/polyglot/node_reconnect_worker.js, on the Node.js SDK."""

from __future__ import annotations

from perdure import Perdure
from tests.e2e.test_failures import WAIT, eventually, free_port

ROUNDS = 4
IN_FLIGHT = 30  # jobs running when the sidecar dies; also the worker's concurrency
ECHOES = 20
LEASE = 3.0  # seconds: the jobs the dead sidecar held come back within the test's waits


async def test_sidecar_killed__a_node_worker_with_jobs_in_flight_comes_back_on_one_stream(
        perdured, node_worker, db) -> None:
    listen = f"127.0.0.1:{free_port()}"
    sidecar = perdured("--listen", listen, "--lease", str(LEASE))
    worker = await node_worker(sidecar.address, IN_FLIGHT)
    held = []
    for round in range(ROUNDS):
        tokens = [f"r{round}n{n}" for n in range(IN_FLIGHT)]
        async with Perdure(address=listen) as client:
            for token in tokens:
                # Each is killed once; a few spare attempts keep a re-run caught by a later kill.
                held.append(await client.enqueue("reconnect:hold", token, max_attempts=5, initial_delay=0.05))
            await eventually(lambda pattern=f"r{round}n*": worker.started(pattern) == IN_FLIGHT,
                             "every held job to start in the Node.js worker")
        sidecar.kill()
        sidecar = perdured("--listen", listen, "--lease", str(LEASE))  # the worker reconnects to the same address

        async with Perdure(address=listen) as client:
            echoes = [await client.enqueue("reconnect:echo", n) for n in range(ECHOES)]
            assert [await h.result(timeout=WAIT) for h in echoes] == [
                {"value": n, "pid": worker.pid} for n in range(ECHOES)]
        streams = db.execute("SELECT worker_name, sdk FROM perdure.workers WHERE sidecar_id LIKE %s",
                             (f"%-{sidecar.process.pid}-%",)).fetchall()
        assert len(streams) == 1, streams
        assert streams[0][0].endswith(f"/pid-{worker.pid}") and streams[0][1].startswith("perdure-node/"), streams
        # Only now: a handler still running from before the kill would answer on the new stream.
        # (Run again, after their lease expired, the held jobs return at once.)
        for token in tokens:
            (worker.directory / f"release-{token}").touch()

    async with Perdure(address=listen) as client:
        results = [await client.handle(h.id).result(timeout=WAIT) for h in held]
        attempts = [[a.outcome for a in (await client.handle(h.id).details()).attempts] for h in held]
    assert all(a[0] == "lease_expired" and a[-1] == "succeeded" for a in attempts), attempts  # run again
    assert results == [{"token": f"r{round}n{n}", "pid": worker.pid} for round in range(ROUNDS) for n in range(IN_FLIGHT)]
    assert worker.process.poll() is None, "the Node.js worker died"
