"""Durable functions in a synchronous web app, with the worker in the app's process or in its own.

    python sdk_examples/python/sync_worker.py            # the web app with a worker thread in it
    python sdk_examples/python/sync_worker.py web        # the web app only: it enqueues, serves nothing
    python sdk_examples/python/sync_worker.py worker     # a worker process (stop it with Ctrl-C or SIGTERM)

Then, in another terminal:

    curl -X POST 'localhost:8000/signups?email=ada@example.com'    # {"job": "<id>", ...}
    curl localhost:8000/jobs/<id>                                   # {"status": "success", ...}

The app is a WSGI application (the standard library's wsgiref serves it here; gunicorn, uWSGI,
Flask or Django would call it the same way). It uses perdure.sync: plain functions, blocking
calls, one client shared by the request threads. PERDURE_ADDRESS names a running perdured;
without it each process starts its own, on the embedded PostgreSQL in ./.perdure, which the
processes share.
"""

from __future__ import annotations

import json
import os
import socketserver
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIServer, make_server

from perdure import InvalidArgumentError, JobNotFoundError
from perdure.sync import Perdure, context

# Started on first use in each process (after a pre-forking server's fork), or by start() and
# run_worker() below.
perdure = Perdure(address=os.environ.get("PERDURE_ADDRESS"))
# A stand-in for a mail provider that drops duplicates of an idempotency key.
outbox: dict[str, dict[str, str]] = {}


def render_welcome(email: str) -> str:
    return f"Welcome aboard, {email.split('@')[0]}!"


def send_mail(to: str, body: str, key: str) -> dict[str, str]:
    message = outbox.setdefault(key, {"id": f"msg-{len(outbox) + 1}", "to": to, "body": body})
    return {"message_id": message["id"]}


@perdure.durable("accounts:welcome", max_attempts=5, initial_delay=0.5)
def send_welcome(email: str) -> dict[str, str]:
    """A plain function: it runs in a worker thread, and its steps block until checkpointed."""
    ctx = context()
    body = ctx.step("render", render_welcome, email)
    # The job id makes the key: a retried attempt cannot send twice.
    receipt = ctx.step("send", send_mail, email, body, f"{ctx.job_id}:welcome")
    ctx.log.info(f"welcome mail sent to {email}")
    return {"email": email, **receipt}


# -- the web app ------------------------------------------------------------------------------

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
    if method == "POST" and path == "/signups":
        email = parse_qs(environ.get("QUERY_STRING", "")).get("email", [""])[0]
        if "@" not in email:
            return reply(start_response, "400 Bad Request", {"error": "give ?email=..."})
        # Committed when the call returns; one job per address, however often it is posted.
        handle = send_welcome.options(idempotency_key=f"welcome:{email}")(email)
        return reply(start_response, "202 Accepted", {"job": handle.id, "deduplicated": handle.deduplicated})
    if method == "GET" and path.startswith("/jobs/"):
        try:
            job = perdure.handle(path.removeprefix("/jobs/")).details()
        except (JobNotFoundError, InvalidArgumentError) as exc:
            return reply(start_response, "404 Not Found", {"error": str(exc)})
        return reply(start_response, "200 OK", {"status": job.status, "result": job.result,
                                                "attempts": len(job.attempts)})
    return reply(start_response, "404 Not Found", {"error": f"no route for {method} {path}"})


def reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A request per thread, as gunicorn's threaded workers or Django's runserver do."""

    daemon_threads = True


def main(mode: str = "all", port: int = 8000) -> None:
    if mode == "worker":
        perdure.run_worker()  # until Ctrl-C or SIGTERM; running jobs get shutdown_grace to finish
        return
    if mode == "all":
        perdure.start()  # serves send_welcome in the background of this process
    with make_server("127.0.0.1", port, app, server_class=ThreadingServer) as server:
        print(f"listening on http://127.0.0.1:{server.server_port} ({mode})")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
    perdure.close()  # lets running jobs finish (shutdown_grace), hands the others back


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "all")
