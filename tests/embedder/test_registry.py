"""The model registry's entries: written whole, whoever else writes one at the same time."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

from embedder import create_artifact
from embedder.registry import ModelRegistry
from tests.helpers import tiny_model_config

TINY = tiny_model_config("test-registry-tiny")
RECORDS = 100


def _record_many(root: str, version: str, writer: str, go: Any) -> None:
    registry = ModelRegistry(Path(root))
    go.wait()  # both processes started: record at the same time
    for n in range(RECORDS):
        registry.record_metrics(version, {f"{writer}-{n}": n})


def test_two_processes_recording_metrics_at_once_lose_nothing(tmp_path: Path) -> None:
    """Two servers record metrics into one entry at the same time: every record is kept
    (read, merge and write happen under one lock), and no temporary file is left behind."""
    registry = ModelRegistry(tmp_path / "registry")
    version = registry.register(create_artifact(TINY, tmp_path / "tiny")).version
    context = multiprocessing.get_context("spawn")
    go = context.Event()
    writers = [
        context.Process(target=_record_many, args=(str(registry.root), version, name, go))
        for name in ("first", "second")
    ]
    for writer in writers:
        writer.start()
    time.sleep(3)  # both importing done, waiting at the start line
    go.set()
    for writer in writers:
        writer.join(timeout=120)
        assert writer.exitcode == 0
    assert len(registry.get(version).metrics) == 2 * RECORDS
    assert not list((registry.root / version).glob(".*"))
