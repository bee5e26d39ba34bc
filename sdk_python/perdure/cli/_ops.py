"""Operations: `perdure stats`, `workers`, `events`, `doctor` and `migrate`."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any

import click
import grpc
from grpc_health.v1 import health_pb2
from rich.text import Text

from perdure import __version__
from perdure.cli import _output as out
from perdure.cli._common import hint, json_option, settings, sidecar, sidecar_options
from perdure.cli._params import POSITIVE_DURATION, JsonType, format_duration
from perdure.cli._rpc import CliError, ExitCode, one_line
from perdure.v1 import admin_pb2, jobs_pb2, types_pb2

# -- stats and workers -------------------------------------------------------------------------


@click.command(short_help="Job counts, throughput and failure rate per function.")
@click.option("--window", type=POSITIVE_DURATION, default="5m", show_default=True, metavar="DURATION",
              help="How far back the recent counts, throughput and failure rate look (at most 24h).")
@click.option("--all-namespaces", "-A", is_flag=True, help="Every namespace, not just --namespace.")
@json_option
@sidecar_options
def stats(window: float, all_namespaces: bool) -> None:
    """Per function: the jobs pending, running, suspended and dead now; those enqueued,
    succeeded, failed, died and cancelled within the window; throughput, failure rate and how
    long the oldest runnable job has waited. Cluster-wide, whichever sidecar answers.

    \b
      perdure stats
      perdure stats --window 1h -A
    """
    client = sidecar()
    request = admin_pb2.GetStatsRequest(namespace="" if all_namespaces else settings().namespace)
    request.window.FromNanoseconds(int(window * 1e9))
    response = client.call(client.admin.GetStats, request)
    if settings().json:
        out.emit_json(out.to_dict(response))
        return
    if not response.functions:
        hint(f"no jobs in progress, dead jobs or activity within {format_duration(window)}")
        return
    span = format_duration(out.seconds(response, "window") or window)
    columns = ["NAMESPACE"] if all_namespaces else []
    columns += ["FUNCTION", ">PEND", ">RUN", ">SUSP", ">DEAD", ">OLDEST", ">ENQ", ">OK", ">FAIL", ">DIED", ">CANC",
                ">JOBS/S", ">FAIL%"]
    grid = out.table(*columns, caption=(
        f"now: PEND(ing), RUN(ning), SUSP(ended), DEAD jobs; OLDEST runnable job's wait. The last {span}: ENQ(ueued), "
        f"OK (succeeded), FAIL(ed attempts), DIED, CANC(elled), jobs ended per second, FAIL% of ended attempts."))
    for function in response.functions:
        oldest = out.seconds(function, "oldest_pending_age")
        row = [function.namespace] if all_namespaces else []
        row += [function.name, str(function.pending), str(function.running), str(function.suspended),
                _count(function.dead, "red"), format_duration(oldest) if oldest is not None else "-",
                str(function.enqueued_recently), str(function.succeeded_recently),
                _count(function.failed_recently, "yellow"), _count(function.dead_recently, "red"),
                str(function.cancelled_recently), _rate(function.throughput), f"{function.failure_rate:.0%}"]
        grid.add_row(*row)
    out.console().print(grid)


def _rate(per_second: float) -> str:
    return "0" if per_second == 0 else f"{per_second:.3f}" if per_second < 1 else f"{per_second:.1f}"


def _count(value: int, style: str) -> Text:
    return Text(str(value), style=style if value else "")


@click.command(short_help="The workers connected to any sidecar.")
@click.option("--all-namespaces", "-A", is_flag=True, help="Every namespace, not just --namespace.")
@json_option
@sidecar_options
def workers(all_namespaces: bool) -> None:
    """The workers connected to any sidecar sharing the database: their functions, jobs in
    flight out of their concurrency, how long they have been connected, when they were last
    seen (their sdk and more with --json).

    \b
      perdure workers
      perdure workers -A --json
    """
    client = sidecar()
    request = admin_pb2.ListWorkersRequest(namespace="" if all_namespaces else settings().namespace)
    found = client.call(client.admin.ListWorkers, request).workers
    if settings().json:
        out.emit_json([out.to_dict(worker) for worker in found])
        return
    if not found:
        hint("no workers connected" + ("" if all_namespaces else f" in namespace {settings().namespace!r}"))
        return
    now = datetime.now(UTC)
    columns = ["NAMESPACE"] if all_namespaces else []
    grid = out.table(*columns, "ID", "FUNCTIONS", ">IN FLIGHT", ">CONNECTED", "LAST SEEN")
    for worker in found:
        identity = Text(worker.id)
        if worker.draining:
            identity.append(" (draining)", style="yellow")
        row: list[Any] = [worker.namespace] if all_namespaces else []
        row += [identity, ", ".join(worker.names), f"{worker.in_flight}/{worker.concurrency}",
                out.age(out.moment(worker, "connected_at"), now), out.relative(out.moment(worker, "last_seen"), now)]
        grid.add_row(*row)
    out.console().print(grid)


# -- events ------------------------------------------------------------------------------------


@click.group()
def events() -> None:
    """Emit and read durable events (the signals that jobs wait for)."""


@events.command("emit")
@click.argument("name")
@click.option("--payload", type=JsonType(), default="null", metavar="JSON",
              help="The event's payload, JSON; @FILE reads a file, - standard input. [default: null]")
@json_option
@sidecar_options
def emit(name: str, payload: Any) -> None:
    """Emit the event NAME: jobs waiting for it wake up, and jobs that wait for it later get it
    at once. Emitting it again replaces its payload.

    \b
      perdure events emit approve:2030-01 --payload '{"by": "ada"}'
    """
    client = sidecar()
    data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    request = jobs_pb2.EmitEventRequest(namespace=settings().namespace, name=name,
                                        payload=types_pb2.Payload(data=data, encoding="json"))
    response = client.call(client.jobs.EmitEvent, request)
    if settings().json:
        out.emit_json(out.to_dict(response))
    else:
        click.echo(f"emitted event {name!r}; it woke {response.woken} waiting job{'s' if response.woken != 1 else ''}")


@events.command("show")
@click.argument("name")
@json_option
@sidecar_options
def show_event(name: str) -> None:
    """An event's current payload and when it was emitted.

    \b
      perdure events show approve:2030-01
    """
    client = sidecar()
    response = client.call(client.jobs.GetEvent, jobs_pb2.GetEventRequest(namespace=settings().namespace, name=name))
    if settings().json:
        out.emit_json(out.to_dict(response))
        return
    fields = out.fields_table()
    fields.add_row("event", Text(name))
    fields.add_row("emitted", out.absolute(out.moment(response, "emitted_at")))
    fields.add_row("payload", Text(out.payload_text(response.payload)))
    out.console().print(fields)


# -- doctor ------------------------------------------------------------------------------------


@click.command(short_help="Check the sidecar, its database and the schema.")
@json_option
@sidecar_options
def doctor() -> None:
    """Check the sidecar, its database and the schema, one line per check. Exits 0 when all
    is well, 3 when the sidecar cannot be reached, 1 when a check fails.

    \b
      perdure doctor
      perdure doctor --address perdured.internal:7433
    """
    client = sidecar()
    checks: list[dict[str, Any]] = []
    info: admin_pb2.GetInfoResponse | None = None
    code = ExitCode.OK

    def check(name: str, status: str, detail: str) -> None:
        checks.append({"check": name, "status": status, "detail": detail})

    try:
        health = client.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=client.timeout)
        serving = health.status == health_pb2.HealthCheckResponse.SERVING
        check("sidecar", "ok" if serving else "fail",
              f"{client.address} serving" if serving else
              f"{client.address} answers but is {health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)}")
        if not serving:
            code = ExitCode.ERROR
    except grpc.RpcError as exc:
        failure = client.error(exc)
        check("sidecar", "fail", failure.message)
        _report(checks, None, failure)
        return  # not reached: _report raises

    try:
        info = client.call(client.admin.GetInfo, admin_pb2.GetInfoRequest())
    except CliError as failure:
        check("token" if failure.exit_code == ExitCode.DENIED else "database", "fail", failure.message)
        _report(checks, None, CliError(f"doctor: {failure.message}", ExitCode.ERROR))
        return
    assert info is not None
    started = out.moment(info, "started_at")
    check("version", "ok" if info.version == __version__ else "warn",
          f"perdured {info.version}, sidecar {info.sidecar_id}" + (f", up {out.relative(started).removesuffix(' ago')}" if started else "")
          + ("" if info.version == __version__ else f"; this perdure command is {__version__}"))
    latency = out.seconds(info, "database_latency")
    check("database", "ok", f"PostgreSQL {info.database_version}" + (" (embedded)" if info.embedded_database else "")
          + (f", round trip {format_duration(latency)}" if latency is not None else ""))
    if info.schema_version == info.latest_schema_version:
        check("schema", "ok", f"version {info.schema_version}, the latest")
    elif info.schema_version < info.latest_schema_version:
        check("schema", "fail", f"version {info.schema_version}, behind {info.latest_schema_version}: run perdure migrate")
        code = ExitCode.ERROR
    else:
        check("schema", "fail", f"version {info.schema_version}, newer than this perdured knows "
                                f"({info.latest_schema_version}): upgrade perdured")
        code = ExitCode.ERROR
    check("workers", "ok", f"{info.workers} connected to this sidecar, {info.in_flight} job"
                           f"{'s' if info.in_flight != 1 else ''} in flight")
    failed = [c["check"] for c in checks if c["status"] == "fail"]
    _report(checks, info, CliError(f"doctor: {', '.join(failed)} failed", code) if code else None)


def _report(checks: list[dict[str, Any]], info: admin_pb2.GetInfoResponse | None, failure: CliError | None) -> None:
    if settings().json:
        out.emit_json({"ok": failure is None, "checks": checks, "info": out.to_dict(info) if info else None})
    else:
        grid = out.fields_table()
        for entry in checks:
            style = {"ok": "green", "warn": "yellow", "fail": "bold red"}[entry["status"]]
            grid.add_row(Text(f"{entry['status']:>4}", style=style), Text(f"{entry['check']:<9} {entry['detail']}"))
        out.console().print(grid)
    if failure is not None:
        raise failure


# -- migrate -----------------------------------------------------------------------------------


@click.command(short_help="Apply the schema's migrations to a database.")
@click.option("--database-url", envvar="PERDURE_DATABASE_URL", metavar="URL", required=True,
              help="The PostgreSQL database, postgresql://user:pass@host/db [env PERDURE_DATABASE_URL].")
@json_option
def migrate(database_url: str) -> None:
    """Apply the schema's missing migrations to the database, directly (no sidecar needed),
    under the same advisory lock as perdured: safe while sidecars start.

    \b
      perdure migrate --database-url postgresql://perdure@db.internal/app
    """
    import psycopg

    from perdured import logs
    from perdured.config import normalise_database_url
    from perdured.migrate import SchemaMismatch, SchemaTooNew, load_migrations
    from perdured.migrate import migrate as apply

    logs.configure("console", "warning")  # the list of what was applied is printed below
    migrations = {m.version: m for m in load_migrations()}

    async def run() -> list[int]:
        async with await psycopg.AsyncConnection.connect(normalise_database_url(database_url),
                                                         connect_timeout=30) as conn:
            return await apply(conn, list(migrations.values()))

    try:
        applied = asyncio.run(run())
    except psycopg.OperationalError as exc:
        raise CliError(f"cannot reach the database: {one_line(str(exc))}", ExitCode.UNAVAILABLE) from None
    except (SchemaTooNew, SchemaMismatch) as exc:
        raise CliError(str(exc), ExitCode.ERROR) from None
    except psycopg.Error as exc:
        raise CliError(f"the migration failed ({type(exc).__name__}): {one_line(str(exc))}", ExitCode.ERROR) from None
    latest = max(migrations, default=0)
    names = [f"{v:04d}_{migrations[v].name}" for v in applied]
    if settings().json:
        out.emit_json({"applied": names, "schema_version": latest})
    elif names:
        click.echo(f"applied {len(names)} migration{'s' if len(names) != 1 else ''}: {', '.join(names)}; "
                   f"the schema is at version {latest}")
    else:
        click.echo(f"nothing to apply: the schema is at version {latest}, the latest")
