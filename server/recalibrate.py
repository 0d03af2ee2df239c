"""Refit the calibration by itself once the catalogue's categories have changed and settled.

The head only knows the categories it was fitted on (indexer/head.py): a category added since
competes by its vote alone, and the calibration's threshold was earned without it, until
someone runs `nearcat calibrate`. This thread watches the categories an answer can name. When
they differ from the head's and have not changed for `quiet_s` seconds, it refits the
calibration, as it was last fitted (the same group key). An import of many categories thus
refits once, at its end. A stored calibration of an older format (not read, `REFIT_DUE`) is
refitted the same way, once the categories have been quiet for `quiet_s` after the start.
"""

from __future__ import annotations

import logging
import threading
import time

from indexer.calibration import REFIT_DUE
from indexer.errors import NearcatError
from server.catalog import Catalog

log = logging.getLogger("nearcat.recalibrate")

LEASE_S = 600.0  # longer than a refit takes; released when it ends


class Recalibrator:
    """A daemon thread that refits a stale calibration after `quiet_s` quiet seconds."""

    def __init__(self, catalog: Catalog, quiet_s: float, poll_s: float = 1.0) -> None:
        self.catalog = catalog
        self.quiet_s = quiet_s
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="recalibrate", daemon=True)

    def start(self) -> Recalibrator:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        seen: frozenset[str] | None = None
        since = time.monotonic()
        # One refit per settled set of categories, whatever its outcome: a head can stay short
        # of the set for good (a category known from text prompts alone has no references to
        # fit on), and refitting again would only repeat a costly leave-one-shoot-out.
        attempted: frozenset[str] | None = None
        while not self._stop.wait(self.poll_s):
            calibration = self.catalog.calibration
            head = calibration.head
            if head is None and not calibration.extra.get(REFIT_DUE):
                continue  # never calibrated with a head: nothing to keep current
            current = frozenset(self.catalog.nameable_categories())
            if current != seen:
                seen, since = current, time.monotonic()
                continue
            settled = time.monotonic() - since >= self.quiet_s
            if settled and current != attempted and (head is None or not head.covers(current)):
                attempted = current
                self._refit()

    def _refit(self) -> None:
        group_by = self.catalog.calibration.extra.get("group_by")
        store = self.catalog.store
        try:
            # Once for the fleet: replicas see the same categories settle and race for one
            # lease; the others get the refit through the change stream (server.follower).
            if not store.take_lease("recalibrate", LEASE_S, store.origin):
                log.info("categories changed: another server is refitting the calibration")
                return
            try:
                calibration = self.catalog.calibrate(group_by)
            finally:
                store.release_lease("recalibrate", store.origin)
        except NearcatError as exc:
            log.warning("categories changed, but the calibration could not be refitted: %s", exc)
            return
        log.info(
            "categories changed: calibration refitted by itself (%d categories in the head)",
            len(calibration.head.categories) if calibration.head else 0,
        )
