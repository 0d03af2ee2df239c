"""The store's circuit breaker against a real, paused Valkey."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from indexer.blobs import DirBlobs
from indexer.embedded import dropped_connection_retry
from indexer.errors import Unavailable
from indexer.store import Store
from tests.helpers import ExternalValkey

TIMEOUT_S = 0.5


def timed(call: object) -> float:
    started = time.monotonic()
    with pytest.raises(Unavailable, match="store is unreachable"):
        call()  # type: ignore[operator]
    return time.monotonic() - started


def test_a_silent_store_fails_fast_after_one_timeout_and_recovers(
    external: ExternalValkey, tmp_path: Path
) -> None:
    client = redis.Redis(
        port=external.port,
        socket_timeout=TIMEOUT_S,
        socket_connect_timeout=TIMEOUT_S,
        retry=dropped_connection_retry(),
    )
    store = Store(client, "breaker", blobs=DirBlobs(tmp_path))
    heard: list[bool] = []
    store.breaker.on_change(heard.append)
    store.create_category("Shoes", None, {}, [], "v1")
    pid = int(client.info("server")["process_id"])
    os.kill(pid, signal.SIGSTOP)
    try:
        first = timed(store.category_names)
        assert TIMEOUT_S * 0.8 <= first <= TIMEOUT_S * 3, first  # waited out one timeout
        assert timed(store.category_names) < 0.05  # then at once, reads and writes alike
        assert timed(lambda: store.create_category("Bags", None, {}, [], "v1")) < 0.05
        assert heard == [True, False]
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 5
    while store.breaker.is_open:
        assert time.monotonic() < deadline, "the breaker did not close"
        time.sleep(0.05)
    assert store.category_names() == ["Shoes"]
    assert heard == [True, False, True]
    store.breaker.close()


def test_a_stopped_store_is_reported_but_each_call_still_tries(
    external: ExternalValkey, tmp_path: Path
) -> None:
    """Refused connections fail fast by themselves; the breaker only reports them (health),
    and the first call after the store is back works."""
    client = redis.Redis(port=external.port, retry=dropped_connection_retry())
    store = Store(client, "breaker", blobs=DirBlobs(tmp_path))
    heard: list[bool] = []
    store.breaker.on_change(heard.append)
    external.stop()
    assert timed(store.category_names) < 2
    assert heard == [True, False]
    external.start()
    assert store.category_names() == []  # no wait for the prober
    store.breaker.close()
