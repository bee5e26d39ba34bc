"""`python -m perdured`, and the `perdured` command."""

import importlib.util
import sys


def _without_the_sdk() -> None:
    """Register the `perdure` package without running its __init__, which loads the Python
    SDK (and OpenTelemetry with it): the daemon uses only the contract's stubs (perdure.v1)
    and two small modules of the package, and the SDK would cost it about 5 MB resident."""
    spec = importlib.util.find_spec("perdure")
    if spec is not None and "perdure" not in sys.modules:
        sys.modules["perdure"] = importlib.util.module_from_spec(spec)  # its __path__, not its code


def main() -> None:
    # structlog pretty-prints tracebacks with rich whenever it can import it, and rich (which
    # the perdure command needs) would cost the daemon about 6 MB resident: it does without.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    _without_the_sdk()
    from perdured.cli import main as run

    run()


if __name__ == "__main__":
    main()
