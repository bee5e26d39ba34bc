"""Regenerate the committed stubs from proto/ (or check that they are current), for every SDK.

    python scripts/generate_protos.py                # rewrite the Python and the Node.js stubs
    python scripts/generate_protos.py --lang node    # only one language (python, node)
    python scripts/generate_protos.py --check        # exit 1 if any committed stubs are stale

Python: sdk_python/perdure/v1/*_pb2*.py[i], by grpcio-tools and mypy-protobuf (the `dev` extra).
Node.js: sdk_examples/node/gen/perdure/v1/*_pb.{js,d.ts}, by @bufbuild/protoc-gen-es (pinned in
sdk_examples/node/package-lock.json, installed with `npm ci`, which this script runs when it is
missing) through the same protoc as Python's, so both come from one compiler. The Node.js check
is skipped, saying so, only where Node.js or npm is not installed.

Go and Java stubs are made with their standard plugins: see docs/other-languages.md.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PYTHON_OUT = ROOT / "sdk_python"
STUB_DIR = PYTHON_OUT / "perdure" / "v1"
STUB_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")
NODE_SDK = ROOT / "sdk_examples" / "node"
NODE_STUB_DIR = NODE_SDK / "gen" / "perdure" / "v1"
NODE_SUFFIXES = ("_pb.js", "_pb.d.ts")
# CommonJS, so that both `require` and `import` can load the SDK on Node.js 20.
NODE_OPTIONS = "target=js+dts,js_import_style=legacy_commonjs,import_extension=js"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "perdure" / "v1").glob("*.proto"))


def protoc(*options: str) -> None:
    """Run grpcio-tools' protoc (pinned in the `dev` extra) over every proto file."""
    import grpc_tools

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    command = [
        sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", *options,
        *(str(p.relative_to(PROTO_ROOT)) for p in proto_files()),
    ]
    subprocess.run(command, check=True, cwd=ROOT)


def generate_python(out: Path) -> None:
    """Write the stubs for every proto file under `out` (a package root)."""
    # mypy-protobuf's plugins sit beside this interpreter, which may not be on PATH.
    scripts = Path(sys.executable).parent
    protoc(
        f"--python_out={out}", f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}", f"--mypy_grpc_out={out}",
    )


def node_missing() -> str | None:
    """Why the Node.js stubs cannot be made here, or None."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found" if missing else None


def generate_node(out: Path) -> None:
    """Write the Node.js stubs (JavaScript with TypeScript declarations) under `out`."""
    plugin = NODE_SDK / "node_modules" / ".bin" / "protoc-gen-es"
    if not plugin.exists():
        print("installing the pinned Node.js generator (npm ci in sdk_examples/node)", flush=True)
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=NODE_SDK, check=True)
    protoc(f"--plugin=protoc-gen-es={plugin}", f"--es_out={out}", f"--es_opt={NODE_OPTIONS}")


@dataclass(frozen=True)
class Language:
    generate: Callable[[Path], None]
    committed: Path  # where the stubs live in the repository
    suffixes: tuple[str, ...]
    missing: Callable[[], str | None] = lambda: None

    def names(self, directory: Path) -> set[str]:
        if not directory.is_dir():
            return set()
        return {p.name for p in directory.iterdir() if p.name.endswith(self.suffixes)}

    def fresh(self, tmp: Path) -> Path:
        """Generate into `tmp`; returns the directory that corresponds to `committed`."""
        self.generate(tmp)
        return tmp / "perdure" / "v1"

    def stale(self) -> list[str]:
        """The stub files that differ from a fresh generation (missing, extra or changed)."""
        with tempfile.TemporaryDirectory() as tmp:
            fresh_dir = self.fresh(Path(tmp))
            fresh, committed = self.names(fresh_dir), self.names(self.committed)
            changed = {
                name for name in fresh & committed
                if not filecmp.cmp(fresh_dir / name, self.committed / name, shallow=False)
            }
            return sorted((fresh ^ committed) | changed)

    def write(self) -> int:
        with tempfile.TemporaryDirectory() as tmp:
            fresh_dir = self.fresh(Path(tmp))
            self.committed.mkdir(parents=True, exist_ok=True)
            for name in self.names(self.committed):
                (self.committed / name).unlink()
            for name in self.names(fresh_dir):
                shutil.copy2(fresh_dir / name, self.committed / name)
        return len(self.names(self.committed))


LANGUAGES = {
    "python": Language(generate_python, STUB_DIR, STUB_SUFFIXES),
    "node": Language(generate_node, NODE_STUB_DIR, NODE_SUFFIXES, node_missing),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale stubs")
    parser.add_argument("--lang", choices=[*LANGUAGES, "all"], default="all", help="which stubs (default: all)")
    args = parser.parse_args()
    chosen = list(LANGUAGES) if args.lang == "all" else [args.lang]
    status = 0
    for name in chosen:
        language = LANGUAGES[name]
        if reason := language.missing():
            if args.lang != "all":
                print(f"{name}: cannot generate the stubs: {reason}")
                return 1
            print(f"{name}: skipped, {reason}")
            continue
        where = language.committed.relative_to(ROOT)
        if args.check:
            stale = language.stale()
            if stale:
                print(f"{name}: stale stubs in {where} (run scripts/generate_protos.py):", ", ".join(stale))
                status = 1
            else:
                print(f"{name}: stubs are current")
        else:
            print(f"{name}: wrote {language.write()} files to {where}")
    return status


if __name__ == "__main__":
    sys.exit(main())
