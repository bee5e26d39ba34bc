"""The sidecar as the command line sees it: one channel, the contract's stubs, and gRPC
errors turned into one-line messages with an exit code."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click
import grpc
from grpc_health.v1 import health_pb2_grpc

from perdure._security import ClientSecurity
from perdure.v1 import admin_pb2_grpc, jobs_pb2_grpc, schedules_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:7433"
DEFAULT_NAMESPACE = "default"
DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE = 64 * 1024 * 1024


class ExitCode:
    """What `perdure` exits with; the root command's help and the README list these."""

    OK = 0
    ERROR = 1  # anything else, and a problem found by `doctor`
    USAGE = 2  # a bad command line (click's own code)
    UNAVAILABLE = 3  # the sidecar (or, for migrate, the database) cannot be reached
    NOT_FOUND = 4  # no such job, schedule or event
    REFUSED = 5  # the sidecar refused the request: invalid, or not possible in the current state
    JOB_FAILED = 6  # an awaited job ended dead or cancelled
    WAIT_TIMEOUT = 7  # an awaited job had not ended when --wait-timeout passed
    DENIED = 8  # the sidecar refused the credentials: no or an unknown token, or a namespace it may not use
    INTERRUPTED = 130  # Ctrl-C


class CliError(Exception):
    """An expected failure: one line on standard error, no traceback, a documented exit code."""

    def __init__(self, message: str, exit_code: int = ExitCode.ERROR) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def show(self) -> None:
        click.echo(f"perdure: {self.message}", err=True)


_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.OUT_OF_RANGE)


def one_line(text: str) -> str:
    return "; ".join(line.strip() for line in text.strip().splitlines() if line.strip())


@dataclass
class Settings:
    """The options every command that talks to the sidecar shares; set on `perdure` itself or
    on the command (the command's win)."""

    address: str = DEFAULT_ADDRESS
    namespace: str = DEFAULT_NAMESPACE
    timeout: float = DEFAULT_TIMEOUT
    json: bool = False
    # --token, --tls, --tls-ca, --tls-cert, --tls-key, --tls-server-name (None: not given)
    security: dict[str, Any] = field(default_factory=dict, repr=False)
    _sidecar: Sidecar | None = field(default=None, repr=False)

    def sidecar(self) -> Sidecar:
        if self._sidecar is None:
            try:
                security = ClientSecurity.of(**self.security)
            except ValueError as exc:
                raise CliError(str(exc).replace("tls_", "--tls-").replace("token ", "--token "),
                               ExitCode.USAGE) from None
            self._sidecar = Sidecar(self.address, self.timeout, security)
        return self._sidecar

    def close(self) -> None:
        if self._sidecar is not None:
            self._sidecar.close()
            self._sidecar = None


class Sidecar:
    """A channel to one perdured and the stubs of its services."""

    def __init__(self, address: str, timeout: float, security: ClientSecurity | None = None) -> None:
        self.address = address
        self.timeout = timeout
        self.security = security or ClientSecurity()
        self.channel = self.security.channel(address, options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ])
        self.jobs = jobs_pb2_grpc.JobsStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.schedules = schedules_pb2_grpc.SchedulesStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def call(self, method: Any, request: Any, *, timeout: float | None = None,
             messages: dict[grpc.StatusCode, str] | None = None) -> Any:
        """Call a unary method; a failure becomes a CliError (with the message given for its
        status code, if any)."""
        try:
            return method(request, timeout=self.timeout if timeout is None else timeout)
        except grpc.RpcError as exc:
            error = self.error(exc)
            if messages and exc.code() in messages:
                error.message = messages[exc.code()]
            raise error from None

    def error(self, exc: grpc.RpcError) -> CliError:
        code: grpc.StatusCode = exc.code()
        detail = one_line(exc.details() or "")
        if code == grpc.StatusCode.UNAVAILABLE:
            if reason := _tls_failure(detail):
                return CliError(f"no TLS connection to perdured at {self.address} ({reason}); "
                                f"{_TLS_HINT if self.security.tls else 'if it serves TLS, give --tls-ca (or --tls)'}",
                                ExitCode.UNAVAILABLE)
            if reason := _connection_failure(detail):
                if reason.lower() == "socket closed" and not self.security.tls:  # what a TLS port does to plain text
                    return CliError(f"perdured at {self.address} closed the connection; if it serves TLS, give "
                                    "--tls-ca (or --tls)", ExitCode.UNAVAILABLE)
                return CliError(f"cannot reach perdured at {self.address} ({reason}); is it running? "
                                f"Set --address or PERDURE_ADDRESS", ExitCode.UNAVAILABLE)
            return CliError(f"perdured at {self.address} is unavailable: {detail}", ExitCode.UNAVAILABLE)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CliError(f"no answer from perdured at {self.address} within the timeout "
                            f"({self.timeout:g} s; see --timeout)", ExitCode.UNAVAILABLE)
        if code == grpc.StatusCode.NOT_FOUND:
            return CliError(detail or "not found", ExitCode.NOT_FOUND)
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return CliError(f"perdured at {self.address} refused the call: {detail}; give its token with --token "
                            "or PERDURE_TOKEN", ExitCode.DENIED)
        if code == grpc.StatusCode.PERMISSION_DENIED:
            return CliError(f"{detail or 'permission denied'} (see --namespace)", ExitCode.DENIED)
        if code in _REFUSED:
            return CliError(detail or code.name.lower(), ExitCode.REFUSED)
        if code == grpc.StatusCode.UNIMPLEMENTED:
            return CliError(f"perdured at {self.address} does not offer this ({detail or 'unimplemented'}); "
                            f"is it older than this perdure?", ExitCode.ERROR)
        if code == grpc.StatusCode.CANCELLED:
            return CliError("interrupted", ExitCode.INTERRUPTED)
        return CliError(f"perdured answered {code.name}: {detail}", ExitCode.ERROR)

    def close(self) -> None:
        self.channel.close()


_TLS_HINT = "check --tls-ca (the authority of its certificate), --tls-server-name, and --tls-cert/--tls-key if it asks for a client certificate"


def _tls_failure(detail: str) -> str:
    """Why a TLS connection failed (`certificate verify failed`), or ""."""
    lowered = detail.lower()
    for marker in ("ssl", "tls", "handshake", "certificate", "verification", "x509"):
        if marker in lowered:
            return detail.rsplit(": ", 1)[-1] if "failed to connect" in lowered else detail
    return ""


def _connection_failure(detail: str) -> str:
    """Why the channel could not connect (`Connection refused`), or "" when it did connect
    and the sidecar itself answered UNAVAILABLE."""
    lowered = detail.lower()
    if lowered.startswith("errors resolving") or "dns resolution failed" in lowered:
        return "the host name does not resolve"
    if "failed to connect" in lowered:
        return detail.rsplit(": ", 1)[-1]
    return ""
