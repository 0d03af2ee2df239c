"""The store against a real Valkey: atomic writes, duplicates, errors that change nothing."""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from indexer.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from indexer.ids import image_sha256, reference_id
from indexer.store import NewReference, Store

VERSION = "model-a"


def new_ref(category: str, content: bytes, dim: int = 4) -> NewReference:
    sha = image_sha256(content)
    vector = np.random.default_rng(len(content)).standard_normal(dim).astype(np.float32)
    return NewReference(reference_id(category, sha), sha, content, vector, {"src": "test"})


def snapshot(client: redis.Redis, store: Store) -> dict[bytes, bytes]:
    """Every key of this store with its type and length, to prove nothing changed."""
    keys = sorted(client.scan_iter(match=store.key_pattern))
    return {k: client.type(k) + b":" + str(client.memory_usage(k)).encode() for k in keys}


def test_create_category_with_references_round_trips(store: Store) -> None:
    refs = [new_ref("Shoes", b"a"), new_ref("Shoes", b"b")]
    category, duplicate = store.create_category("Shoes", None, {"team": "x"}, refs, VERSION)
    assert (category.name, category.reference_count, duplicate) == ("Shoes", 2, [False, False])
    stored = store.get_category("Shoes")
    assert stored is not None
    assert stored.metadata == {"team": "x"} and stored.reference_count == 2
    assert store.get_image(refs[0].id) == b"a"
    [batch] = list(store.iter_vectors(VERSION))
    by_id = dict(zip(batch.reference_ids, batch.vectors, strict=True))
    np.testing.assert_array_equal(by_id[refs[1].id], refs[1].vector)
    assert batch.categories == ["Shoes", "Shoes"]


def test_existing_category_is_refused_and_nothing_changes(
    store: Store, valkey: redis.Redis
) -> None:
    store.create_category("Shoes", None, {}, [new_ref("Shoes", b"a")], VERSION)
    before = snapshot(valkey, store)
    with pytest.raises(AlreadyExists, match="already exists"):
        store.create_category("Shoes", None, {}, [new_ref("Shoes", b"z")], VERSION)
    assert snapshot(valkey, store) == before


def test_unknown_parent_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound, match="parent category 'Fruit'"):
        store.create_category("Apple", "Fruit", {}, [], VERSION)
    assert store.category_names() == []


def test_duplicates_are_not_stored_twice(store: Store) -> None:
    store.create_category("Shoes", None, {}, [new_ref("Shoes", b"a")], VERSION)
    duplicate = store.add_references(
        "Shoes", [new_ref("Shoes", b"a"), new_ref("Shoes", b"b"), new_ref("Shoes", b"b")], VERSION
    )
    assert duplicate == [True, False, True]
    assert store.get_category("Shoes").reference_count == 2  # type: ignore[union-attr]


def test_same_image_in_two_categories_is_two_references(store: Store, valkey: redis.Redis) -> None:
    store.create_category("A", None, {}, [new_ref("A", b"same")], VERSION)
    store.create_category("B", None, {}, [new_ref("B", b"same")], VERSION)
    assert store.reference_ids("A") != store.reference_ids("B")


def test_add_to_unknown_category_changes_nothing(store: Store, valkey: redis.Redis) -> None:
    before = snapshot(valkey, store)
    with pytest.raises(NotFound, match="create it with AddCategory"):
        store.add_references("Nope", [new_ref("Nope", b"a")], VERSION)
    assert snapshot(valkey, store) == before


def test_remove_with_one_unknown_id_removes_nothing(store: Store, valkey: redis.Redis) -> None:
    refs = [new_ref("Shoes", b"a"), new_ref("Shoes", b"b")]
    store.create_category("Shoes", None, {}, refs, VERSION)
    before = snapshot(valkey, store)
    with pytest.raises(NotFound, match="nothing was removed"):
        store.remove_references([refs[0].id, "00000000deadbeef"])
    assert snapshot(valkey, store) == before
    removed = store.remove_references([refs[0].id])
    assert [r.id for r in removed] == [refs[0].id]
    assert store.reference_ids("Shoes") == [refs[1].id]
    assert store.get_image(refs[0].id) is None
    [batch] = list(store.iter_vectors(VERSION))
    assert batch.reference_ids == [refs[1].id]


def test_delete_category_with_children_is_refused(store: Store) -> None:
    store.create_category("Fruit", None, {}, [], VERSION)
    store.create_category("Apple", "Fruit", {}, [new_ref("Apple", b"a")], VERSION)
    with pytest.raises(FailedPrecondition, match="delete them first"):
        store.delete_category("Fruit")
    removed = store.delete_category("Apple")
    assert len(removed) == 1
    store.delete_category("Fruit")  # Apple is no longer its child
    assert store.category_names() == []
    assert list(store.iter_vectors(VERSION)) == []


def test_every_catalogue_write_is_on_the_change_stream(store: Store) -> None:
    ref = new_ref("Shoes", b"a")
    store.create_category("Shoes", None, {}, [ref], VERSION)
    store.add_references("Shoes", [new_ref("Shoes", b"b")], VERSION)
    store.add_references("Shoes", [ref], VERSION)  # duplicate only: nothing written
    store.remove_references([ref.id])
    store.delete_category("Shoes")
    ops = [change["op"] for change in store.changes()]
    assert ops == ["add_category", "add_references", "remove_references", "delete_category"]


def test_iter_vectors_finds_the_references_without_a_vector_of_a_new_model(
    store: Store,
) -> None:
    refs = sorted([new_ref("Shoes", b"a"), new_ref("Shoes", b"b")], key=lambda r: r.id)
    store.create_category("Shoes", None, {}, refs, VERSION)
    [batch] = store.iter_vectors(VERSION)
    assert batch.missing_ids == []
    [batch] = store.iter_vectors("model-b")
    assert (batch.reference_ids, batch.missing_ids) == ([], [r.id for r in refs])
    store.put_vectors("model-b", {refs[0].id: np.ones(4, np.float32)})
    [batch] = store.iter_vectors("model-b")
    assert (batch.reference_ids, batch.missing_ids) == ([refs[0].id], [refs[1].id])


def test_concurrent_adds_keep_exact_counts(store: Store) -> None:
    store.create_category("Shoes", None, {}, [], VERSION)
    contents = [f"image-{i}".encode() for i in range(40)]

    def add(chunk: list[bytes]) -> None:
        for content in chunk:  # overlapping chunks: every image is added by two threads
            store.add_references("Shoes", [new_ref("Shoes", content)], VERSION)

    threads = [threading.Thread(target=add, args=(contents[i : i + 20],)) for i in range(0, 40, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert store.get_category("Shoes").reference_count == 40  # type: ignore[union-attr]


class ExecReplyDropper:
    """A TCP proxy to the test Valkey that, once armed, passes the next EXEC on and hangs up
    instead of passing its reply back: the write is applied, the writer never hears so."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.armed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(self.socket_path)
        exec_sent = False
        with client, upstream:
            while True:
                readable, _, _ = select.select([client, upstream], [], [])
                if client in readable:
                    data = client.recv(65536)
                    if not data:
                        return
                    upstream.sendall(data)
                    if self.armed.is_set() and b"$4\r\nEXEC\r\n" in data:
                        self.armed.clear()
                        exec_sent = True
                if upstream in readable:
                    data = upstream.recv(65536)
                    if not data or exec_sent:  # the reply to EXEC: hang up instead
                        return
                    client.sendall(data)


@pytest.fixture
def lossy(valkey: redis.Redis, store: Store) -> Iterator[tuple[Store, ExecReplyDropper]]:
    """`store`'s keys reached through an ExecReplyDropper, with nearcat's retry policy."""
    proxy = ExecReplyDropper(valkey.connection_pool.connection_kwargs["path"])
    client = redis.Redis(
        port=proxy.port,
        socket_timeout=10.0,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )
    yield Store(client, prefix=store.prefix, blobs=store.blobs), proxy
    client.close()
    proxy.close()


def test_a_lost_reply_to_create_category_is_unavailable_and_its_retry_already_exists(
    store: Store, lossy: tuple[Store, ExecReplyDropper]
) -> None:
    through_proxy, proxy = lossy
    ref = new_ref("Shoes", b"a")
    proxy.armed.set()
    with pytest.raises(Unavailable, match="may or may not have been applied.*AlreadyExists"):
        through_proxy.create_category("Shoes", None, {}, [ref], VERSION)
    assert store.reference_ids("Shoes") == [ref.id]  # it was applied
    with pytest.raises(AlreadyExists):
        through_proxy.create_category("Shoes", None, {}, [ref], VERSION)


def test_a_lost_reply_to_remove_references_is_unavailable_and_its_retry_not_found(
    store: Store, lossy: tuple[Store, ExecReplyDropper]
) -> None:
    through_proxy, proxy = lossy
    ref = new_ref("Shoes", b"a")
    store.create_category("Shoes", None, {}, [ref], VERSION)
    proxy.armed.set()
    with pytest.raises(Unavailable, match="may or may not have been applied.*NotFound"):
        through_proxy.remove_references([ref.id])
    assert store.reference_ids("Shoes") == []  # it was applied
    with pytest.raises(NotFound):
        through_proxy.remove_references([ref.id])


def test_a_write_that_loses_a_race_runs_again(store: Store, valkey: redis.Redis) -> None:
    """Two adds of the same image at once: the one whose EXEC comes second wrote nothing,
    runs again, and reports the image as a duplicate."""
    store.create_category("Shoes", None, {}, [], VERSION)
    ref = new_ref("Shoes", b"a")
    calls = []

    def race() -> None:
        calls.append(1)
        if len(calls) == 1:  # between this add's WATCH and its EXEC
            assert store.add_references("Shoes", [ref], VERSION) == [False]

    racing = Store(valkey, store.prefix, blobs=store.blobs, before_commit=race)
    assert racing.add_references("Shoes", [ref], VERSION) == [True]
    assert len(calls) == 2
    assert store.reference_ids("Shoes") == [ref.id]


def test_put_vectors_skips_a_removed_reference(store: Store) -> None:
    refs = [new_ref("Shoes", b"a"), new_ref("Shoes", b"b")]
    store.create_category("Shoes", None, {}, refs, VERSION)
    store.remove_references([refs[0].id])
    vectors = {r.id: np.ones(4, np.float32) for r in refs}
    stored = store.put_vectors("model-b", vectors)
    assert store.get_vectors("model-b", [r.id for r in refs]).keys() == {refs[1].id}
    assert stored == [refs[1].id]
    assert store.put_vectors("model-b", {refs[0].id: np.ones(4, np.float32)}) == []


@pytest.mark.parametrize("removal", ["remove_references", "delete_category"])
def test_a_removal_also_removes_vectors_of_a_version_stored_meanwhile(
    store: Store, valkey: redis.Redis, removal: str
) -> None:
    ref = new_ref("Shoes", b"a")
    store.create_category("Shoes", None, {}, [ref], VERSION)
    calls = []

    def race() -> None:
        calls.append(1)
        if len(calls) == 1:  # a reindex to model-b stores its first vector meanwhile
            store.put_vectors("model-b", {ref.id: np.ones(4)})

    racing = Store(valkey, store.prefix, blobs=store.blobs, before_commit=race)
    if removal == "remove_references":
        racing.remove_references([ref.id])
    else:
        racing.delete_category("Shoes")
    assert store.get_vectors("model-b", [ref.id]) == {}
    assert len(calls) == 2


def test_labelled_photos_are_stored_once_with_a_vector_per_version(store: Store) -> None:
    from indexer.store import LabelledPhoto

    photo = LabelledPhoto("00000000000000aa", "Shoes", "calibrate --labelled x", "ab" * 32, b"img")
    other = LabelledPhoto("00000000000000bb", "Hats", "review", "cd" * 32, b"img2", at_ms=5)
    assert store.add_labelled([photo, other], VERSION, [np.ones(4), np.zeros(4)]) == 2
    again = LabelledPhoto(photo.id, "Boots", "elsewhere", photo.sha256, photo.image)
    assert store.add_labelled([again], VERSION, [np.full(4, 2.0)]) == 0  # kept once
    stored = {x.id: x for x in store.labelled(VERSION)}
    assert stored[photo.id].label == "Shoes" and stored[photo.id].source.startswith("calibrate")
    assert stored[other.id].at_ms == 5
    np.testing.assert_array_equal(stored[photo.id].vector, np.full(4, 2.0, np.float32))
    assert all(x.vector is None for x in store.labelled("model-b"))  # not embedded by it yet
    store.put_labelled_vectors("model-b", {other.id: np.ones(4)})
    assert {x.id for x in store.labelled("model-b") if x.vector is not None} == {other.id}
    assert store.get_labelled_image(other.id) == b"img2"


def test_labelled_photos_images_live_in_the_blob_store(store: Store, valkey: redis.Redis) -> None:
    from indexer.store import LabelledPhoto

    photos = [
        LabelledPhoto(f"{i:016x}", "Shoes", "review", "ab" * 32, bytes([i]) * 9) for i in range(3)
    ]
    assert store.add_labelled(photos[:2], VERSION, [np.ones(4)] * 2) == 2
    # Known photos again, with one new: only the new one's bytes are written.
    assert store.add_labelled(photos, VERSION, [np.ones(4)] * 3) == 1
    assert [store.get_labelled_image(p.id) for p in photos] == [p.image for p in photos]
    assert store.get_labelled_image("00000000000000ff") is None
    assert not list(valkey.scan_iter(match=store.key("limg", "*")))
    assert len([k for k in store.blobs.stored_keys() if k.startswith("labelled-")]) == 3
    assert valkey.zcard(store.key("blobs", "unsure")) == 0
    assert store.sweep_blobs(older_than_s=0) == 0  # recorded: never swept


def test_float16_vectors_take_half_the_memory_and_keep_their_type(
    store: Store, valkey: redis.Redis
) -> None:
    half = Store(valkey, f"{store.prefix}-f16", blobs=store.blobs, vector_dtype="float16")
    refs = [new_ref("Shoes", bytes([i]) * 8, dim=512) for i in range(20)]
    for s in (store, half):
        s.create_category("Shoes", None, {}, refs, VERSION)
    full_bytes = valkey.memory_usage(store.key("vec", VERSION))
    half_bytes = valkey.memory_usage(half.key("vec", VERSION))
    assert half_bytes < 0.6 * full_bytes
    got = half.get_vectors(VERSION, [r.id for r in refs])
    for ref in refs:
        assert got[ref.id].dtype == np.float32
        np.testing.assert_allclose(got[ref.id], ref.vector, rtol=1e-3, atol=1e-3)
    # A server started with the other type reads (and adds to) the version as recorded.
    other = Store(valkey, half.prefix, blobs=store.blobs, vector_dtype="float32")
    extra = new_ref("Shoes", b"extra", dim=512)
    other.add_references("Shoes", [extra], VERSION)
    assert len(valkey.hget(half.key("vec", VERSION), extra.id) or b"") == 512 * 2
    [batch] = list(other.iter_vectors(VERSION))
    assert batch.vectors.shape == (21, 512)
