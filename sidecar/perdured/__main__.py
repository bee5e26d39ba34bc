"""`python -m perdured`, and the `perdured` command."""

import sys


def main() -> None:
    # structlog pretty-prints tracebacks with rich whenever it can import it, and rich (which
    # the perdure command needs) would cost the daemon about 6 MB resident: it does without.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    from perdured.cli import main as run

    run()


if __name__ == "__main__":
    main()
