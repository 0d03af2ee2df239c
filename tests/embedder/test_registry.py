"""The model registry's entries: written whole, whoever else writes one at the same time."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from embedder import ModelConfig, PreprocessConfig, create_artifact
from embedder.registry import ModelRegistry

TINY = ModelConfig(
    name="test-registry-tiny",
    family="timm",
    architecture="test_efficientnet",
    embedding_dim=256,
    preprocess=PreprocessConfig(input_size=64),
    weights="random",
)


def test_two_writers_of_an_entry_never_share_a_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second server records metrics while the first is mid-write: neither write fails, and
    the entry is the last one renamed into place, whole."""
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(create_artifact(TINY, tmp_path / "tiny")).version
    real_fsync = os.fsync
    interrupted: list[int] = []

    def fsync_while_another_writes(fd: int) -> None:
        if not interrupted:
            interrupted.append(fd)
            registry.record_metrics(version, {"second": 2})
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_while_another_writes)
    registry.record_metrics(version, {"first": 1})
    assert registry.get(version).metrics == {"first": 1}
    assert not list((registry.root / version).glob(".*"))  # no temporary file left behind
