"""Options every command shares and the helpers the commands use."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from perdure.cli._params import POSITIVE_DURATION
from perdure.cli._rpc import CliError, ExitCode, Settings, Sidecar

F = TypeVar("F", bound=Callable[..., Any])


def settings() -> Settings:
    found = click.get_current_context().find_object(Settings)
    if found is None:  # a command invoked on its own, outside `perdure`
        found = click.get_current_context().ensure_object(Settings)
    return found


def sidecar() -> Sidecar:
    return settings().sidecar()


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        if value is not None and value is not False:
            setattr(ctx.ensure_object(Settings), name, value)

    return store


def sidecar_options(command: F) -> F:
    """--address, --namespace and --timeout on a command: they override those given to
    `perdure` itself (or taken from PERDURE_ADDRESS, PERDURE_NAMESPACE, PERDURE_TIMEOUT)."""
    for option in reversed((
        click.option("--address", "-a", metavar="HOST:PORT", expose_value=False, callback=_setter("address"),
                     help="The sidecar's gRPC address [env PERDURE_ADDRESS; default 127.0.0.1:7433]."),
        click.option("--namespace", "-n", metavar="NAME", expose_value=False, callback=_setter("namespace"),
                     help="The namespace [env PERDURE_NAMESPACE; default \"default\"]."),
        click.option("--timeout", type=POSITIVE_DURATION, metavar="DURATION", expose_value=False,
                     callback=_setter("timeout"),
                     help="How long to wait for each answer of the sidecar [env PERDURE_TIMEOUT; default 30s]."),
    )):
        command = option(command)
    return command


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, default=False, expose_value=False,
                        callback=_setter("json"),
                        help="Print JSON (the contract's field names) instead of a table.")(command)


def confirm(question: str, yes: bool) -> None:
    """Ask before a change that cannot be undone, unless --yes."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise click.UsageError(f"{question} Add --yes to go ahead (standard input is not a terminal to ask on).")
    if not click.confirm(question, default=False, err=True):
        raise CliError("nothing done", ExitCode.ERROR)


def hint(text: str) -> None:
    """A note for people, on standard error (standard output stays data)."""
    click.echo(text, err=True)
