"""`perdured`: serve (the default) or apply migrations and exit."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import traceback
from collections.abc import Coroutine
from types import TracebackType
from typing import Any

import psycopg

from perdured import logs
from perdured.auth import TokensError
from perdured.config import ExposureError, Settings, build_parser, settings_from
from perdured.migrate import MigrationPermissionError, SchemaMismatch, SchemaTooNew
from perdured.tls import TLSError


def _redacted_excepthook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """The last resort for an unexpected error: its traceback, without the secrets."""
    sys.stderr.write(logs.redact("".join(traceback.format_exception(kind, value, tb))))


def _run_fast(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run, on uvloop when it is installed (perdure[fast]): every job costs the event
    loop a few callbacks, and uvloop's are cheaper."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _collect_garbage_rarely() -> None:
    """Every job leaves a few hundred short-lived containers, nearly all freed at once by
    reference counting. At Python's default threshold (700 more containers than freed) a
    claim or a finish of a few hundred jobs set off a collection each: a tenth of the daemon's
    CPU in a drain. At 10,000 collections are rare, and what cycles there are wait a little
    longer. The objects of start-up (modules, descriptors) are frozen out of every collection."""
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logs.configure(settings.log_format, settings.log_level)
    logs.route_library_logs(settings.log_format, settings.log_level)
    if settings.database_url:
        for secret in logs.database_password(settings.database_url):
            logs.add_secret(secret)
    if settings.token:
        logs.add_secret(settings.token)
    sys.excepthook = _redacted_excepthook
    # We never fork a process that then uses gRPC (only pg_ctl, which execs at once):
    # gRPC's fork handlers would only print warnings.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from perdured.server import apply_migrations, database_url, serve

    if args.command == "health":
        sys.exit(health(settings))
    try:
        if args.command == "migrate":
            async def run_migrations() -> None:
                applied = await apply_migrations(await database_url(settings))
                logs.log.info("migrate.done", applied=applied)

            asyncio.run(run_migrations())
        else:
            _collect_garbage_rarely()
            _run_fast(serve(settings))
    except (SchemaTooNew, SchemaMismatch, MigrationPermissionError) as exc:
        logs.log.error("database.schema_refused", error=str(exc))
        sys.exit(f"perdured: {exc}")
    except KeyboardInterrupt:
        pass
    except (TokensError, TLSError, ExposureError) as exc:  # what to fix, in one line
        logs.log.error("sidecar.refused", error=str(exc))
        sys.exit(logs.redact(f"perdured: {exc}"))
    except (psycopg.OperationalError, psycopg.ProgrammingError) as exc:  # unreachable, refused, a bad URL
        url = logs.redact_database_url(settings.database_url or "the embedded PostgreSQL")
        logs.log.error("database.unreachable", database=url, error=str(exc))
        sys.exit(logs.redact(f"perdured: cannot connect to the database {url}: {logs.one_line(str(exc))}"))
    except OSError as exc:
        logs.log.error("sidecar.failed", error=str(exc))
        sys.exit(logs.redact(f"perdured: {exc}"))


def health(settings: Settings) -> int:
    """Ask the sidecar at `--listen` (0.0.0.0 means this host) for its gRPC health status.

    Over TLS when it serves TLS: it trusts PERDURE_TLS_CA if set, else the sidecar's own
    certificate, and checks the first name the certificate gives; when client certificates
    are required it presents PERDURE_TLS_CLIENT_CERT and PERDURE_TLS_CLIENT_KEY if set, else the
    sidecar's own certificate. The health service needs no token."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from perdured.tls import certificate_names

    host, _, port = settings.listen.rpartition(":")
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '', '[::]') else host}:{port}"
    try:
        if settings.tls_cert is not None and settings.tls_key is not None:
            ca = os.environ.get("PERDURE_TLS_CA") or settings.tls_cert
            cert = os.environ.get("PERDURE_TLS_CLIENT_CERT") or settings.tls_cert
            key = os.environ.get("PERDURE_TLS_CLIENT_KEY") or settings.tls_key
            with open(ca, "rb") as ca_file, open(cert, "rb") as cert_file, open(key, "rb") as key_file:
                credentials = grpc.ssl_channel_credentials(
                    ca_file.read(), *((key_file.read(), cert_file.read()) if settings.tls_client_ca else (None, None)))
            names = certificate_names(settings.tls_cert)
            options = [("grpc.ssl_target_name_override", names[0])] if names else []
            channel = grpc.secure_channel(address, credentials, options)
        else:
            channel = grpc.insecure_channel(address)
    except OSError as exc:
        print(f"perdured health: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        with channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status
    except grpc.RpcError as exc:
        print(f"perdured at {address} is not answering: {exc.code().name}", file=sys.stderr)
        return 1
    serving = status == health_pb2.HealthCheckResponse.SERVING
    print(f"perdured at {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if serving else 1
