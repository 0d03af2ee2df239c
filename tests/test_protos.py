"""The committed gRPC stubs match protos/ (run `make protos` after editing a .proto)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.helpers import ROOT


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="needs grpcio-tools")
def test_generated_stubs_are_up_to_date(tmp_path: Path) -> None:
    from scripts.gen_protos import generate

    committed = ROOT / "server" / "proto"
    for fresh in generate(tmp_path):
        relative = fresh.relative_to(tmp_path)
        assert (committed / relative).read_text() == fresh.read_text(), (
            f"server/proto/{relative} is stale: run `make protos`"
        )
