"""A worker whose sidecar is killed while it runs jobs comes back to the restarted sidecar on
one stream, and serves. The handlers it abandoned answer after the stream is gone; those answers
mean nothing to the new stream and must not race its registration. (Found by the chaos soak,
bench/chaos.py: written together with the Register, they left a second, dead stream registered,
whose jobs all waited out their timeout, or got the worker refused for good.)"""

from __future__ import annotations

from perdure import Perdure

from .test_failures import WAIT, eventually, free_port

ROUNDS = 4
IN_FLIGHT = 30  # jobs running when the sidecar dies
ECHOES = 20


async def test_sidecar_restarted__a_worker_with_jobs_in_flight_comes_back_on_one_stream(
        perdured, app, shared_dir, db) -> None:
    listen = f"127.0.0.1:{free_port()}"
    sidecar = perdured("--listen", listen)
    worker = await app(sidecar.address, "e2e:hold", "e2e:echo", concurrency=IN_FLIGHT)
    for round in range(ROUNDS):
        async with Perdure(address=listen) as client:
            for n in range(IN_FLIGHT):
                await client.enqueue("e2e:hold", f"r{round}n{n}")
            await eventually(lambda started=f"started-r{round}n*": len(list(shared_dir.glob(started))) == IN_FLIGHT,
                             "every held job to start")
        sidecar.kill()
        sidecar = perdured("--listen", listen)  # the worker reconnects to the same address

        async with Perdure(address=listen) as client:
            echoes = [await client.enqueue("e2e:echo", n) for n in range(ECHOES)]
            assert [await h.result(timeout=WAIT) for h in echoes] == [
                {"value": n, "pid": worker.pid} for n in range(ECHOES)]
        streams = db.execute("SELECT id FROM perdure.workers WHERE sidecar_id LIKE %s",
                             (f"%-{sidecar.process.pid}-%",)).fetchall()
        assert len(streams) == 1, streams
