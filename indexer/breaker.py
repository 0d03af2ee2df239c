"""A circuit breaker for the store: once it has not answered, callers fail at once.

A paused or partitioned store does not refuse connections, it stops answering; every call
would then hold a server thread for the whole command timeout, and enough of them starve
the thread pool that `Classify` needs. So the first call that times out opens the circuit:
calls that need the store fail fast with `Unavailable` while one background thread pings
the store, and the first answered ping closes it again. A refused or dropped connection
opens it too, but without failing calls fast (they fail fast by themselves, and the next
may well work). Listeners hear every change: the server's health service tells load
balancers whether writes can work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from indexer.errors import Unavailable

log = logging.getLogger(__name__)

PROBE_INTERVAL_S = 0.25


class CircuitBreaker:
    """Open while the store is known not to answer; closed (calls go through) otherwise."""

    def __init__(self, ping: Callable[[], object], probe_interval_s: float = PROBE_INTERVAL_S):
        """`ping` must raise when the store does not answer (within its own timeout)."""
        self._ping = ping
        self._interval = probe_interval_s
        self._lock = threading.Lock()
        self._open_since: float | None = None
        self._silent = False  # open because the store did not answer: calls fail at once
        self._reason = ""
        self._listeners: list[Callable[[bool], None]] = []
        self._stopped = threading.Event()
        self._prober: threading.Thread | None = None

    @property
    def is_open(self) -> bool:
        return self._open_since is not None

    def on_change(self, listener: Callable[[bool], None]) -> None:
        """Call `listener(available)` on every change, and once now with the current state."""
        with self._lock:
            self._listeners.append(listener)
            available = self._open_since is None
        listener(available)

    def check(self) -> None:
        """Raise `Unavailable` at once while the store is known not to answer."""
        since = self._open_since
        if since is not None and self._silent:
            silent_s = time.monotonic() - since
            raise Unavailable(
                f"the store is unreachable (no answer for {silent_s:.1f} s: {self._reason}); "
                "nothing was written; retry shortly"
            )

    def trip(self, reason: str, silent: bool) -> None:
        """A call failed for want of the store (`silent`: it did not answer in time): open
        the circuit and start probing."""
        with self._lock:
            if self._stopped.is_set():
                return
            self._silent = self._silent or silent
            if self._open_since is not None:
                return
            self._open_since, self._reason = time.monotonic(), reason
            self._prober = threading.Thread(target=self._probe, name="store-probe", daemon=True)
            self._prober.start()
        log.error("the store is unavailable (%s): probing it until it answers", reason)
        self._tell(False)

    def close(self) -> None:
        """Stop probing (the server is shutting down)."""
        self._stopped.set()
        prober = self._prober
        if prober is not None and prober is not threading.current_thread():
            prober.join(timeout=5)

    def _probe(self) -> None:
        wait = 0.0  # at once: a dropped connection is usually back at once
        while not self._stopped.wait(wait):
            wait = self._interval
            try:
                self._ping()
            except Exception as exc:  # any failure means: still not answering
                self._reason = str(exc) or type(exc).__name__
                continue
            with self._lock:
                down_for = time.monotonic() - (self._open_since or time.monotonic())
                self._open_since, self._silent = None, False
            log.warning("the store answers again after %.1f s", down_for)
            self._tell(True)
            return

    def _tell(self, available: bool) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(available)
            except Exception:
                log.exception("a store-availability listener failed")
