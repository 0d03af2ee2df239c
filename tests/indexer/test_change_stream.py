"""Following the store's change stream: positions, reads, lag, and trimming detected."""

from __future__ import annotations

import redis

from indexer.store import Store


def test_entries_name_their_writer_and_are_read_after_a_position(store: Store) -> None:
    assert store.last_change_id() == "0-0" and store.change_retained("0-0")
    store.create_category("a", None, {}, [], "v1")
    position = store.last_change_id()
    store.create_category("b", None, {}, [], "v1")
    store.put_calibration("v1", {"format": 2})
    [(first_id, first), (_, second)] = store.read_changes(position, 0, 10)
    assert (first["op"], first["category"], first["origin"]) == ("add_category", "b", store.origin)
    assert (second["op"], second["version"]) == ("calibration", "v1")
    behind, oldest_ms = store.changes_after(position)
    assert behind == 2 and oldest_ms == int(first_id.split("-")[0])
    assert store.changes_after(store.last_change_id()) == (0, 0)
    assert store.read_changes(store.last_change_id(), 0, 10) == []


def test_a_position_trimmed_away_is_not_retained(store: Store, valkey: redis.Redis) -> None:
    store.create_category("a", None, {}, [], "v1")
    position = store.last_change_id()
    store.create_category("b", None, {}, [], "v1")
    assert store.change_retained(position) and store.change_retained("0-0")
    valkey.xtrim(store.key("changes"), maxlen=0)
    assert not store.change_retained(position) and not store.change_retained("0-0")
    newest = store.last_change_id()  # still known after the trim: a place to go on from
    assert newest != "0-0" and store.change_retained(newest)


def test_a_lease_is_held_by_one_holder_at_a_time(store: Store) -> None:
    assert store.take_lease("recalibrate", 60, "a")
    assert not store.take_lease("recalibrate", 60, "b")
    store.release_lease("recalibrate", "b")  # not b's to give back
    assert not store.take_lease("recalibrate", 60, "b")
    store.release_lease("recalibrate", "a")
    assert store.take_lease("recalibrate", 60, "b")
