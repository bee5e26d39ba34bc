"""`python -m bench SCENARIO [options]`: run one benchmark scenario and print its figures."""

from __future__ import annotations

import argparse
import signal
import sys

from bench import chaos, growth, idle, instructions, latency, scale, throughput

SCENARIOS = {"latency": latency, "throughput": throughput, "idle": idle, "scale": scale, "growth": growth,
             "chaos": chaos, "instructions": instructions}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Perdure benchmarks (they print, never assert).")
    commands = parser.add_subparsers(dest="scenario", required=True)
    for name, module in SCENARIOS.items():
        module.add_arguments(commands.add_parser(name, help=(module.__doc__ or "").splitlines()[0]))
    args = parser.parse_args(argv)
    # Stop like Ctrl-C does, so that perdured and the embedded PostgreSQL are stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    SCENARIOS[args.scenario].run(args)


if __name__ == "__main__":
    main()
