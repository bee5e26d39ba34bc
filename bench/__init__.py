"""Perdure benchmarks. They measure and print; they assert nothing.

    python -m bench latency [--jobs N] [--runs R] [--database-url URL]
"""
