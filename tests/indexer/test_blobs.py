"""Reference images in the blob store: written before the reference, deleted after it, never
orphaned for good, migrated out of Redis, and bound to the store that records them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import redis

from indexer.blobs import DirBlobs, open_blobs
from indexer.errors import AlreadyExists
from indexer.store import LABELLED_BLOB, BlobStoreMismatch, LabelledPhoto, Store, bind_blobs
from tests.indexer.test_store import new_ref

VERSION = "v1"


def files(store: Store) -> list[str]:
    blobs = store.blobs
    assert isinstance(blobs, DirBlobs)
    return [k for k in blobs.stored_keys() if k != "nearcat-blobs-id"]


def test_images_live_in_the_blob_store_not_in_redis(store: Store, valkey: redis.Redis) -> None:
    a, b = new_ref("Shoes", b"a" * 100), new_ref("Shoes", b"b" * 100)
    store.create_category("Shoes", None, {}, [a], VERSION)
    assert store.add_references("Shoes", [b, a], VERSION) == [False, True]  # a: a duplicate
    assert store.get_image(a.id) == a.image and store.get_image(b.id) == b.image
    keys = store.image_keys([a.id, b.id, "Shoes:unknown"])
    assert sorted(keys) == sorted([a.id, b.id])
    assert sorted(files(store)) == sorted(keys.values())  # the duplicate's copy is gone
    assert not list(valkey.scan_iter(match=store.key("img", "*")))
    assert valkey.zcard(store.key("blobs", "unsure")) == 0


def test_a_refused_write_leaves_no_bytes(store: Store) -> None:
    store.create_category("Shoes", None, {}, [], VERSION)
    with pytest.raises(AlreadyExists):
        store.create_category("Shoes", None, {}, [new_ref("Shoes", b"x")], VERSION)
    assert files(store) == []


def test_removals_delete_the_bytes(store: Store) -> None:
    refs = [new_ref("Shoes", bytes([i]) * 10) for i in range(3)]
    store.create_category("Shoes", None, {}, refs, VERSION)
    store.remove_references([refs[0].id])
    assert len(files(store)) == 2
    store.delete_category("Shoes")
    assert files(store) == []


class FailingDeletes(DirBlobs):
    """A blob store whose deletes fail, as when the process dies right before them."""

    def delete(self, keys: Iterable[str]) -> None:
        raise OSError("disk gone")


def test_sweep_finds_what_a_crash_left(store: Store, valkey: redis.Redis, tmp_path: Path) -> None:
    kept = new_ref("Shoes", b"kept")
    store.create_category("Shoes", None, {}, [kept], VERSION)
    # Died after writing the bytes, before recording the reference:
    store._stage({"00000000000000dd": b"never recorded"})
    # Died after a removal's transaction, before deleting its bytes:
    gone = new_ref("Shoes", b"removed")
    store.add_references("Shoes", [gone], VERSION)
    dying = Store(valkey, store.prefix, blobs=FailingDeletes(tmp_path / "blobs"))
    assert dying.remove_references([gone.id])[0].id == gone.id  # done, bytes left to the sweep
    assert len(files(store)) == 3
    assert store.sweep_blobs(older_than_s=3600) == 1  # the removal's: no write is in flight
    assert store.sweep_blobs(older_than_s=0) == 1  # the staged one, once old enough
    assert files(store) == [store.image_keys([kept.id])[kept.id]]
    assert store.get_image(kept.id) == kept.image


def test_images_kept_in_redis_by_earlier_versions_migrate(
    store: Store, valkey: redis.Redis
) -> None:
    refs = [new_ref("Shoes", bytes([i]) * 50) for i in range(5)]
    store.create_category("Shoes", None, {}, refs, VERSION)
    for ref in refs:  # as an earlier version stored them
        key = store.image_keys([ref.id])[ref.id]
        store.blobs.delete([key])
        valkey.hdel(store.key("ref", ref.id), "blob")
        valkey.set(store.key("img", ref.id), ref.image)
    valkey.set(store.key("img", "Shoes:removed-long-ago"), b"orphan")
    assert store.migrate_images(batch=2) == 5
    assert not list(valkey.scan_iter(match=store.key("img", "*")))
    assert all(store.get_image(r.id) == r.image for r in refs)
    assert len(files(store)) == 5
    assert store.migrate_images() == 0  # idempotent


def test_labelled_photos_kept_in_redis_migrate_and_a_crash_left_copy_is_swept(
    store: Store, valkey: redis.Redis
) -> None:
    photo = LabelledPhoto("00000000000000aa", "Shoes", "review", "ab" * 32, b"labelled bytes")
    store.add_labelled([photo], VERSION, [np.ones(4)])
    [key] = files(store)
    store.blobs.delete([key])  # as an earlier version stored it:
    valkey.hdel(store.key("lab", photo.id), "blob")
    valkey.set(store.key("limg", photo.id), photo.image)
    valkey.set(store.key("limg", "00000000000000bb"), b"no such photo")
    assert store.migrate_images() == 1
    assert not list(valkey.scan_iter(match=store.key("limg", "*")))
    assert store.get_labelled_image(photo.id) == photo.image
    # Died after writing a labelled photo's bytes, before recording it:
    store._stage({"00000000000000cc": b"never recorded"}, LABELLED_BLOB)
    assert len(files(store)) == 2
    assert store.sweep_blobs(older_than_s=0) == 1
    assert store.get_labelled_image(photo.id) == photo.image


def test_a_store_refuses_another_blob_store(valkey: redis.Redis, tmp_path: Path) -> None:
    prefix = "bind-test"
    first = bind_blobs(valkey, prefix, None, str(tmp_path / "a"))
    assert first.url == (tmp_path / "a").resolve().as_uri()
    again = bind_blobs(valkey, prefix, None, str(tmp_path / "elsewhere"))  # recorded wins
    assert again.url == first.url
    (tmp_path / "link").symlink_to(tmp_path / "a")  # the same place by another name
    assert bind_blobs(valkey, prefix, str(tmp_path / "link"), "unused").get("nearcat-blobs-id")
    with pytest.raises(BlobStoreMismatch, match=r"give --blob-url the same place"):
        bind_blobs(valkey, prefix, str(tmp_path / "b"), "unused")
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        open_blobs("ftp://host/x")
