"""Regenerate the committed Python stubs from proto/ (or check that they are current).

    python scripts/generate_protos.py          # rewrite sdk_python/perdure/v1/*_pb2*.py[i]
    python scripts/generate_protos.py --check  # exit 1 if the committed stubs are stale

Needs the `dev` extra (grpcio-tools, mypy-protobuf).
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PYTHON_OUT = ROOT / "sdk_python"
STUB_DIR = PYTHON_OUT / "perdure" / "v1"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "perdure" / "v1").glob("*.proto"))


def generate_python(out: Path) -> None:
    """Write the stubs for every proto file under `out` (a package root)."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # mypy-protobuf's plugins sit beside this interpreter, which may not be on PATH.
    scripts = Path(sys.executable).parent
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_ROOT}", f"-I{well_known}",
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}", f"--mypy_grpc_out={out}",
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    subprocess.run(command, check=True, cwd=ROOT)


def stub_names(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if p.name.endswith(STUB_SUFFIXES)}


def stale_stubs() -> list[str]:
    """The stub files that differ from a fresh generation (missing, extra or changed)."""
    with tempfile.TemporaryDirectory() as tmp:
        generate_python(Path(tmp))
        fresh_dir = Path(tmp) / "perdure" / "v1"
        fresh, committed = stub_names(fresh_dir), stub_names(STUB_DIR)
        changed = {
            name for name in fresh & committed
            if not filecmp.cmp(fresh_dir / name, STUB_DIR / name, shallow=False)
        }
        return sorted((fresh ^ committed) | changed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    args = parser.parse_args()
    if args.check:
        stale = stale_stubs()
        if stale:
            print("stale stubs (run scripts/generate_protos.py):", ", ".join(stale))
            return 1
        print("stubs are current")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        generate_python(Path(tmp))
        for name in stub_names(STUB_DIR):
            (STUB_DIR / name).unlink()
        for path in (Path(tmp) / "perdure" / "v1").iterdir():
            if path.name.endswith(STUB_SUFFIXES):
                shutil.copy2(path, STUB_DIR / path.name)
    print(f"wrote {len(stub_names(STUB_DIR))} files to {STUB_DIR.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
