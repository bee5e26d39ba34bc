"""The `perdure` command: its root options, its commands, and how it ends (exit codes)."""

from __future__ import annotations

import os
import sys

import click

from perdure import __version__
from perdure.cli._jobs import jobs
from perdure.cli._ops import doctor, events, migrate, stats, workers
from perdure.cli._params import POSITIVE_DURATION
from perdure.cli._rpc import DEFAULT_ADDRESS, DEFAULT_NAMESPACE, CliError, ExitCode, Settings
from perdure.cli._schedules import schedules

HELP = f"""Operate Perdure: jobs, statistics, workers, events, schedules, the schema.

Every command but migrate talks to a perdured sidecar over the gRPC contract (--address,
PERDURE_ADDRESS), with its token (--token, PERDURE_TOKEN) and over TLS (--tls-ca, ...)
when it asks for them. Tables are for people; --json prints one JSON document (a list for
list commands) with the contract's field names, for scripts. Durations read 30s, 5m, 2h,
1h30m or plain seconds.

\b
Exit codes:
  0    success
  1    an error (or a check of doctor failed, or a confirmation was declined)
  2    a bad command line
  3    the sidecar (for migrate, the database) cannot be reached
  4    no such job, schedule or event
  5    the sidecar refused the request (invalid, or not possible in the job's state)
  6    the awaited job ended dead or cancelled (--wait, jobs wait)
  7    the awaited job had not ended within --wait-timeout
  8    refused: no token or an unknown one, or a namespace the token may not use
  130  interrupted (Ctrl-C)

perdure {__version__}
"""


@click.group(help=HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--address", "-a", envvar="PERDURE_ADDRESS", default=DEFAULT_ADDRESS, show_default=True,
              metavar="HOST:PORT", help="The sidecar's gRPC address [env PERDURE_ADDRESS].")
@click.option("--namespace", "-n", envvar="PERDURE_NAMESPACE", default=DEFAULT_NAMESPACE, show_default=True,
              metavar="NAME", help="The namespace [env PERDURE_NAMESPACE].")
@click.option("--timeout", envvar="PERDURE_TIMEOUT", type=POSITIVE_DURATION, default="30s",
              show_default=True, metavar="DURATION",
              help="How long to wait for each answer of the sidecar [env PERDURE_TIMEOUT].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--token", envvar="PERDURE_TOKEN", metavar="TOKEN",
              help="The token to send, when the sidecar asks for one [env PERDURE_TOKEN].")
@click.option("--tls", is_flag=True, default=None, envvar="PERDURE_TLS",
              help="Connect with TLS, trusting the system's authorities [env PERDURE_TLS].")
@click.option("--tls-ca", envvar="PERDURE_TLS_CA", metavar="FILE",
              help="Connect with TLS, trusting this authority (PEM) [env PERDURE_TLS_CA].")
@click.option("--tls-cert", envvar="PERDURE_TLS_CLIENT_CERT", metavar="FILE",
              help="A client certificate (PEM), when the sidecar asks for one [env PERDURE_TLS_CLIENT_CERT].")
@click.option("--tls-key", envvar="PERDURE_TLS_CLIENT_KEY", metavar="FILE",
              help="The client certificate's private key (PEM) [env PERDURE_TLS_CLIENT_KEY].")
@click.option("--tls-server-name", envvar="PERDURE_TLS_SERVER_NAME", metavar="NAME",
              help="The name to expect in the sidecar's certificate [env PERDURE_TLS_SERVER_NAME].")
@click.version_option(__version__, "--version", "-V", prog_name="perdure")
@click.pass_context
def cli(ctx: click.Context, address: str, namespace: str, timeout: float, as_json: bool, token: str | None,
        tls: bool | None, tls_ca: str | None, tls_cert: str | None, tls_key: str | None,
        tls_server_name: str | None) -> None:
    settings = ctx.ensure_object(Settings)
    settings.address, settings.namespace, settings.timeout, settings.json = address, namespace, timeout, as_json
    settings.security = {"token": token, "tls": tls, "tls_ca": tls_ca, "tls_cert": tls_cert, "tls_key": tls_key,
                         "tls_server_name": tls_server_name}
    ctx.call_on_close(settings.close)


cli.add_command(jobs)
cli.add_command(stats)
cli.add_command(workers)
cli.add_command(events)
cli.add_command(schedules)
cli.add_command(doctor)
cli.add_command(migrate)


def main(argv: list[str] | None = None) -> None:
    """The console script: run the command and exit with its code, never with a traceback
    for an expected failure."""
    try:
        result = cli.main(args=argv, prog_name="perdure", standalone_mode=False)
    except CliError as exc:
        exc.show()
        code = exc.exit_code
    except click.ClickException as exc:  # a bad command line
        exc.show()
        code = exc.exit_code
    except click.Abort:  # Ctrl-C (click turns KeyboardInterrupt into Abort) or EOF at a prompt
        click.echo("perdure: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except KeyboardInterrupt:
        click.echo("perdure: interrupted", err=True)
        code = ExitCode.INTERRUPTED
    except BrokenPipeError:  # `perdure jobs list | head`: the reader left
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = ExitCode.ERROR
    else:
        code = result if isinstance(result, int) else ExitCode.OK
    sys.exit(code)
