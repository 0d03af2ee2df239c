"""The embedded Valkey: acknowledged writes survive kills; one owner per data dir."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from indexer.embedded import DataDirInUse, EmbeddedValkey

# A nearcat-like owner: starts the embedded Valkey, writes, says its Valkey's pid, waits.
OWNER = """
import sys, time
from pathlib import Path
from indexer.embedded import EmbeddedValkey
client = EmbeddedValkey(Path(sys.argv[1])).start()
client.set("kept", "yes")
print(client.info("server")["process_id"], flush=True)
time.sleep(120)
"""


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
    # An owner process SIGKILLed: its lock goes with it, its Valkey keeps running.
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    orphan_pid = int(owner.stdout.readline())
    owner.kill()
    owner.wait()

    heir = EmbeddedValkey(tmp_path)
    client = heir.start()
    try:
        assert valkey_pid(client) != orphan_pid
        assert client.get("kept") == b"yes"
        assert "left running by a previous nearcat" in caplog.text
    finally:
        heir.stop()
