"""`perdured`: serve (the default) or apply migrations and exit."""

from __future__ import annotations

import asyncio
import os
import sys

from perdured import logs
from perdured.config import build_parser, settings_from
from perdured.migrate import MigrationPermissionError, SchemaMismatch, SchemaTooNew


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    logs.configure(settings.log_format, settings.log_level)
    # We never fork a process that then uses gRPC (only pg_ctl, which execs at once):
    # gRPC's fork handlers would only print warnings.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
    from perdured.server import apply_migrations, database_url, serve

    if args.command == "health":
        sys.exit(health(settings.listen))
    try:
        if args.command == "migrate":
            async def run_migrations() -> None:
                applied = await apply_migrations(await database_url(settings))
                logs.log.info("migrate.done", applied=applied)

            asyncio.run(run_migrations())
        else:
            asyncio.run(serve(settings))
    except (SchemaTooNew, SchemaMismatch, MigrationPermissionError) as exc:
        logs.log.error("database.schema_refused", error=str(exc))
        sys.exit(f"perdured: {exc}")
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        logs.log.error("sidecar.failed", error=str(exc))
        sys.exit(f"perdured: {exc}")


def health(listen: str) -> int:
    """Ask the sidecar at `listen` (0.0.0.0 means this host) for its gRPC health status."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    host, _, port = listen.rpartition(":")
    address = f"{'127.0.0.1' if host in ('0.0.0.0', '', '[::]') else host}:{port}"
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3).status
    except grpc.RpcError as exc:
        print(f"perdured at {address} is not answering: {exc.code().name}", file=sys.stderr)
        return 1
    serving = status == health_pb2.HealthCheckResponse.SERVING
    print(f"perdured at {address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")
    return 0 if serving else 1
