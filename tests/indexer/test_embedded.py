"""The embedded Valkey: acknowledged writes survive kills; one owner per data dir."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from indexer.embedded import DataDirInUse, EmbeddedValkey


def valkey_pid(client) -> int:  # type: ignore[no-untyped-def]
    return int(client.info("server")["process_id"])


def test_acknowledged_writes_survive_a_killed_valkey(tmp_path: Path) -> None:
    first = EmbeddedValkey(tmp_path)
    client = first.start()
    with client.pipeline(transaction=True) as pipe:
        pipe.set("a", "1").hset("h", mapping={"x": "y"}).execute()
    os.kill(valkey_pid(client), signal.SIGKILL)  # no shutdown, no final fsync
    first.stop()

    second = EmbeddedValkey(tmp_path)
    client = second.start()
    try:
        assert client.get("a") == b"1"
        assert client.hgetall("h") == {b"x": b"y"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
    finally:
        second.stop()


def test_a_second_owner_of_the_data_dir_is_refused(tmp_path: Path) -> None:
    owner = EmbeddedValkey(tmp_path)
    owner.start()
    try:
        with pytest.raises(DataDirInUse, match=f"pid {os.getpid()}"):
            EmbeddedValkey(tmp_path).start()
    finally:
        owner.stop()


def test_a_valkey_orphaned_by_a_dead_owner_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = EmbeddedValkey(tmp_path)
    client = dead.start()
    client.set("kept", "yes")
    orphan_pid = valkey_pid(client)
    # As if the owner were SIGKILLed: its lock is released, its Valkey keeps running.
    dead._lock_file.close()  # type: ignore[union-attr]
    dead._lock_file = None

    heir = EmbeddedValkey(tmp_path)
    client = heir.start()
    try:
        assert valkey_pid(client) != orphan_pid
        assert client.get("kept") == b"yes"
        assert "left running by a previous nearcat" in caplog.text
    finally:
        heir.stop()
