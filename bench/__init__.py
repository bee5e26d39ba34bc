"""Perdure benchmarks. They measure and print; they assert nothing.

    python -m bench latency [--jobs N] [--runs R] [--database-url URL]
"""

import os

# The embedded PostgreSQL is stopped with a forked pg_ctl while gRPC runs in this process;
# gRPC's fork handlers would only print a warning (perdured sets the same for itself).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
