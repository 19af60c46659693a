"""Regenerate (or check) the committed gRPC stubs under ``voxgrid/v1/`` from ``protos/``.

The stubs are committed so that a service image needs no code generation step; this module is the
one command that rewrites them, and ``--check`` is what the drift test runs.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUT_PACKAGE = Path("voxgrid") / "v1"


def generate(out_root: Path) -> list[Path]:
    """Run protoc (python, grpc, mypy .pyi) for every .proto into ``out_root``; return files written."""
    from grpc_tools import protoc  # imported late: only developers need grpcio-tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / OUT_PACKAGE).glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT / OUT_PACKAGE}")
    include = str(Path(protoc.__file__).parent / "_proto")
    # google/rpc/status.proto (SessionNotice.status) ships in googleapis-common-protos, next to its stubs.
    from google.rpc import status_pb2

    googleapis = str(Path(status_pb2.__file__).parent.parent.parent)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"-I{googleapis}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        f"--mypy_out={out_root}",
        f"--mypy_grpc_out={out_root}",
        *protos,
    ]
    # protoc finds the mypy plugins on PATH; they live beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed (see the messages above)")
    out_dir = out_root / OUT_PACKAGE
    (out_dir / "__init__.py").write_text('"""Generated gRPC stubs for voxgrid.v1 (python -m voxgrid.protogen)."""\n')
    return sorted(p for p in out_dir.iterdir() if p.is_file())


def drift(committed: Path = ROOT / OUT_PACKAGE) -> list[str]:
    """Names of generated files that differ from (or are missing in) the committed stubs."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh} | {p.name for p in committed.glob("*.py*")}
        fresh_dir = Path(tmp) / OUT_PACKAGE
        return sorted(
            n
            for n in names
            if not (fresh_dir / n).exists()
            or not (committed / n).exists()
            or not filecmp.cmp(fresh_dir / n, committed / n, shallow=False)
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if committed stubs drift from protos/")
    args = parser.parse_args(argv)
    if args.check:
        changed = drift()
        if changed:
            print("stubs out of date, run `python -m voxgrid.protogen`: " + ", ".join(changed), file=sys.stderr)
            return 1
        print("stubs match protos/")
        return 0
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
