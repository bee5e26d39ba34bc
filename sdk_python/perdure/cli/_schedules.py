"""`perdure schedules ...`: cron schedules that enqueue a job at every tick."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
import grpc
from rich.console import Group
from rich.text import Text

from perdure.cli import _output as out
from perdure.cli._common import hint, json_option, settings, sidecar, sidecar_options
from perdure.cli._jobs import argument_options, call_payload, job_options, options_from
from perdure.cli._params import format_duration
from perdure.cli._rpc import CliError, ExitCode
from perdure.v1 import jobs_pb2, schedules_pb2

MISSED = {
    "once": schedules_pb2.MISSED_TICK_POLICY_ONCE,
    "skip": schedules_pb2.MISSED_TICK_POLICY_SKIP,
    "all": schedules_pb2.MISSED_TICK_POLICY_ALL,
}
MISSED_NAMES = {value: name for name, value in MISSED.items()} | {schedules_pb2.MISSED_TICK_POLICY_UNSPECIFIED: "once"}
_MISSED_HELP = ("What to do with ticks missed while no sidecar ran: once (one job for the latest), "
                "skip (none) or all (one per tick).")


@click.group(short_help="Create, list, pause, resume and delete cron schedules.")
def schedules() -> None:
    """Cron schedules: each tick enqueues one job of a function, however many sidecars run."""


@schedules.command("list")
@click.option("--function", metavar="FUNCTION", help="Only the schedules of this function.")
@json_option
@sidecar_options
def list_schedules(function: str | None) -> None:
    """The namespace's schedules, by name.

    \b
      perdure schedules list
      perdure schedules list --function reports:build --json
    """
    client = sidecar()
    request = schedules_pb2.ListSchedulesRequest(namespace=settings().namespace, function=function or "", page_size=1000)
    found: list[schedules_pb2.Schedule] = []
    while True:
        response = client.call(client.schedules.ListSchedules, request)
        found.extend(response.schedules)
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    if settings().json:
        out.emit_json([out.to_dict(s) for s in found])
        return
    if not found:
        hint(f"no schedules in namespace {settings().namespace!r}")
        return
    now = datetime.now(UTC)
    grid = out.table("NAME", "FUNCTION", "CRON", "TIME ZONE", "STATE", "NEXT RUN", "LAST RUN")
    for schedule in found:
        grid.add_row(schedule.name, schedule.job.name, schedule.cron, schedule.timezone, _state(schedule),
                     out.relative(out.moment(schedule, "next_run_at"), now),
                     out.relative(out.moment(schedule, "last_run_at"), now))
    out.console().print(grid)


def _state(schedule: schedules_pb2.Schedule) -> Text:
    if schedule.paused:
        return Text("paused", style="yellow")
    if schedule.last_error:
        return Text("failing", style="red")
    return Text("active", style="green")


@schedules.command("show")
@click.argument("name")
@json_option
@sidecar_options
def show_schedule(name: str) -> None:
    """One schedule: its cron, time zone, next and last runs, and the job each tick enqueues.

    \b
      perdure schedules show nightly-report
    """
    client = sidecar()
    request = schedules_pb2.GetScheduleRequest(namespace=settings().namespace, name=name)
    _print(client.call(client.schedules.GetSchedule, request).schedule)


def _print(schedule: schedules_pb2.Schedule, said: str | None = None) -> None:
    if settings().json:
        out.emit_json(out.to_dict(schedule))
        return
    if said:
        click.echo(said)
    job = schedule.job
    fields = out.fields_table()
    rows: list[tuple[str, Any]] = [
        ("name", schedule.name), ("namespace", schedule.namespace), ("state", _state(schedule)),
        ("cron", schedule.cron), ("time zone", schedule.timezone), ("missed ticks", MISSED_NAMES.get(schedule.missed, "once")),
        ("next run", out.absolute(out.moment(schedule, "next_run_at")) or "-"),
        ("last run", out.absolute(out.moment(schedule, "last_run_at")) or "-"),
    ]
    if schedule.last_job_id:
        rows.append(("last job", schedule.last_job_id))
    if schedule.last_error:
        rows.append(("last error", Text(schedule.last_error, style="red")))
    rows += [("function", job.name), ("arguments", out.call_text(job.payload))]
    retry = job.retry
    options = []
    if retry.HasField("max_attempts"):
        options.append(f"max attempts {retry.max_attempts}")
    if retry.backoff:
        options.append(f"backoff {out.BACKOFFS.get(retry.backoff, 'exponential')}")
    for field in ("initial_delay", "max_delay"):
        if (seconds := out.seconds(retry, field)) is not None:
            options.append(f"{field.replace('_', ' ')} {format_duration(seconds)}")
    if retry.HasField("jitter"):
        options.append(f"jitter {retry.jitter:g}")
    for field, words in (("timeout", "attempt timeout"), ("start_within", "start within"), ("max_duration", "max duration")):
        if (seconds := out.seconds(job, field)) is not None:
            options.append(f"{words} {format_duration(seconds)}")
    if job.priority:
        options.append(f"priority {job.priority}")
    if job.concurrency_key:
        options.append(f"concurrency key {job.concurrency_key}")
    if options:
        rows.append(("job options", ", ".join(options)))
    if job.labels:
        rows.append(("labels", out.labels_text(job.labels)))
    rows += [("created", out.absolute(out.moment(schedule, "created_at"))),
             ("updated", out.absolute(out.moment(schedule, "updated_at")))]
    for key, value in rows:
        fields.add_row(key, value if isinstance(value, Text) else Text(value))
    out.console().print(Group(fields))


@schedules.command("create")
@click.argument("name")
@click.argument("function")
@click.argument("cron")
@click.option("--timezone", default="UTC", show_default=True, metavar="ZONE",
              help="The IANA time zone the ticks are computed in, e.g. Europe/Paris.")
@argument_options
@click.option("--missed", type=click.Choice(list(MISSED)), default="once", show_default=True, help=_MISSED_HELP)
@click.option("--paused", is_flag=True, help="Create it paused.")
@click.option("--replace", is_flag=True, help="Replace a schedule of the same name instead of failing.")
@job_options
@json_option
@sidecar_options
def create(name: str, function: str, cron: str, timezone: str, args: list[Any] | None, kwargs: dict[str, Any] | None,
           payload: Any, missed: str, paused: bool, replace: bool, **options: Any) -> None:
    """Create the schedule NAME: a job of FUNCTION at every tick of CRON (five fields, or six
    with seconds first; @hourly, @daily, ...), with the job options given.

    \b
      perdure schedules create nightly-report reports:build "0 3 * * *" --timezone Europe/Paris
      perdure schedules create cleanup files:clean "*/15 * * * *" --args '["/tmp"]' --missed skip
    """
    payload_given = click.get_current_context().get_parameter_source("payload") == click.core.ParameterSource.COMMANDLINE
    job = options_from(options).request(namespace=settings().namespace, name=function,
                                        payload=call_payload(function, args, kwargs, payload, payload_given))
    request = schedules_pb2.CreateScheduleRequest(namespace=settings().namespace, name=name, cron=cron,
                                                  timezone=timezone, job=job, missed=MISSED[missed], replace=replace)
    if paused:
        request.paused = True
    client = sidecar()
    response = client.call(client.schedules.CreateSchedule, request, messages={
        grpc.StatusCode.ALREADY_EXISTS: f"a schedule named {name!r} exists in namespace {settings().namespace!r}; "
                                        f"add --replace to replace it"})
    verb = "created" if response.created else "replaced"
    _print(response.schedule, f"{verb} schedule {name!r}: {function} at {cron!r} ({timezone})")


@schedules.command("update")
@click.argument("name")
@click.option("--cron", help="A new cron expression: the next tick becomes the first one after now.")
@click.option("--timezone", metavar="ZONE", help="A new time zone.")
@click.option("--missed", type=click.Choice(list(MISSED)), help=_MISSED_HELP)
@click.option("--function", metavar="FUNCTION", help="Enqueue jobs of this function from now on.")
@argument_options
@job_options
@json_option
@sidecar_options
def update(name: str, cron: str | None, timezone: str | None, missed: str | None, function: str | None,
           args: list[Any] | None, kwargs: dict[str, Any] | None, payload: Any, **options: Any) -> None:
    """Change what is given; the rest stays. Job options change the jobs of the next ticks
    (labels given are added to the job's).

    \b
      perdure schedules update nightly-report --cron "0 4 * * *"
      perdure schedules update cleanup --args '["/var/tmp"]' --max-attempts 5
    """
    client = sidecar()
    request = schedules_pb2.UpdateScheduleRequest(namespace=settings().namespace, name=name)
    if cron is not None:
        request.cron = cron
    if timezone is not None:
        request.timezone = timezone
    if missed is not None:
        request.missed = MISSED[missed]
    payload_given = click.get_current_context().get_parameter_source("payload") == click.core.ParameterSource.COMMANDLINE
    changes = options_from(options)
    job_changed = (function is not None or args is not None or kwargs is not None or payload_given
                   or any(value is not None for value in vars(changes).values()))
    if job_changed:
        current = client.call(client.schedules.GetSchedule, schedules_pb2.GetScheduleRequest(
            namespace=settings().namespace, name=name)).schedule
        job = jobs_pb2.EnqueueRequest()
        job.CopyFrom(current.job)
        if function is not None:
            job.name = function
        if args is not None or kwargs is not None or payload_given:
            job.payload.CopyFrom(call_payload(job.name, args, kwargs, payload, payload_given))
        _overlay(job, changes.request(namespace=job.namespace, name=job.name, payload=job.payload))
        request.job.CopyFrom(job)
    elif cron is None and timezone is None and missed is None:
        raise click.UsageError("nothing to change: give --cron, --timezone, --missed, --function, arguments or job options")
    response = client.call(client.schedules.UpdateSchedule, request)
    _print(response.schedule, f"updated schedule {name!r}")


def _overlay(target: Any, changes: Any) -> None:
    """Set on `target` the fields set in `changes` (maps: add the entries)."""
    for field, value in changes.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            getattr(target, field.name).update(value)
        elif field.message_type is not None and field.message_type.full_name == "perdure.v1.RetryPolicy":
            _overlay(target.retry, value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


@schedules.command("pause")
@click.argument("name")
@json_option
@sidecar_options
def pause(name: str) -> None:
    """Stop the ticks of schedule NAME until it is resumed.

    \b
      perdure schedules pause nightly-report
    """
    client = sidecar()
    request = schedules_pb2.PauseScheduleRequest(namespace=settings().namespace, name=name)
    _print(client.call(client.schedules.PauseSchedule, request).schedule, f"paused schedule {name!r}")


@schedules.command("resume")
@click.argument("name")
@json_option
@sidecar_options
def resume(name: str) -> None:
    """Tick again from the first tick after now (ticks that fell during the pause do not run).

    \b
      perdure schedules resume nightly-report
    """
    client = sidecar()
    request = schedules_pb2.ResumeScheduleRequest(namespace=settings().namespace, name=name)
    _print(client.call(client.schedules.ResumeSchedule, request).schedule, f"resumed schedule {name!r}")


@schedules.command("delete")
@click.argument("name")
@json_option
@sidecar_options
def delete(name: str) -> None:
    """Delete schedule NAME; the jobs it already enqueued stay.

    \b
      perdure schedules delete nightly-report
    """
    client = sidecar()
    response = client.call(client.schedules.DeleteSchedule,
                           schedules_pb2.DeleteScheduleRequest(namespace=settings().namespace, name=name))
    if settings().json:
        out.emit_json(out.to_dict(response))
    if not response.deleted:
        raise CliError(f"no schedule {name!r} in namespace {settings().namespace!r}", ExitCode.NOT_FOUND)
    if not settings().json:
        click.echo(f"deleted schedule {name!r}")
