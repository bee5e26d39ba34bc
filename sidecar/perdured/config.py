"""Settings of the sidecar: every one a command-line flag and a PERDURE_* variable."""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, repr=False)  # may hold a password: never shown
    listen: str = "127.0.0.1:7433"
    lease: float = 30.0
    log_format: str = "console"
    log_level: str = "info"
    data_dir: Path = Path(".perdure")
    shutdown_grace: float = 15.0
    poll_interval: float = 30.0
    max_payload_bytes: int = 4 * 1024 * 1024
    pool_size: int = 10
    max_streams: int = 1000  # worker streams one sidecar serves at once
    max_worker_concurrency: int = 10_000  # jobs one worker may hold at once
    retention: float = 7 * 24 * 3600.0  # seconds finished jobs are kept
    retention_interval: float = 60.0
    metrics_listen: str = ""  # host:port for Prometheus metrics; empty: not served
    dashboard_listen: str = ""  # host:port for the web dashboard; empty: not served
    dashboard_allow_remote: bool = False  # serve the dashboard on a non-loopback address
    # Security (see the README's "Security"): TLS for every port beyond loopback, tokens for
    # every call; --insecure allows a wider address without them.
    tls_cert: Path | None = None  # PEM: the server's certificate chain
    tls_key: Path | None = None  # PEM: its private key
    tls_client_ca: Path | None = None  # PEM: require client certificates signed by this authority
    token: str | None = field(default=None, repr=False)  # one token for every namespace
    tokens_file: Path | None = None  # one token per line, with the namespaces it may use
    insecure: bool = False
    # For a supervising process (the Python SDK): where to write the bound address
    # once serving, and whether to stop when our standard input closes.
    ready_fd: int | None = None
    exit_with_stdin: bool = False


def normalise_database_url(url: str) -> str:
    """Accept both postgres:// and postgresql:// (libpq takes both, some tools only one)."""
    if url.startswith("postgres://"):
        return "postgresql://" + url[len("postgres://"):]
    return url


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"must be true or false, got {text}")


def _address(text: str) -> str:
    """HOST:PORT (HOST may be a name, an IPv4 address or a bracketed IPv6 address)."""
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT, e.g. 127.0.0.1:7434; got {text!r}")
    return text


def is_loopback(host: str) -> bool:
    """Whether HOST (of HOST:PORT) only accepts connections from this machine."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name, or empty (every interface)


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


# (flag, environment variable, type, help). The default comes from Settings.
_OPTIONS: list[tuple[str, str, Any, str]] = [
    ("--database-url", "PERDURE_DATABASE_URL", str,
     "PostgreSQL URL (postgres:// or postgresql://). Unset: an embedded PostgreSQL in --data-dir."),
    ("--listen", "PERDURE_LISTEN", str, "gRPC address to serve on (host:port; port 0 picks one)."),
    ("--lease", "PERDURE_LEASE", _positive_float,
     "Seconds a claimed job stays ours without renewal; a dead sidecar's jobs return after it."),
    ("--log-format", "PERDURE_LOG_FORMAT", str, "json or console."),
    ("--log-level", "PERDURE_LOG_LEVEL", str, "debug, info, warning or error."),
    ("--data-dir", "PERDURE_DATA_DIR", Path, "Where the embedded PostgreSQL keeps its data."),
    ("--shutdown-grace", "PERDURE_SHUTDOWN_GRACE", float,
     "Seconds in-flight jobs get to finish on SIGTERM before they are handed back."),
    ("--poll-interval", "PERDURE_POLL_INTERVAL", _positive_float,
     "Seconds between safety polls (notifications wake the scheduler; this only catches strays)."),
    ("--max-payload-bytes", "PERDURE_MAX_PAYLOAD_BYTES", _positive_int,
     "Largest accepted payload or result."),
    ("--pool-size", "PERDURE_POOL_SIZE", _positive_int, "Database connections at most."),
    ("--max-streams", "PERDURE_MAX_STREAMS", _positive_int,
     "Worker streams this sidecar serves at once; more are refused (RESOURCE_EXHAUSTED)."),
    ("--max-worker-concurrency", "PERDURE_MAX_WORKER_CONCURRENCY", _positive_int,
     "Jobs one worker may hold at once (its registered concurrency)."),
    ("--retention", "PERDURE_RETENTION", _positive_float,
     "Seconds finished jobs (success, dead, cancelled) are kept before sidecars delete them."),
    ("--retention-interval", "PERDURE_RETENTION_INTERVAL", _positive_float,
     "Seconds between deletions of old finished jobs (one sidecar at a time does them)."),
    ("--metrics-listen", "PERDURE_METRICS_LISTEN", str,
     "Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464). Unset: off. With tokens, "
     "it asks for one; beyond loopback, it needs TLS and tokens (HTTPS)."),
    ("--dashboard-listen", "PERDURE_DASHBOARD_LISTEN", _address,
     "Serve the web dashboard at http://HOST:PORT/ (usually 127.0.0.1:7434). Unset: off. With tokens, it asks "
     "for one in a login form; beyond loopback, it needs TLS and tokens (HTTPS)."),
    ("--dashboard-allow-remote", "PERDURE_DASHBOARD_ALLOW_REMOTE", _boolean,
     "Allow --dashboard-listen on a non-loopback address without TLS and tokens (only behind something "
     "that does both)."),
    ("--tls-cert", "PERDURE_TLS_CERT", Path,
     "The server's certificate (PEM, with its chain) for TLS on the gRPC port and, beyond loopback, on the "
     "dashboard and metrics ports. Read again when it changes."),
    ("--tls-key", "PERDURE_TLS_KEY", Path, "The private key of --tls-cert (PEM)."),
    ("--tls-client-ca", "PERDURE_TLS_CLIENT_CA", Path,
     "Require client certificates signed by this authority (PEM) on every TLS port."),
    ("--token", "PERDURE_TOKEN", str,
     "A token every call must carry (authorization: Bearer TOKEN); it may use every namespace. Prefer the "
     "variable or --tokens-file: flags show in process lists."),
    ("--tokens-file", "PERDURE_TOKENS_FILE", Path,
     "A file of tokens, one per line with the namespaces it may use: 'TOKEN billing,shipping' or 'TOKEN *'; "
     "# starts a comment."),
    ("--insecure", "PERDURE_INSECURE", _boolean,
     "Serve on non-loopback addresses without TLS or tokens (a warning is logged): only on a network you trust."),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perdured",
        description="The Perdure sidecar: durable execution on PostgreSQL over gRPC.",
        epilog="Every flag can also be set by the PERDURE_* variable shown with it.",
    )
    defaults = Settings()
    for flag, env, kind, text in _OPTIONS:
        dest = flag[2:].replace("-", "_")
        default = getattr(defaults, dest)
        if kind is _boolean:  # a switch on the command line; true or false in the environment
            parser.add_argument(flag, dest=dest, action="store_const", const=True, default=None,
                                help=f"{text} [{env}=true]")
            continue
        parser.add_argument(flag, dest=dest, type=kind, default=None,
                            help=f"{text} [{env}; default: {default}]")
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--exit-with-stdin", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs="?", choices=["serve", "migrate", "health"], default="serve",
                        help="serve (the default); migrate: apply the schema and exit; health: exit 0 if the "
                             "sidecar at --listen is serving, 1 if not (for container health checks).")
    return parser


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flags win over PERDURE_* variables, which win over the defaults."""
    environ = dict(os.environ if environ is None else environ)
    values: dict[str, object] = {}
    for flag, env, kind, _ in _OPTIONS:
        dest = flag[2:].replace("-", "_")
        value = getattr(args, dest)
        if value is None and environ.get(env):
            try:
                value = kind(environ[env])
            except (ValueError, argparse.ArgumentTypeError) as exc:
                raise SystemExit(f"perdured: {env}: {exc}") from None
        if value is not None:
            values[dest] = value
    if values.get("database_url"):
        values["database_url"] = normalise_database_url(str(values["database_url"]))
    settings = Settings(**values, ready_fd=args.ready_fd, exit_with_stdin=args.exit_with_stdin)  # type: ignore[arg-type]
    if settings.log_format not in ("json", "console"):
        raise SystemExit(f"perdured: --log-format must be json or console, got {settings.log_format!r}")
    if settings.log_level not in ("debug", "info", "warning", "error"):
        raise SystemExit(f"perdured: --log-level must be debug, info, warning or error, got {settings.log_level!r}")
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise SystemExit("perdured: give --tls-cert and --tls-key together (a certificate and its private key)")
    if settings.tls_client_ca is not None and settings.tls_cert is None:
        raise SystemExit("perdured: --tls-client-ca needs --tls-cert and --tls-key (client certificates are "
                         "checked over TLS)")
    if args.command == "serve":
        try:
            check_exposure(settings)
        except ExposureError as exc:
            raise SystemExit(f"perdured: {exc}") from None
    return settings


class ExposureError(ValueError):
    """A port would be reachable beyond this machine without the protection it needs."""


def _host(address: str) -> str:
    return address.rpartition(":")[0]


def check_exposure(settings: Settings) -> list[str]:
    """Refuse (ExposureError, one line naming the fix) a port beyond loopback without TLS and
    tokens, unless --insecure (or, for the dashboard alone, --dashboard-allow-remote) allows it.
    Returns what is served unprotected beyond loopback, for the warning --insecure asks for."""
    tls = settings.tls_cert is not None
    tokens = bool(settings.token or settings.tokens_file)
    missing = [(what, fix) for what, fix, present in (
        ("TLS", "--tls-cert and --tls-key", tls), ("a token", "--token or --tokens-file", tokens)) if not present]
    if not missing:
        return []
    lacking = " and ".join(what for what, _ in missing)
    fixes = ", and ".join(fix for _, fix in missing)
    unprotected = []
    ports = [("--listen", settings.listen, "the gRPC API (anyone who reaches it could enqueue, read and cancel jobs)")]
    if settings.metrics_listen:
        ports.append(("--metrics-listen", settings.metrics_listen, "the metrics"))
    if settings.dashboard_listen:
        ports.append(("--dashboard-listen", settings.dashboard_listen,
                      "the dashboard (anyone who reaches it could read payloads and cancel jobs)"))
    for flag, address, what in ports:
        if is_loopback(_host(address)):
            continue
        if flag == "--dashboard-listen" and settings.dashboard_allow_remote:
            unprotected.append(f"{flag} {address} without {lacking} (--dashboard-allow-remote)")
            continue
        if not settings.insecure:
            also = (" (or --dashboard-allow-remote if something in front of it does both)"
                    if flag == "--dashboard-listen" else "")
            raise ExposureError(
                f"{flag} {address} would serve {what} beyond this machine without {lacking}: give {fixes}; "
                f"or use a loopback address (127.0.0.1); or add --insecure{also} to serve it unprotected")
        unprotected.append(f"{flag} {address} without {lacking}")
    return unprotected
