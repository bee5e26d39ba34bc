"""The dashboard's HTTP side: the page, its assets, a JSON API and server-sent events.

It runs in perdured's own event loop (aiohttp) and is a client of the sidecar's own gRPC
contract, over loopback, like any SDK: it holds no SQL and no job logic. Every route of the
JSON API is one RPC (see ROUTES below); its answer is the RPC's response as JSON (shape.py),
and an RPC's error becomes an HTTP status with {"error": message}.

Security (see the README):
- with tokens configured, everything but the page itself and its assets needs a login (one
  of the sidecar's tokens, kept in a server-side session: login.py), and every RPC is made
  with the person's token, so the sidecar decides what it may see and do;
- perdured serves it on loopback unless told otherwise; beyond loopback it needs TLS and
  tokens (config.py refuses a wider address without them, unless --insecure or
  --dashboard-allow-remote);
- on a loopback address, requests must name a loopback host (a DNS-rebinding page cannot
  read or act through the victim's browser);
- actions (POST) must carry the X-Perdure-Dashboard header, which a page of another origin
  cannot send without a CORS preflight that is never granted, and an Origin, when given,
  must be this one;
- every response carries a Content-Security-Policy that allows only this origin's scripts,
  styles and connections: the page ships everything it needs (static/), fetches nothing from
  elsewhere, and builds its HTML with text nodes only, so payloads and errors cannot inject any.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import grpc
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from perdure.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    schedules_pb2,
    schedules_pb2_grpc,
    types_pb2,
)
from perdured import __version__, access, validation
from perdured.auth import bearer_token
from perdured.config import is_loopback
from perdured.dashboard.feed import Feeds
from perdured.dashboard.login import Session, Sessions, forwarded
from perdured.dashboard.shape import to_json
from perdured.logs import log
from perdured.validation import InvalidArgument

ACTION_HEADER = "X-Perdure-Dashboard"
HEARTBEAT = 15.0  # seconds between comments on an idle event stream (finds closed connections)
BATCH_DELAY = 0.1  # seconds a burst of events gathers before it is sent as one message
RPC_TIMEOUT = 30.0
DEFAULT_PAGE_SIZE = 50
# The page's own paths: each is answered with index.html, which routes in the browser.
PAGES = ("/", "/jobs", "/jobs/{id}", "/dead", "/schedules", "/workers")
# What answers without a login: the page, its assets, and the routes to log in.
OPEN_ROUTES = ("/api/session", "/api/login")
SESSION_COOKIE = "perdure_session"
LOGIN_FAILED_DELAY = 0.5  # seconds a refused login waits before it answers: guessing goes slowly
CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'none'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:", "connect-src 'self'",
    "font-src 'self'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
))
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
HTTP_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
STATES = {name: value for value, name in validation.STATE_NAMES.items()}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def static_files() -> Any:
    """The page and its assets, as shipped in the package."""
    return resources.files("perdured.dashboard") / "static"


class AccessLogger(AbstractAccessLogger):
    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.debug("dashboard.request", method=request.method, path=request.path, status=response.status,
                  seconds=round(time, 4))

    @property
    def enabled(self) -> bool:
        return True


class DashboardApp:
    """The routes, over one gRPC channel to this sidecar."""

    def __init__(self, channel: grpc.aio.Channel, *, check_host: bool, sessions: Sessions | None = None,
                 secure: bool = False) -> None:
        self.jobs = jobs_pb2_grpc.JobsStub(channel)
        self.admin = admin_pb2_grpc.AdminStub(channel)
        self.schedules = schedules_pb2_grpc.SchedulesStub(channel)
        self.feeds = Feeds(channel)
        self.check_host = check_host
        self.sessions = sessions  # None: no tokens, no login
        self.secure = secure  # served over HTTPS: Secure cookies
        static = static_files()
        self.index = (static / "index.html").read_bytes()

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._errors, self._guard, self._login])
        for path in PAGES:
            app.router.add_get(path, self.page)
        app.router.add_get("/api/session", self.session)
        app.router.add_post("/api/login", self.login)
        app.router.add_post("/api/logout", self.logout)
        app.router.add_get("/api/info", self.info)
        app.router.add_get("/api/namespaces", self.namespaces)
        app.router.add_get("/api/stats", self.stats)
        app.router.add_get("/api/activity", self.activity)
        app.router.add_get("/api/jobs", self.list_jobs)
        app.router.add_post("/api/jobs/retry", self.retry_jobs)
        app.router.add_get("/api/jobs/{id}", self.get_job)
        app.router.add_get("/api/jobs/{id}/{part:payload|result}", self.download)
        app.router.add_post("/api/jobs/{id}/cancel", self.cancel_job)
        app.router.add_post("/api/jobs/{id}/retry", self.retry_job)
        app.router.add_get("/api/schedules", self.list_schedules)
        app.router.add_post("/api/schedules/{action:pause|resume}", self.pause_or_resume)
        app.router.add_get("/api/workers", self.list_workers)
        app.router.add_get("/api/events", self.events)
        app.router.add_static("/static/", str(static_files()), show_index=False, follow_symlinks=False)
        app.on_response_prepare.append(self._headers)
        app.on_shutdown.append(self._shutdown)
        return app

    # -- middleware ------------------------------------------------------------------------

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.check_host and not is_loopback(urlsplit(f"//{request.host}").hostname or ""):
            raise _error(403, f"this dashboard answers to loopback addresses only, not {request.host!r}")
        if request.method not in ("GET", "HEAD"):
            if request.headers.get(ACTION_HEADER) != "1":
                raise _error(403, f"actions need the {ACTION_HEADER} header (the dashboard's page sends it)")
            origin = request.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc != request.host:
                raise _error(403, f"actions from another origin ({origin}) are refused")
        return await handler(request)

    @web.middleware
    async def _login(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """With tokens, the API needs a session (or a bearer token); its RPCs carry the token."""
        if self.sessions is None or not request.path.startswith("/api/") or request.path in OPEN_ROUTES:
            return await handler(request)
        session = self._session(request)
        if session is None:
            raise _error(401, "log in: this dashboard needs one of the sidecar's tokens")
        forwarded.set(session.token)  # for this request's RPCs: the sidecar checks what it may do
        access.caller.set(session.scope)  # and validation.namespace here
        return await handler(request)

    def _session(self, request: web.Request) -> Session | None:
        assert self.sessions is not None
        authorization = request.headers.get("Authorization")
        if authorization is not None:  # a script
            token = bearer_token(authorization)
            scope = self.sessions.tokens.authenticate(token)
            return Session(token, scope, float("inf")) if token and scope else None
        return self.sessions.find(request.cookies.get(self._cookie_name(request)))

    def _cookie_name(self, request: web.Request) -> str:
        # Cookies are not told apart by port: a name per port keeps two dashboards on one
        # host from logging each other out. __Host-: only this origin, over HTTPS, may set it.
        port = request.url.port or ""
        return f"__Host-{SESSION_COOKIE}_{port}" if self.secure else f"{SESSION_COOKIE}_{port}"

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Errors as {"error": message} with their HTTP status; an RPC's status says which."""
        try:
            return await handler(request)
        except ApiError as exc:
            status, message = exc.status, str(exc)
        except grpc.aio.AioRpcError as exc:
            status, message = HTTP_STATUS.get(exc.code(), 502), exc.details() or exc.code().name
        except InvalidArgument as exc:
            status, message = 400, str(exc)
        except access.PermissionDenied as exc:
            status, message = 403, str(exc)
        return web.json_response({"error": message}, status=status)

    @staticmethod
    async def _headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(SECURITY_HEADERS)
        if "Cache-Control" not in response.headers:
            # The assets are small and change with the version: revalidate (304) at every load.
            response.headers["Cache-Control"] = "no-cache"

    async def _shutdown(self, app: web.Application) -> None:
        await self.feeds.close()

    # -- the page ----------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.index, content_type="text/html", charset="utf-8")

    # -- logging in ----------------------------------------------------------------------------

    async def session(self, request: web.Request) -> web.Response:
        """Whether a login is needed and, once logged in, the namespaces it may use (null: all)."""
        if self.sessions is None:
            return _json({"required": False, "authenticated": True, "namespaces": None})
        session = self._session(request)
        namespaces = None if session is None or session.scope.namespaces is None else sorted(session.scope.namespaces)
        return _json({"required": True, "authenticated": session is not None, "namespaces": namespaces})

    async def login(self, request: web.Request) -> web.Response:
        if self.sessions is None:
            return _json({"required": False, "authenticated": True, "namespaces": None})
        token = _text(await _body(request), "token").strip()
        made = self.sessions.login(token)
        if made is None:
            log.warning("auth.refused", endpoint="dashboard", peer=request.remote, reason="unknown token")
            await asyncio.sleep(LOGIN_FAILED_DELAY)
            raise _error(401, "that is not a token of this sidecar")
        session_id, session = made
        log.info("dashboard.login", token=session.scope.label, peer=request.remote)
        response = _json({"required": True, "authenticated": True, "namespaces": None if session.scope.namespaces
                          is None else sorted(session.scope.namespaces)})
        response.set_cookie(self._cookie_name(request), session_id, path="/", httponly=True, samesite="Strict",
                            secure=self.secure)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        if self.sessions is not None:
            self.sessions.logout(request.cookies.get(self._cookie_name(request)))
        response = _json({"authenticated": False})
        response.del_cookie(self._cookie_name(request), path="/", secure=self.secure, httponly=True, samesite="Strict")
        return response

    # -- reading -------------------------------------------------------------------------------

    async def info(self, request: web.Request) -> web.Response:
        info = await self.admin.GetInfo(admin_pb2.GetInfoRequest(), timeout=RPC_TIMEOUT)
        return _json(to_json(info) | {"dashboard_version": __version__})

    async def namespaces(self, request: web.Request) -> web.Response:
        """The namespaces with jobs, recent activity or workers (and "default"); with a token
        for some namespaces only, those."""
        scope = access.caller.get()  # set by the login, if there are tokens
        if scope is not None and scope.namespaces is not None:
            return _json({"namespaces": sorted(scope.namespaces)})
        stats, workers = await asyncio.gather(
            self.admin.GetStats(admin_pb2.GetStatsRequest(), timeout=RPC_TIMEOUT),
            self.admin.ListWorkers(admin_pb2.ListWorkersRequest(), timeout=RPC_TIMEOUT))
        namespaces = {"default"} | {f.namespace for f in stats.functions} | {w.namespace for w in workers.workers}
        return _json({"namespaces": sorted(namespaces)})

    async def stats(self, request: web.Request) -> web.Response:
        query = request.query
        message = admin_pb2.GetStatsRequest(namespace=query.get("namespace", ""))
        if "window" in query:
            message.window.FromNanoseconds(int(_number(query, "window") * 1e9))
        return _json(to_json(await self.admin.GetStats(message, timeout=RPC_TIMEOUT)))

    async def activity(self, request: web.Request) -> web.Response:
        query = request.query
        message = admin_pb2.GetActivityRequest(namespace=query.get("namespace", ""), name=query.get("name", ""))
        if "window" in query:
            message.window.FromNanoseconds(int(_number(query, "window") * 1e9))
        return _json(to_json(await self.admin.GetActivity(message, timeout=RPC_TIMEOUT)))

    async def list_jobs(self, request: web.Request) -> web.Response:
        query = request.query
        message = jobs_pb2.ListJobsRequest(
            namespace=_namespace(request), name=query.get("name", ""), states=_states(query),
            labels=_labels(query), error_type=query.get("error_type", ""),
            error_contains=query.get("error_contains", ""), page_token=query.get("page_token", ""),
            page_size=int(_number(query, "page_size")) if "page_size" in query else DEFAULT_PAGE_SIZE)
        response = await self.jobs.ListJobs(message, timeout=RPC_TIMEOUT)
        # A list shows no payloads: it says only how large they are.
        return _json(to_json(response, payloads=False))

    async def get_job(self, request: web.Request) -> web.Response:
        return _json({"job": to_json(await self._job(request))})

    async def download(self, request: web.Request) -> web.Response:
        """A job's whole payload or result, as a file to save (never shown in the browser)."""
        job = await self._job(request)
        part = request.match_info["part"]
        if not job.HasField("payload" if part == "payload" else "result"):
            raise _error(404, f"job {job.id} has no {part}")
        payload: types_pb2.Payload = getattr(job, part)
        suffix = "json" if payload.encoding in ("", "json") else "bin"
        return web.Response(body=payload.data, content_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{job.id}-{part}.{suffix}"'})

    async def _job(self, request: web.Request) -> types_pb2.Job:
        message = jobs_pb2.GetJobRequest(id=request.match_info["id"], namespace=_namespace(request))
        return (await self.jobs.GetJob(message, timeout=RPC_TIMEOUT)).job

    async def list_schedules(self, request: web.Request) -> web.Response:
        message = schedules_pb2.ListSchedulesRequest(
            namespace=_namespace(request), function=request.query.get("function", ""),
            page_token=request.query.get("page_token", ""), page_size=1000)
        return _json(to_json(await self.schedules.ListSchedules(message, timeout=RPC_TIMEOUT)))

    async def list_workers(self, request: web.Request) -> web.Response:
        message = admin_pb2.ListWorkersRequest(namespace=request.query.get("namespace", ""))
        return _json(to_json(await self.admin.ListWorkers(message, timeout=RPC_TIMEOUT)))

    # -- actions -------------------------------------------------------------------------------

    async def cancel_job(self, request: web.Request) -> web.Response:
        message = jobs_pb2.CancelJobRequest(id=request.match_info["id"], namespace=_namespace(request))
        response = await self.jobs.CancelJob(message, timeout=RPC_TIMEOUT)
        log.info("dashboard.job_cancelled", job_id=response.job.id, cancelled=response.cancelled)
        return _json(to_json(response))

    async def retry_job(self, request: web.Request) -> web.Response:
        message = jobs_pb2.RetryJobRequest(id=request.match_info["id"], namespace=_namespace(request))
        response = await self.jobs.RetryJob(message, timeout=RPC_TIMEOUT)
        log.info("dashboard.job_retried", job_id=response.job.id)
        return _json(to_json(response))

    async def retry_jobs(self, request: web.Request) -> web.Response:
        """Retry every job matching a filter: {"namespace", "name", "states", "labels",
        "error_type", "error_contains"} (as in ListJobs; states dead and/or cancelled)."""
        body = await _body(request)
        where = jobs_pb2.JobFilter(
            namespace=_text(body, "namespace"), name=_text(body, "name"),
            states=[_state(s) for s in _list(body, "states")], labels=_mapping(body, "labels"),
            error_type=_text(body, "error_type"), error_contains=_text(body, "error_contains"))
        try:
            response = await self.jobs.RetryJobs(jobs_pb2.RetryJobsRequest(filter=where), timeout=300)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            # The body is the filter itself: name the field as the body does ("states").
            raise ApiError(400, (exc.details() or "").removeprefix("filter.")) from None
        log.info("dashboard.jobs_retried", jobs=response.retried, name=where.name, error_type=where.error_type)
        return _json(to_json(response))

    async def pause_or_resume(self, request: web.Request) -> web.Response:
        body = await _body(request)
        namespace, name = _text(body, "namespace"), _text(body, "name")
        if request.match_info["action"] == "pause":
            paused = await self.schedules.PauseSchedule(
                schedules_pb2.PauseScheduleRequest(namespace=namespace, name=name), timeout=RPC_TIMEOUT)
            schedule = paused.schedule
        else:
            resumed = await self.schedules.ResumeSchedule(
                schedules_pb2.ResumeScheduleRequest(namespace=namespace, name=name), timeout=RPC_TIMEOUT)
            schedule = resumed.schedule
        log.info(f"dashboard.schedule_{request.match_info['action']}d", namespace=namespace, schedule=name)
        return _json({"schedule": to_json(schedule)})

    # -- live ----------------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of one namespace (see feed.py for what they say)."""
        namespace = validation.namespace(_namespace(request))
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        await response.write(b"retry: 1000\n\n")  # how soon the browser reconnects after a break
        try:
            async with self.feeds.subscribe(namespace) as subscription:
                while not subscription.closed:
                    try:
                        await asyncio.wait_for(subscription.wake.wait(), HEARTBEAT)
                    except TimeoutError:
                        await response.write(b": still here\n\n")
                        continue
                    await asyncio.sleep(BATCH_DELAY)
                    for name, data in subscription.take():
                        await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionError, RuntimeError):  # the page went away (RuntimeError: transport closed)
            pass
        return response


def _json(data: Any) -> web.Response:
    return web.json_response(data, dumps=lambda value: json.dumps(value, separators=(",", ":")))


class ApiError(Exception):
    """An answer other than 200: its HTTP status and a message that says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _error(status: int, message: str) -> ApiError:
    return ApiError(status, message)


def _namespace(request: web.Request) -> str:
    return request.query.get("namespace", "")


def _number(query: Any, field: str) -> float:
    try:
        return float(query[field])
    except ValueError:
        raise InvalidArgument(field, f"must be a number, got {query[field]!r}") from None


def _state(name: str) -> types_pb2.JobState.ValueType:
    if name not in STATES:
        raise InvalidArgument("state", f"unknown state {name!r}; expected one of {', '.join(sorted(STATES))}")
    return STATES[name]


def _states(query: Any) -> list[types_pb2.JobState.ValueType]:
    """?state=dead&state=cancelled, or ?state=dead,cancelled."""
    return [_state(name) for value in query.getall("state", []) for name in value.split(",") if name]


def _labels(query: Any) -> dict[str, str]:
    """?label=team=infra&label=tier=1."""
    labels = {}
    for value in query.getall("label", []):
        key, equals, text = value.partition("=")
        if not equals or not key:
            raise InvalidArgument("label", f"must be KEY=VALUE, got {value!r}")
        labels[key] = text
    return labels


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgument("body", "must be a JSON object") from None
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return body


def _text(body: dict[str, Any], field: str) -> str:
    value = body.get(field) or ""
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be text")
    return value


def _list(body: dict[str, Any], field: str) -> list[str]:
    value = body.get(field) or []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise InvalidArgument(field, "must be a list of text")
    return value


def _mapping(body: dict[str, Any], field: str) -> dict[str, str]:
    value = body.get(field) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument(field, "must be an object of text values")
    return value
