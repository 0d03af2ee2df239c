"""Fixtures shared by the whole suite: a real Valkey and the packaged model artifact."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from indexer.blobs import DirBlobs
from indexer.embedded import EmbeddedValkey
from indexer.store import Store
from tests.helpers import ExternalValkey


@pytest.fixture(scope="session")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[redis.Redis]:
    """One embedded Valkey for the session; tests isolate themselves by key prefix."""
    embedded = EmbeddedValkey(tmp_path_factory.mktemp("valkey"))
    client = embedded.start()
    yield client
    embedded.stop()


@pytest.fixture
def store(valkey: redis.Redis, tmp_path: Path) -> Store:
    return Store(valkey, prefix=f"test-{uuid.uuid4().hex[:8]}", blobs=DirBlobs(tmp_path / "blobs"))


@pytest.fixture(scope="session")
def model_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged default model, materialised once per session."""
    from embedder import resolve_model

    return resolve_model("efficientnet_lite0", tmp_path_factory.mktemp("models"))


@pytest.fixture
def external(tmp_path: Path) -> Iterator[ExternalValkey]:
    """A Valkey of its own on a loopback port, which the test may stop, pause and restart."""
    valkey = ExternalValkey(tmp_path / "valkey")
    valkey.data_dir.mkdir()
    valkey.start()
    yield valkey
    valkey.stop()
