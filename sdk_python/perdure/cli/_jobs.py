"""`perdure jobs ...`: list, show, enqueue, wait for, watch, cancel, retry and purge jobs."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import click
import grpc
from rich.console import Group
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from perdure import _serde
from perdure._options import JobOptions
from perdure.cli import _output as out
from perdure.cli._common import confirm, hint, json_option, settings, sidecar, sidecar_options
from perdure.cli._params import (
    DATETIME,
    DURATION,
    LABEL,
    POSITIVE_DURATION,
    STATES,
    JsonType,
    StatesType,
    format_duration,
)
from perdure.cli._rpc import CliError, ExitCode, Sidecar
from perdure.v1 import jobs_pb2, types_pb2

F = TypeVar("F", bound=Callable[..., Any])
AWAIT_SLICE = 60.0  # AwaitJob blocks at most this long per call
TERMINAL = {types_pb2.JOB_STATE_SUCCESS, types_pb2.JOB_STATE_DEAD, types_pb2.JOB_STATE_CANCELLED}


@click.group()
def jobs() -> None:
    """List, inspect, enqueue, cancel, retry and purge jobs."""


# -- filters -----------------------------------------------------------------------------------


def filter_options(*, states: tuple[str, ...] | None = tuple(STATES)) -> Callable[[F], F]:
    """--name, --label, --error-type, --error-contains (and --status, when `states`)."""

    def decorate(command: F) -> F:
        options = [
            click.option("--name", "name", metavar="FUNCTION", help="Only jobs of this function."),
            click.option("--label", "-l", "labels", type=LABEL, multiple=True,
                         help="Only jobs carrying this label (repeat: all of them)."),
            click.option("--error-type", metavar="TYPE", help="Only jobs whose last error has this type, e.g. ValueError."),
            click.option("--error-contains", metavar="TEXT",
                         help="Only jobs whose last error message contains this text (case-insensitive)."),
        ]
        if states:
            options.insert(1, click.option(
                "--status", "-s", "states", type=StatesType(states), multiple=True,
                help="Only jobs in this state; repeat or separate with commas."))
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def _job_filter(name: str | None, states: list[str], labels: tuple[tuple[str, str], ...],
                error_type: str | None, error_contains: str | None) -> dict[str, Any]:
    return {
        "namespace": settings().namespace, "name": name or "", "states": [STATES[s] for s in states],
        "labels": dict(labels), "error_type": error_type or "", "error_contains": error_contains or "",
    }


def _flatten(states: tuple[list[str], ...]) -> list[str]:
    return list(dict.fromkeys(s for group in states for s in group))


def _described(states: list[str], name: str | None, labels: tuple[tuple[str, str], ...],
               error_type: str | None, error_contains: str | None) -> str:
    """The filter in words, for a confirmation: `every dead job of function 'x' in namespace 'default'`."""
    words = [f"every {' or '.join(states)} job"]
    if name:
        words.append(f"of function {name!r}")
    if labels:
        words.append("labelled " + ", ".join(f"{k}={v}" for k, v in labels))
    if error_type:
        words.append(f"whose last error is a {error_type}")
    if error_contains:
        words.append(f"whose last error mentions {error_contains!r}")
    words.append(f"in namespace {settings().namespace!r}")
    return " ".join(words)


# -- list --------------------------------------------------------------------------------------


@jobs.command("list")
@filter_options()
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="Jobs per page.")
@click.option("--page-token", metavar="TOKEN", help="Start from this page (printed after the previous one).")
@click.option("--all", "all_pages", is_flag=True, help="Every page, not just the first.")
@json_option
@sidecar_options
def list_jobs(name: str | None, states: tuple[list[str], ...], labels: tuple[tuple[str, str], ...],
              error_type: str | None, error_contains: str | None, limit: int, page_token: str | None,
              all_pages: bool) -> None:
    """Jobs of the namespace, newest first.

    \b
      perdure jobs list
      perdure jobs list --name reports:build --status dead,cancelled
      perdure jobs list -s dead --error-type ValueError --label tenant=acme --all
    """
    client = sidecar()
    request = jobs_pb2.ListJobsRequest(
        **_job_filter(name, _flatten(states), labels, error_type, error_contains),
        page_size=1000 if all_pages else limit, page_token=page_token or "")
    found: list[types_pb2.Job] = []
    while True:
        response = client.call(client.jobs.ListJobs, request)
        found.extend(response.jobs)
        if not all_pages or not response.next_page_token:
            break
        request.page_token = response.next_page_token
    if settings().json:
        out.emit_json([out.to_dict(job) for job in found])
    elif found:
        now = datetime.now(UTC)
        grid = out.table("ID", "FUNCTION", "STATE", ">ATTEMPTS", ">AGE", "DETAIL~")
        for job in found:
            grid.add_row(job.id, job.name, out.state_text(job.state), f"{job.attempt}/{job.retry.max_attempts}",
                         out.age(out.moment(job, "created_at"), now), out.cut(_detail(job, now)))
        out.console().print(grid)
    else:
        hint("no jobs match")
    if response.next_page_token and not all_pages:
        hint(f"more jobs: add --page-token {response.next_page_token} (or --all)")


def _detail(job: types_pb2.Job, now: datetime) -> str:
    """One line on where a job stands, for lists."""
    state = job.state
    error = out.error_line(job.error)
    if state == types_pb2.JOB_STATE_PENDING:
        run_at = out.moment(job, "run_at")
        waits = f"runs {out.relative(run_at, now)}" if run_at and run_at > now else "waiting for a worker"
        return f"{waits}; last error {error}" if error else waits
    if state == types_pb2.JOB_STATE_RUNNING:
        if job.HasField("progress"):
            return _progress_words(job.progress)
        return f"started {out.relative(out.moment(job, 'started_at'), now)}"
    if state == types_pb2.JOB_STATE_SUSPENDED:
        if job.waiting_for:
            return f"waits for {job.waiting_for}"
        return f"sleeps until {out.relative(out.moment(job, 'run_at'), now)}"
    if state == types_pb2.JOB_STATE_SUCCESS:
        started, finished = out.moment(job, "started_at"), out.moment(job, "finished_at")
        return f"took {format_duration((finished - started).total_seconds())}" if started and finished else ""
    return error


def _progress_words(progress: types_pb2.Progress) -> str:
    amount = f"{progress.current:g}/{progress.total:g}" if progress.total else f"{progress.current:g}"
    return f"{amount} {progress.message}".strip()


# -- show --------------------------------------------------------------------------------------


@jobs.command("show")
@click.argument("job_id", metavar="ID")
@json_option
@sidecar_options
def show_job(job_id: str) -> None:
    """Everything about one job: its arguments, attempts, steps, children, progress, logs,
    and its result or error.

    \b
      perdure jobs show 0190a6f2-8c1e-7b3a-9f41-2d5e8c7a1b00
    """
    job = _get(sidecar(), job_id)
    if settings().json:
        out.emit_json(out.to_dict(job))
        return
    out.console().print(Group(*_job_sections(job)))


def _get(client: Sidecar, job_id: str) -> types_pb2.Job:
    request = jobs_pb2.GetJobRequest(id=job_id, namespace=settings().namespace)
    return client.call(client.jobs.GetJob, request).job


def _job_sections(job: types_pb2.Job) -> Iterator[Any]:
    yield Text.assemble(("Job ", "bold"), (job.id, "bold"), "  ", out.state_text(job.state))
    fields = out.fields_table()
    created, started, finished = (out.moment(job, f) for f in ("created_at", "started_at", "finished_at"))
    rows: list[tuple[str, Any]] = [
        ("function", job.name),
        ("namespace", job.namespace),
        ("state", out.state_text(job.state)),
        ("attempts", f"{job.attempt} of {job.retry.max_attempts}"),
        ("arguments", out.call_text(job.payload)),
        ("created", out.absolute(created)),
    ]
    run_at = out.moment(job, "run_at")
    if job.state in (types_pb2.JOB_STATE_PENDING, types_pb2.JOB_STATE_SUSPENDED) and run_at:
        rows.append(("runs at", out.absolute(run_at)))
    if started:
        rows.append(("started", out.absolute(started)))
    if finished:
        took = f", {format_duration((finished - started).total_seconds())} after its start" if started else ""
        rows.append(("finished", out.absolute(finished) + took))
    if job.waiting_for:
        rows.append(("waiting for", job.waiting_for))
    if job.parent_id:
        rows.append(("parent", job.parent_id))
    if job.priority:
        rows.append(("priority", str(job.priority)))
    if job.labels:
        rows.append(("labels", out.labels_text(job.labels)))
    if job.idempotency_key:
        rows.append(("idempotency key", job.idempotency_key))
    if job.concurrency_key:
        rows.append(("concurrency key", job.concurrency_key))
    rows.append(("retries", _retry_words(job.retry)))
    timeout = out.seconds(job, "timeout")
    if timeout is not None:
        rows.append(("timeout", f"{format_duration(timeout)} per attempt"))
    if job.HasField("start_by"):
        rows.append(("start by", out.absolute(out.moment(job, "start_by"))))
    if job.HasField("max_duration"):
        deadline = f" (deadline {out.absolute(out.moment(job, 'deadline'))})" if job.HasField("deadline") else ""
        rows.append(("max duration", format_duration(out.seconds(job, "max_duration") or 0) + deadline))
    for key, value in rows:
        fields.add_row(key, value if isinstance(value, Text) else Text(value))
    yield fields

    if job.HasField("progress"):
        yield out.heading("Progress")
        yield _progress_row(job.progress)

    if job.attempts:
        yield out.heading("Attempts")
        grid = out.table(">#", "OUTCOME", "STARTED", ">DURATION", "WORKER", "ERROR~")
        for attempt in job.attempts:
            begun, ended = out.moment(attempt, "started_at"), out.moment(attempt, "ended_at")
            outcome = out.OUTCOMES.get(attempt.outcome, "unknown")
            grid.add_row(str(attempt.number), Text(outcome, style=out.OUTCOME_STYLES.get(outcome, "")),
                         out.clock(begun), format_duration((ended - begun).total_seconds()) if begun and ended else "",
                         attempt.worker_id, out.cut(out.error_line(attempt.error)))
        yield grid

    if job.steps:
        yield out.heading("Steps")
        grid = out.table("NAME", "STATUS", ">ATTEMPT", "RECORDED", "RESULT OR ERROR~")
        for step in job.steps:
            status = out.STEP_STATUSES.get(step.status, "unknown")
            outcome = out.error_line(step.error) if step.HasField("error") else out.payload_text(step.result, indent=None)
            grid.add_row(step.name, Text(status, style="green" if status == "succeeded" else "red"),
                         str(step.attempt), out.clock(out.moment(step, "recorded_at")), out.cut(_shortened(outcome)))
        yield grid

    if job.children:
        yield out.heading("Children")
        grid = out.table("ID", "FUNCTION", "STATE", ">ATTEMPTS", ">AGE")
        for child in job.children:
            grid.add_row(child.id, child.name, out.state_text(child.state),
                         f"{child.attempt}/{child.retry.max_attempts}", out.age(out.moment(child, "created_at")))
        yield grid

    if job.logs:
        yield out.heading("Logs")
        grid = out.table("AT", ">ATTEMPT", "LEVEL", "MESSAGE")
        for record in job.logs:
            level = out.LOG_LEVELS.get(record.level, "info")
            at = out.moment(record, "at")
            grid.add_row(f"{at.astimezone():%H:%M:%S.%f}"[:-3] if at else "", str(record.attempt),
                         Text(level, style=out.LOG_STYLES.get(level, "")), record.message)
        yield grid

    if job.state == types_pb2.JOB_STATE_SUCCESS:
        yield out.heading("Result")
        yield Text(out.payload_text(job.result))
    elif job.error.type or job.error.message:
        yield out.heading("Error" if job.state in TERMINAL else "Last error")
        yield Text(out.error_line(job.error) + (" (not retryable)" if job.error.non_retryable else ""), style="red")
        if job.error.traceback:
            yield Text(job.error.traceback.rstrip(), style="dim")


def _retry_words(retry: types_pb2.RetryPolicy) -> str:
    backoff = out.BACKOFFS.get(retry.backoff, "exponential")
    initial = format_duration(retry.initial_delay.ToNanoseconds() / 1e9)
    most = format_duration(retry.max_delay.ToNanoseconds() / 1e9)
    return f"{retry.max_attempts} attempts, {backoff} backoff from {initial} up to {most}, jitter {retry.jitter:g}"


def _progress_row(progress: types_pb2.Progress) -> Table:
    row = Table.grid(padding=(0, 2))
    if progress.total > 0:
        share = max(0.0, min(1.0, progress.current / progress.total))
        row.add_row(ProgressBar(total=progress.total, completed=min(progress.current, progress.total), width=30),
                    f"{share:.0%}", Text(_progress_words(progress)), out.relative(out.moment(progress, "at")))
    else:
        row.add_row(Text(_progress_words(progress)), out.relative(out.moment(progress, "at")))
    return row


def _shortened(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- enqueue and wait --------------------------------------------------------------------------


def job_options(command: F) -> F:
    """The options of a job (of a schedule's jobs too): retries, timeout, priority, labels, flow control."""
    options = (
        click.option("--max-attempts", type=click.IntRange(min=1), help="Attempts in all, the first included [default 3]."),
        click.option("--backoff", type=click.Choice(["exponential", "linear", "fixed"]),
                     help="How retry delays grow [default exponential]."),
        click.option("--initial-delay", type=DURATION, metavar="DURATION", help="Delay before the first retry [default 1s]."),
        click.option("--max-delay", type=DURATION, metavar="DURATION", help="Longest delay between attempts [default 1m]."),
        click.option("--jitter", type=click.FloatRange(0, 1), help="Random spread of the delays, 0..1 [default 0.1]."),
        click.option("--attempt-timeout", type=POSITIVE_DURATION, metavar="DURATION",
                     help="Each attempt's time limit [default 30s]."),
        click.option("--priority", type=click.IntRange(-1000, 1000),
                     help="Higher runs first among runnable jobs, -1000..1000 [default 0]."),
        click.option("--label", "-l", "labels", type=LABEL, multiple=True, help="A label (repeat for more)."),
        click.option("--concurrency-key", metavar="KEY", help="Jobs sharing a key run one at a time (or as the function allows)."),
        click.option("--start-within", type=POSITIVE_DURATION, metavar="DURATION",
                     help="Cancel the job if it has not started this long after its run time."),
        click.option("--max-duration", type=POSITIVE_DURATION, metavar="DURATION",
                     help="Cancel the job if it has not ended this long after its first start."),
    )
    for option in reversed(options):
        command = option(command)
    return command


JOB_OPTION_NAMES = ("max_attempts", "backoff", "initial_delay", "max_delay", "jitter", "attempt_timeout", "priority",
                    "labels", "concurrency_key", "start_within", "max_duration")


def options_from(given: dict[str, Any], **more: Any) -> JobOptions:
    """JobOptions from the parameters of `job_options` (and `more`); a contradiction is a usage error."""
    values = {name: given.pop(name, None) for name in JOB_OPTION_NAMES}
    values["timeout"] = values.pop("attempt_timeout")
    values["labels"] = dict(values["labels"]) if values["labels"] else None
    try:
        return JobOptions().merged(**values, **more)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def call_payload(name: str, args: list[Any] | None, kwargs: dict[str, Any] | None,
                 payload: Any = None, payload_given: bool = False) -> types_pb2.Payload:
    """The payload of a call: {"args": [...], "kwargs": {...}} (the SDKs' convention), or the
    document given with --payload as it is."""
    try:
        if payload_given:
            if args is not None or kwargs is not None:
                raise click.UsageError("give either --payload or --args/--kwargs, not both")
            data = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
            return types_pb2.Payload(data=data, encoding=_serde.JSON)
        return _serde.encode_call(name, tuple(args or ()), kwargs or {})
    except (TypeError, ValueError) as exc:
        raise click.UsageError(f"the arguments must be plain JSON: {exc}") from None


def argument_options(command: F) -> F:
    options = (
        click.option("--args", "args", type=JsonType(list), metavar="JSON",
                     help="Positional arguments, a JSON array: '[\"a\", 1]'. @FILE reads a file, - standard input."),
        click.option("--kwargs", "kwargs", type=JsonType(dict), metavar="JSON",
                     help="Keyword arguments, a JSON object: '{\"to\": \"x@y.z\"}'."),
        click.option("--payload", "payload", type=JsonType(), metavar="JSON",
                     help="The whole payload as it is, for handlers that read another shape than {args, kwargs}."),
    )
    for option in reversed(options):
        command = option(command)
    return command


@jobs.command("enqueue")
@click.argument("name", metavar="FUNCTION")
@argument_options
@click.option("--idempotency-key", metavar="KEY", help="A second enqueue with the same key returns the first job.")
@click.option("--delay", type=DURATION, metavar="DURATION", help="Do not start before this much time has passed.")
@click.option("--run-at", type=DATETIME, help="Do not start before this time (ISO 8601; local time without an offset).")
@job_options
@click.option("--wait", is_flag=True, help="Wait for the job to end and print its result.")
@click.option("--wait-timeout", type=POSITIVE_DURATION, metavar="DURATION",
              help="With --wait: give up after this long (exit code 7) [default: wait as long as it takes].")
@json_option
@sidecar_options
def enqueue(name: str, args: list[Any] | None, kwargs: dict[str, Any] | None, payload: Any,
            idempotency_key: str | None, delay: float | None, run_at: datetime | None, wait: bool,
            wait_timeout: float | None, **options: Any) -> None:
    """Enqueue a job of FUNCTION. Arguments are JSON, sent as {"args": [...], "kwargs": {...}}
    like the SDKs do.

    \b
      perdure jobs enqueue notifications:email:send --args '["user@example.com", "Welcome!"]'
      perdure jobs enqueue reports:build --kwargs '{"month": "2030-01"}' --idempotency-key report-2030-01
      perdure jobs enqueue math:add --args '[1, 2]' --wait
    """
    if wait_timeout is not None and not wait:
        raise click.UsageError("--wait-timeout goes with --wait")
    payload_given = click.get_current_context().get_parameter_source("payload") == click.core.ParameterSource.COMMANDLINE
    data = call_payload(name, args, kwargs, payload, payload_given)
    job_options = options_from(options, idempotency_key=idempotency_key, delay=delay, run_at=run_at)
    request = job_options.request(namespace=settings().namespace, name=name, payload=data)
    client = sidecar()
    response = client.call(client.jobs.Enqueue, request)
    job = response.job
    if settings().json and not wait:
        out.emit_json(out.to_dict(response))
        return
    if response.deduplicated:
        said = (f"job {job.id} already exists with idempotency key {job.idempotency_key!r} "
                f"({out.state_name(job.state)}); nothing new was enqueued")
    else:
        said = f"enqueued job {job.id} ({job.name})"
    if not wait:
        click.echo(said)
        return
    if not settings().json:
        hint(said)  # standard output is for the result
    job = await_job(client, job.id, wait_timeout)
    response.job.CopyFrom(job)
    _report_outcome(job, out.to_dict(response) if settings().json else None)


@jobs.command("wait")
@click.argument("job_id", metavar="ID")
@click.option("--wait-timeout", type=POSITIVE_DURATION, metavar="DURATION",
              help="Give up after this long (exit code 7) [default: wait as long as it takes].")
@json_option
@sidecar_options
def wait_job(job_id: str, wait_timeout: float | None) -> None:
    """Wait for a job to end; print its result, or exit 6 if it ended dead or cancelled.

    \b
      perdure jobs wait 0190a6f2-8c1e-7b3a-9f41-2d5e8c7a1b00 --wait-timeout 5m
    """
    job = await_job(sidecar(), job_id, wait_timeout)
    _report_outcome(job, out.to_dict(job) if settings().json else None)


def await_job(client: Sidecar, job_id: str, wait_timeout: float | None) -> types_pb2.Job:
    """Block until the job is terminal (AwaitJob, a minute at a time) or `wait_timeout` passes."""
    deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
    show = sys.stderr.isatty() and not settings().json
    status = out.err_console().status(f"waiting for job {job_id}") if show else contextlib.nullcontext()
    with status:
        while True:
            remaining = AWAIT_SLICE if deadline is None else max(0.0, min(AWAIT_SLICE, deadline - time.monotonic()))
            request = jobs_pb2.AwaitJobRequest(id=job_id, namespace=settings().namespace)
            request.wait.FromNanoseconds(int(remaining * 1e9))
            response = client.call(client.jobs.AwaitJob, request, timeout=remaining + client.timeout)
            job: types_pb2.Job = response.job
            if response.done:
                return job
            if deadline is not None and time.monotonic() >= deadline:
                if settings().json:
                    out.emit_json(out.to_dict(job))
                raise CliError(f"job {job_id} is still {out.state_name(job.state)} after "
                               f"{format_duration(wait_timeout or 0)} (--wait-timeout)", ExitCode.WAIT_TIMEOUT)
            if show:
                status.update(f"waiting for job {job_id}: {out.state_name(job.state)}, "  # type: ignore[union-attr]
                              f"attempt {job.attempt}")


def _report_outcome(job: types_pb2.Job, document: dict[str, Any] | None) -> None:
    """Print a finished job's result; exit 6 (JOB_FAILED) if it did not succeed."""
    if document is not None:
        out.emit_json(document)
    elif job.state == types_pb2.JOB_STATE_SUCCESS:
        click.echo(out.payload_text(job.result))
    if job.state != types_pb2.JOB_STATE_SUCCESS:
        error = out.error_line(job.error)
        raise CliError(f"job {job.id} is {out.state_name(job.state)} after {job.attempt} "
                       f"attempt{'s' if job.attempt != 1 else ''}" + (f": {error}" if error else ""),
                       ExitCode.JOB_FAILED)


# -- cancel, retry, purge ----------------------------------------------------------------------


@jobs.command("cancel")
@click.argument("job_id", metavar="ID")
@json_option
@sidecar_options
def cancel(job_id: str) -> None:
    """Cancel a pending, running or suspended job (and its unfinished children). A running
    handler is told to stop. A job that has already ended is left as it is.

    \b
      perdure jobs cancel 0190a6f2-8c1e-7b3a-9f41-2d5e8c7a1b00
    """
    client = sidecar()
    response = client.call(client.jobs.CancelJob, jobs_pb2.CancelJobRequest(id=job_id, namespace=settings().namespace))
    if settings().json:
        out.emit_json(out.to_dict(response))
    elif response.cancelled:
        click.echo(f"cancelled job {job_id} ({response.job.name})")
    else:
        click.echo(f"job {job_id} had already ended ({out.state_name(response.job.state)}); nothing changed")


@jobs.command("retry")
@click.argument("job_id", metavar="[ID]", required=False)
@click.option("--dead", is_flag=True, help="Retry every dead job that matches the filters.")
@click.option("--cancelled", is_flag=True, help="Retry every cancelled job that matches the filters.")
@filter_options(states=None)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@sidecar_options
def retry(job_id: str | None, dead: bool, cancelled: bool, name: str | None, labels: tuple[tuple[str, str], ...],
          error_type: str | None, error_contains: str | None, yes: bool) -> None:
    """Run a dead or cancelled job again, with a fresh set of attempts; or, with --dead and/or
    --cancelled, every such job that matches the filters (the dead letters), in one call.

    \b
      perdure jobs retry 0190a6f2-8c1e-7b3a-9f41-2d5e8c7a1b00
      perdure jobs retry --dead --name import:row --error-type ValueError
    """
    client = sidecar()
    filtered = bool(name or labels or error_type or error_contains)
    if job_id is not None:
        if dead or cancelled or filtered:
            raise click.UsageError("give either a job ID or --dead/--cancelled with filters, not both")
        response = client.call(client.jobs.RetryJob, jobs_pb2.RetryJobRequest(id=job_id, namespace=settings().namespace))
        if settings().json:
            out.emit_json(out.to_dict(response))
        else:
            click.echo(f"job {job_id} ({response.job.name}) is pending again, with a fresh set of attempts")
        return
    if not (dead or cancelled):
        raise click.UsageError("give a job ID, or --dead and/or --cancelled (with filters) to retry many")
    states = [s for s, chosen in (("dead", dead), ("cancelled", cancelled)) if chosen]
    confirm(f"Retry {_described(states, name, labels, error_type, error_contains)}?", yes)
    request = jobs_pb2.RetryJobsRequest(filter=jobs_pb2.JobFilter(
        **_job_filter(name, states, labels, error_type, error_contains)))
    response = client.call(client.jobs.RetryJobs, request, timeout=max(client.timeout, 300.0))
    if settings().json:
        out.emit_json(out.to_dict(response))
    else:
        click.echo(f"retried {response.retried} job{'s' if response.retried != 1 else ''}")


@jobs.command("purge")
@filter_options(states=("success", "dead", "cancelled"))
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@sidecar_options
def purge(name: str | None, states: tuple[list[str], ...], labels: tuple[tuple[str, str], ...],
          error_type: str | None, error_contains: str | None, yes: bool) -> None:
    """Delete finished jobs that match the filters, with their history: dead ones unless
    --status says otherwise (success, dead, cancelled).

    \b
      perdure jobs purge --name import:row --yes
      perdure jobs purge --status success,cancelled --label tenant=acme
    """
    chosen = _flatten(states) or ["dead"]
    confirm(f"Delete {_described(chosen, name, labels, error_type, error_contains)}, with its history?", yes)
    client = sidecar()
    request = jobs_pb2.PurgeJobsRequest(filter=jobs_pb2.JobFilter(
        **_job_filter(name, chosen, labels, error_type, error_contains)))
    response = client.call(client.jobs.PurgeJobs, request, timeout=max(client.timeout, 300.0))
    if settings().json:
        out.emit_json(out.to_dict(response))
    else:
        click.echo(f"purged {response.purged} job{'s' if response.purged != 1 else ''}")


# -- watch -------------------------------------------------------------------------------------

EVENT_WORDS = {
    jobs_pb2.JOB_EVENT_KIND_ENQUEUED: ("enqueued", "cyan"),
    jobs_pb2.JOB_EVENT_KIND_STARTED: ("started", "yellow"),
    jobs_pb2.JOB_EVENT_KIND_SUCCEEDED: ("succeeded", "green"),
    jobs_pb2.JOB_EVENT_KIND_ATTEMPT_FAILED: ("failed", "red"),
    jobs_pb2.JOB_EVENT_KIND_DEAD: ("dead", "bold red"),
    jobs_pb2.JOB_EVENT_KIND_CANCELLED: ("cancelled", "dim"),
    jobs_pb2.JOB_EVENT_KIND_RETRIED: ("retried", "cyan"),
    jobs_pb2.JOB_EVENT_KIND_SUSPENDED: ("suspended", "magenta"),
    jobs_pb2.JOB_EVENT_KIND_PROGRESS: ("progress", ""),
    jobs_pb2.JOB_EVENT_KIND_LOG: ("log", ""),
    jobs_pb2.JOB_EVENT_KIND_RESUMED: ("resumed", "magenta"),
}


@jobs.command("watch")
@click.option("--name", metavar="FUNCTION", help="Only jobs of this function.")
@click.option("--job", "job_id", metavar="ID", help="Only this job.")
@json_option
@sidecar_options
def watch(name: str | None, job_id: str | None) -> None:
    """Print jobs' lifecycle events as they happen, on every sidecar, until Ctrl-C. With
    --json, one JSON object per line.

    \b
      perdure jobs watch
      perdure jobs watch --name reports:build
    """
    client = sidecar()
    request = jobs_pb2.WatchJobsRequest(namespace=settings().namespace, name=name or "", job_id=job_id or "")
    call = client.jobs.WatchJobs(request)
    try:
        call.initial_metadata()  # sent once the watch is live: no event after this is missed
        if call.is_active():  # it is not when the sidecar could not be reached
            hint(f"watching jobs in namespace {settings().namespace!r}; Ctrl-C to stop")
        for event in call:
            if settings().json:
                click.echo(json.dumps(out.to_dict(event), ensure_ascii=False, separators=(",", ":")))
            else:
                out.console().print(_event_line(event), soft_wrap=True)
            sys.stdout.flush()
    except KeyboardInterrupt:
        call.cancel()
    except grpc.RpcError as exc:
        raise client.error(exc) from None


def _event_line(event: jobs_pb2.JobEvent) -> Text:
    word, style = EVENT_WORDS.get(event.kind, ("event", ""))
    at = out.moment(event, "at")
    line = Text.assemble(f"{at.astimezone():%H:%M:%S.%f}"[:-3] if at else "            ", "  ",
                         (f"{word:<10}", style), "  ", event.job_id, "  ", event.name)
    if event.attempt:
        line.append(f"  attempt {event.attempt}")
    if event.HasField("error") and (event.error.type or event.error.message):
        line.append(f"  {out.error_line(event.error)}", style="red")
    if event.kind == jobs_pb2.JOB_EVENT_KIND_PROGRESS and event.HasField("progress"):
        line.append(f"  {_progress_words(event.progress)}")
    if event.kind == jobs_pb2.JOB_EVENT_KIND_LOG and event.HasField("log"):
        level = out.LOG_LEVELS.get(event.log.level, "info")
        line.append(f"  [{level}] ", style=out.LOG_STYLES.get(level, ""))
        line.append(event.log.message)
    if event.HasField("run_at") and event.kind in (jobs_pb2.JOB_EVENT_KIND_ATTEMPT_FAILED,
                                                   jobs_pb2.JOB_EVENT_KIND_SUSPENDED, jobs_pb2.JOB_EVENT_KIND_ENQUEUED):
        run_at = out.moment(event, "run_at")
        if run_at and run_at > datetime.now(UTC):
            line.append(f"  runs {out.relative(run_at)}", style="dim")
    return line
