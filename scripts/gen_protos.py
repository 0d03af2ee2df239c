"""Generate the Python gRPC stubs from protos/ into server/proto/.

The stubs are committed so that clients and the server import without a build step;
`tests/test_protos.py` fails when they drift from the .proto files. Run `make protos`
after editing a .proto.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = "server.proto"


def generate(out_dir: Path) -> list[Path]:
    """Compile every .proto under protos/ into out_dir; return the files written."""
    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(p.relative_to(PROTO_ROOT)) for p in protos),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    written = sorted(p for p in out_dir.rglob("*") if p.suffix in {".py", ".pyi"})
    for path in written:
        # protoc writes absolute imports ("from nearcat.v1 import ..."); anchor them in our package.
        text = re.sub(r"^from nearcat\.", f"from {PACKAGE}.nearcat.", path.read_text(), flags=re.M)
        path.write_text(text)
    for folder in {p.parent for p in written} | {out_dir}:
        init = folder / "__init__.py"
        while folder != out_dir.parent and not init.exists():
            init.write_text("")
            folder = folder.parent
            init = folder / "__init__.py"
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "server" / "proto")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for path in generate(out):
        print(path.relative_to(out.parent), file=sys.stderr)


if __name__ == "__main__":
    main()
