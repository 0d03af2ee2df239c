"""The recalibrator's schedule: when it refits, and that it does not refit for ever.

The refit itself (leave-one-shoot-out over real references) is tested end to end in
tests/integration/test_confidence.py; here a stand-in catalogue counts the refits.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from indexer.calibration import REFIT_DUE
from indexer.store import Store
from server.recalibrate import Recalibrator


@dataclass
class _Head:
    categories: frozenset[str]

    def covers(self, categories: frozenset[str]) -> bool:
        return set(categories) == set(self.categories)


@dataclass
class _Calibration:
    head: _Head | None
    extra: dict[str, object] = field(default_factory=dict)


class _Catalog:
    """Names `nameable`; a refit fits the head on the categories with references only."""

    def __init__(self, with_references: set[str], prompt_only: set[str], store: Store) -> None:
        self.store = store  # real: the fleet's refit lease lives there
        self.with_references = with_references
        self.prompt_only = prompt_only
        self.calibration = _Calibration(_Head(frozenset({"old"})))
        self.refits = 0

    def nameable_categories(self) -> set[str]:
        return self.with_references | self.prompt_only

    def calibrate(self, group_by: str | None) -> _Calibration:
        self.refits += 1
        self.calibration = _Calibration(_Head(frozenset(self.with_references)))
        return self.calibration


def _until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Wait for a refit by what it did, not by a fixed sleep: a loaded CI machine can
    leave the recalibrator's thread unscheduled for longer than a quiet period."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the recalibrator did not refit in time"
        time.sleep(0.01)


def _recalibrator(catalog: _Catalog) -> Recalibrator:
    return Recalibrator(catalog, quiet_s=0.05, poll_s=0.01).start()  # type: ignore[arg-type]


def _refits_after_a_first(catalog: _Catalog, then_s: float) -> int:
    """Run the recalibrator until it has refitted once, then `then_s` more (dozens of
    polls); how many refits it made in all."""
    recalibrator = _recalibrator(catalog)
    try:
        _until(lambda: catalog.refits >= 1)
        time.sleep(then_s)
    finally:
        recalibrator.close()
    return catalog.refits


def test_a_changed_category_set_is_refitted_once_it_settles(store: Store) -> None:
    catalog = _Catalog({"shirts", "shoes"}, set(), store)
    # A settled, covered set is not refitted again.
    assert _refits_after_a_first(catalog, then_s=0.5) == 1
    assert catalog.calibration.head is not None
    assert catalog.calibration.head.covers(frozenset({"shirts", "shoes"}))


def test_a_head_that_cannot_cover_the_set_is_not_refitted_again_and_again(store: Store) -> None:
    # A category known from its text prompts alone has no references, so no refit can put
    # it in the head: one attempt per settled set, not one a second.
    catalog = _Catalog({"shirts", "shoes"}, {"scarves"}, store)
    assert _refits_after_a_first(catalog, then_s=0.5) == 1


def test_a_new_set_after_a_refit_gets_its_own_refit(store: Store) -> None:
    catalog = _Catalog({"shirts", "shoes"}, {"scarves"}, store)
    recalibrator = _recalibrator(catalog)
    try:
        _until(lambda: catalog.refits >= 1)
        catalog.with_references.add("hats")
        _until(lambda: catalog.refits >= 2)
        time.sleep(0.3)
    finally:
        recalibrator.close()
    assert catalog.refits == 2


def test_a_dropped_head_is_refitted_once_the_categories_settle(store: Store) -> None:
    """A stored head from before the blend is dropped on load (indexer.calibration): the
    server fits a new one by itself instead of serving the vote alone until someone acts."""
    catalog = _Catalog({"shirts", "shoes"}, set(), store)
    catalog.calibration = _Calibration(None, {REFIT_DUE: True})
    assert _refits_after_a_first(catalog, then_s=0.3) == 1
    assert catalog.calibration.head is not None


def test_a_catalogue_never_calibrated_with_a_head_is_left_alone(store: Store) -> None:
    catalog = _Catalog({"shirts", "shoes"}, set(), store)
    catalog.calibration = _Calibration(None)
    recalibrator = _recalibrator(catalog)
    try:
        time.sleep(0.3)  # dozens of polls
    finally:
        recalibrator.close()
    assert catalog.refits == 0


def test_a_refit_another_server_holds_the_lease_for_is_left_to_it(store: Store) -> None:
    catalog = _Catalog({"shirts", "shoes"}, set(), store)
    assert store.take_lease("recalibrate", 60, "the other server")
    recalibrator = _recalibrator(catalog)
    try:
        time.sleep(0.5)  # many quiet periods
    finally:
        recalibrator.close()
    assert catalog.refits == 0
    store.release_lease("recalibrate", "the other server")
    after = _Catalog({"shirts", "shoes"}, set(), store)
    recalibrator = _recalibrator(after)
    try:
        _until(lambda: after.refits == 1)
    finally:
        recalibrator.close()
    assert store.take_lease("recalibrate", 60, "x")  # given back after the refit
