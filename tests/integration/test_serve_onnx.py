"""The server serves an exported artifact with ONNX Runtime and refuses a tampered one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import ServerProcess

pytestmark = pytest.mark.integration


def test_the_server_refuses_to_start_with_a_tampered_onnx_model(
    tmp_path: Path, model_artifact: Path
) -> None:
    artifact = Path(shutil.copytree(model_artifact, tmp_path / "model"))
    onnx_model = artifact / "model.onnx"
    data = bytearray(onnx_model.read_bytes())
    data[-100] ^= 0xFF
    onnx_model.write_bytes(bytes(data))
    server = ServerProcess(tmp_path / "data", artifact)
    with pytest.raises(RuntimeError, match="server exited with 2") as info:
        server.start()
    assert f"nearcat: cannot serve the model: {onnx_model} is corrupt or was modified" in str(
        info.value
    )
    assert "Traceback" not in str(info.value)
