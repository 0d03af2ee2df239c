"""Replicas in step: every server follows the store's change stream and applies what other
servers wrote, so that all of them answer alike within about a second.

The store is the truth and every write lands there first (then in the writer's own index),
with an entry on the stream naming the writer (`origin`). A follower reads the stream from
where it stands, skips its own server's entries (already applied) and hands the others to
`Catalog.apply_change`, which brings what it holds of the named category (or calibration)
level with the store: applying an entry twice does no harm. A server whose position fell
out of the stream's retention reloads everything from the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from indexer.errors import NearcatError, Unavailable
from server.catalog import Catalog

log = logging.getLogger("nearcat.follow")

BLOCK_MS = 500  # how long one read waits for new entries
BATCH = 500  # entries per read


class Follower:
    """A daemon thread applying the change stream's entries of other servers."""

    def __init__(self, catalog: Catalog, on_switch: Callable[[str], None] | None = None) -> None:
        """Follows from `catalog.change_position` (read before the catalogue was loaded, so
        nothing written during the load is missed), and moves it on. `on_switch(version)`:
        another server switched the model (the reindexer follows it)."""
        self.catalog = catalog
        self.on_switch = on_switch
        self.applied = 0
        self.reloads = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="follow-changes", daemon=True)

    def start(self) -> Follower:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def step(self, block_ms: int = BLOCK_MS) -> int:
        """Apply what is new on the stream (waiting up to `block_ms` for it); returns how
        many entries of other servers were applied."""
        store = self.catalog.store
        if not store.change_retained(self.catalog.change_position):
            log.warning(
                "this server fell behind the change stream's retention (at %s): reloading "
                "the catalogue from the store",
                self.catalog.change_position,
            )
            self.catalog.change_position = store.last_change_id()
            self.catalog.reload()
            self.reloads += 1
            return 0
        entries = store.read_changes(self.catalog.change_position, block_ms, BATCH)
        applied = 0
        for entry_id, fields in entries:
            if fields.get("origin") != store.origin:
                self._apply(entry_id, fields)
                applied += 1
            self.catalog.change_position = entry_id
        self.applied += applied
        return applied

    def _apply(self, entry_id: str, fields: dict[str, str]) -> None:
        try:
            if fields.get("op") == "switch_model":
                if self.on_switch is not None:
                    self.on_switch(fields["active"])
            else:
                self.catalog.apply_change(fields)
        except Unavailable:
            raise  # not applied: the next step reads the entry again
        except Exception:  # noqa: BLE001 - one entry that cannot be applied must not stop the rest
            log.exception("could not apply change %s (%s); going on", entry_id, fields.get("op"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
                self.last_error = ""
            except NearcatError as exc:  # the store away: try again shortly
                if str(exc) != self.last_error:
                    log.warning("cannot follow the change stream: %s", exc)
                self.last_error = str(exc)
                self._stop.wait(1.0)
