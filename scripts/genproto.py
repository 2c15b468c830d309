"""Regenerate the committed Python stubs in gpufleet/v1/ from proto/gpufleet/v1/*.proto.

Usage: python scripts/genproto.py [--out DIR]   (DIR defaults to the repository root)
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import grpc_tools
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent


def generate(out: pathlib.Path) -> None:
    protos = sorted((ROOT / "proto").rglob("*.proto"))
    include = pathlib.Path(grpc_tools.__file__).parent / "_proto"
    (out / "gpufleet" / "v1").mkdir(parents=True, exist_ok=True)
    args = [
        "protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(ROOT / "proto")) for p in protos],
    ]
    # protoc resolves relative proto names against -I; run from the proto dir's view.
    rc = protoc.main(args)
    if rc != 0:
        sys.exit(f"protoc failed with exit code {rc}")
    init = out / "gpufleet" / "v1" / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf stubs for the gpufleet.v1 API (scripts/genproto.py)."""\n')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=pathlib.Path, default=ROOT)
    generate(ap.parse_args().out)


if __name__ == "__main__":
    main()
