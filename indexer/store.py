"""The store: Redis/Valkey holds every category, reference and vector; the reference images
sit in a blob store (indexer.blobs) under keys the store records.

It is the single source of truth. The FAISS index is derived from it and can always be
rebuilt from it without re-embedding. Every mutation is atomic (all or nothing). Those of
the catalogue (create_category, add_references, update_category, remove_references,
delete_category) are each one MULTI/EXEC transaction, guarded by WATCH against concurrent
writers, and append one entry to the change stream (add_references only when it adds
something). put_calibration and switch_model are one MULTI/EXEC each (without WATCH) with
their stream entry. The others are not on the stream: put_vectors is one Lua script (so it
can check each reference still exists), put_reindex and seed_model one command each. Every
entry names the server that wrote it (`origin`): replicas follow the stream and skip their
own (server.follower). With the embedded Valkey (`appendfsync always`) a write is on disk
before the call returns.

Image bytes (references' and labelled photos') are written to the blob store first, each key
listed as unsure, then the reference or photo is recorded in the transaction that also takes
the key off the list; a removal lists its keys in its transaction and deletes the bytes after.
A crash anywhere leaves no reference without bytes, and bytes nothing records only on the
unsure list, which `sweep_blobs` (at every start) clears.

Keys, under a prefix (default ``nearcat``):

- ``categories``            SET of category names
- ``cat:<name>``            HASH name, parent, metadata (JSON), prompts (JSON), created_at_ms,
                            former_names (JSON: names before renames)
- ``refs:<name>``           SET of the category's reference ids
- ``children:<name>``       SET of the category's child category names
- ``ref:<id>``              HASH id, category, sha256, metadata (JSON), created_at_ms, blob (the
                            key of its image bytes in the blob store, kept to re-embed),
                            attributes (JSON)
- ``attributes``            HASH reference id -> its attributes (JSON), for those with any
- ``labelled``              SET of labelled photos' ids (photos a person labelled, not references)
- ``lab:<id>``              HASH label, source, sha256, at_ms, attributes (JSON), blob (the key
                            of its image bytes in the blob store)
- ``lvec:<model_version>``  HASH labelled photo id -> vector bytes
- ``blobs``                 HASH url, id: the blob store that holds this store's images
- ``blobs:unsure``          ZSET blob keys written (or orphaned by a removal) whose reference may
                            not record them, by time: what `sweep_blobs` checks
- ``vec:<model_version>``   HASH reference id -> float32 vector bytes
- ``vector_versions``       SET of model versions that have vectors
- ``vector_dtypes``         HASH model version -> float32 or float16: how its vectors are kept
                            (fixed by its first write; absent: float32)
- ``calibration:<version>`` STRING JSON: the fitted calibration of that model's votes
- ``model``                 HASH active (the model version served), previous (rollback target)
- ``reindex``               STRING JSON: the last or running reindex (target, progress, outcome)
- ``lease:<name>``          STRING who does a fleet-wide job now (e.g. recalibrate), with a TTL
- ``changes``               STREAM of every catalogue write, calibration and model switch
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import numpy as np
import redis

from indexer.blobs import MARKER, Blobs, new_key, open_blobs, reference_of
from indexer.breaker import CircuitBreaker
from indexer.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable
from indexer.ids import reference_id as id_in_category

log = logging.getLogger(__name__)

T = TypeVar("T")

CHANGE_STREAM_MAXLEN = 1_000_000
READ_CHUNK = 10_000  # ids per command of a bulk read, so no reply grows past the timeout
VECTOR_DTYPES = {"float32": "<f4", "float16": "<f2"}
# Blob keys of labelled photos start with this, so the sweep knows which hash records them
# (reference ids are hex).
LABELLED_BLOB = "labelled-"

# put_vectors in one step, so that no removal can come between the check and the write.
# KEYS: the version's vector hash, vector_versions, then each reference's hash.
# ARGV: the version, then each reference's id and vector, in the order of KEYS.
PUT_VECTORS_SCRIPT = """
local stored = {}
for k = 3, #KEYS do
  if redis.call('EXISTS', KEYS[k]) == 1 then
    local id = ARGV[2 * k - 4]
    redis.call('HSET', KEYS[1], id, ARGV[2 * k - 3])
    table.insert(stored, id)
  end
end
if #stored > 0 then
  redis.call('SADD', KEYS[2], ARGV[1])
end
return stored
"""

# Delete a lease only if its holder still holds it (KEYS[1] the lease, ARGV[1] the holder).
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class Category:
    name: str
    parent: str | None
    metadata: dict[str, str]
    created_at_ms: int
    reference_count: int
    # Text describing the category, for models with a text tower: classifiable before it
    # has any reference image.
    prompts: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reference:
    id: str
    category: str
    sha256: str
    metadata: dict[str, str]
    created_at_ms: int
    blob: str = ""  # the key of its image in the blob store
    attributes: dict[str, str] = field(default_factory=dict)  # e.g. {"kids": "true"}


@dataclass(frozen=True)
class NewReference:
    """A reference ready to be written: identity, image and its vector for one model."""

    id: str
    sha256: str
    image: bytes
    vector: np.ndarray
    metadata: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)
    # Vectors of other model versions, written in the same transaction (a reindex running).
    other_vectors: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorBatch:
    """Vectors of one model version, with the reference and category each belongs to, and
    the references met on the way that have no vector of that version yet."""

    reference_ids: list[str]
    categories: list[str]
    vectors: np.ndarray
    missing_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LabelledPhoto:
    """A photo a person labelled, to be stored as labelled traffic (not a reference)."""

    id: str
    label: str
    source: str  # where the label came from, e.g. "calibrate:labelled/" or "review"
    sha256: str
    image: bytes
    at_ms: int = 0
    attributes: dict[str, str] = field(default_factory=dict)  # as a reference's


@dataclass(frozen=True)
class StoredLabel:
    id: str
    label: str
    source: str
    at_ms: int
    vector: np.ndarray | None
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelVersions:
    active: str
    previous: str | None


def _now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """Typed access to the nearcat keys of one Redis/Valkey database."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "nearcat",
        *,
        blobs: Blobs,
        before_commit: Callable[[], None] | None = None,
        origin: str | None = None,
        breaker: CircuitBreaker | None = None,
        vector_dtype: str = "float32",
    ) -> None:
        """`before_commit`, if given, runs inside every write between its WATCH and its EXEC:
        the seam where tests make another writer race it. `origin` names this server on the
        change stream's entries (default: a fresh id), so that it can skip its own. `breaker`
        (default: one of its own) fails calls fast while the store does not answer. `blobs`
        holds the reference images (`bind_blobs` finds this store's). `vector_dtype` is how
        the vectors of a model version first written by this store are kept (float16 halves
        their memory; a version keeps the type it was first written with)."""
        # Any: redis-py types replies as unions of bytes, str and awaitables; this client is
        # synchronous without decode_responses, so every reply is bytes.
        self._redis: Any = client
        self._prefix = prefix
        self._before_commit = before_commit
        self.origin = origin or uuid.uuid4().hex[:12]
        self.breaker = breaker or CircuitBreaker(client.ping)
        self.blobs = blobs
        if vector_dtype not in VECTOR_DTYPES:
            raise ValueError(f"vector dtype {vector_dtype!r}: choose {' or '.join(VECTOR_DTYPES)}")
        self.vector_dtype = vector_dtype
        self._dtypes: dict[str, str] = {}  # model version -> numpy dtype, once recorded
        self._put_vectors_script = client.register_script(PUT_VECTORS_SCRIPT)
        self._release_script = client.register_script(RELEASE_SCRIPT)

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def client(self) -> Any:
        """The Redis client, for stores of other things under the same prefix
        (indexer.review_store)."""
        return self._redis

    @property
    def key_pattern(self) -> str:
        """A SCAN pattern matching every key of this store."""
        return self.key("*")

    def changes(self) -> list[dict[str, str]]:
        """The change stream (every add, remove and delete), oldest first."""
        entries = self.call(lambda: self._redis.xrange(self.key("changes")))
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in entries]

    # -- following the change stream (server.follower) -----------------------------------

    def last_change_id(self) -> str:
        """The id of the stream's newest entry, even if trimmed away ("0-0" when none was
        ever written): a position to follow from."""
        info = self._stream_info()
        return _text(info.get("last-generated-id", b"0-0")) if info else "0-0"

    def _stream_info(self) -> dict[str, Any] | None:
        try:
            return dict(self.call(lambda: self._redis.xinfo_stream(self.key("changes"))))
        except redis.ResponseError:  # no stream yet
            return None

    def read_changes(
        self, after: str, block_ms: int, count: int
    ) -> list[tuple[str, dict[str, str]]]:
        """The entries after `after`, oldest first, waiting up to `block_ms` for one."""
        key = self.key("changes")
        reply = self.call(
            lambda: self._redis.xread({key: after}, count=count, block=block_ms or None)
        )
        return [
            (entry_id.decode(), {k.decode(): v.decode() for k, v in fields.items()})
            for _, entries in reply or []
            for entry_id, fields in entries
        ]

    def change_retained(self, position: str) -> bool:
        """Whether every entry after `position` is surely still on the stream. Trimming
        takes the oldest entries first, so they are while the entry at `position` itself
        is (or `position` is the newest id, or nothing was ever trimmed)."""
        info = self._stream_info()
        if info is None or position == _text(info.get("last-generated-id", b"")):
            return True
        if position == "0-0":
            return int(info.get("entries-added", 0)) == int(info.get("length", 0))
        key = self.key("changes")
        return bool(self.call(lambda: self._redis.xrange(key, min=position, max=position)))

    def changes_after(self, position: str, cap: int = 10_000) -> tuple[int, int]:
        """(entries after `position`, at most `cap`; the time in ms of the oldest of them,
        0 when none): how far a follower is behind."""
        key = self.key("changes")
        newer = self.call(lambda: self._redis.xrange(key, min=f"({position}", count=cap))
        if not newer:
            return 0, 0
        return len(newer), _stream_id(newer[0][0].decode())[0]

    # -- key names -----------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key under this store's prefix."""
        return ":".join((self._prefix, *parts))

    def _category_key(self, name: str) -> str:
        return self.key("cat", name)

    def _refs_key(self, name: str) -> str:
        return self.key("refs", name)

    def _children_key(self, name: str) -> str:
        return self.key("children", name)

    def _ref_key(self, reference_id: str) -> str:
        return self.key("ref", reference_id)

    def _unsure_key(self) -> str:
        return self.key("blobs", "unsure")

    def _vectors_key(self, model_version: str) -> str:
        return self.key("vec", model_version)

    # -- plumbing ------------------------------------------------------------------------

    def transaction(self, body: Callable[[Any], T], watch: Sequence[str], if_applied: str) -> T:
        """Run body(pipe) under WATCH and commit it; body calls pipe.multi() before writing.

        Only a conflict (a watched key changed, so EXEC wrote nothing) runs body again.
        redis-py's `transaction()` also reruns it after a connection lost during EXEC, which
        it reports as a WatchError too; the rerun then sees this call's own write, if it was
        applied, and fails. Here that is Unavailable, saying (`if_applied`) what a retry of
        the call answers when it was."""
        self.breaker.check()
        with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*watch)
                    result = body(pipe)
                    if self._before_commit is not None:
                        self._before_commit()
                except (redis.WatchError, redis.ConnectionError, redis.TimeoutError) as exc:
                    self._trip(_connection_error(exc))
                    raise Unavailable(
                        f"the store is unreachable ({_connection_error(exc) or exc}); "
                        "nothing was written; retry shortly"
                    ) from exc
                try:
                    pipe.execute()
                except (redis.WatchError, redis.ConnectionError, redis.TimeoutError) as exc:
                    lost = _connection_error(exc)
                    if lost is None:
                        continue
                    self._trip(lost)
                    raise Unavailable(
                        f"the connection to the store was lost before it confirmed the write "
                        f"({lost}): it may or may not have been applied. Retrying is safe: "
                        f"{if_applied}"
                    ) from exc
                return result

    def call(self, fn: Callable[[], T]) -> T:
        """fn(), a lost or timed-out connection raised as Unavailable."""
        self.breaker.check()
        try:
            return fn()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self._trip(exc)
            raise Unavailable(f"the store is unreachable ({exc}); retry shortly") from exc

    def _dtype(self, model_version: str, writing: bool = False) -> str:
        """The numpy dtype of `model_version`'s stored vectors; `writing` records this
        store's type for a version that has none yet."""
        cached = self._dtypes.get(model_version)
        if cached is not None:
            return cached
        key = self.key("vector_dtypes")
        if writing:
            self.call(lambda: self._redis.hsetnx(key, model_version, self.vector_dtype))
        recorded = self.call(lambda: self._redis.hget(key, model_version))
        if recorded is None:
            return VECTOR_DTYPES["float32"]  # written before types were recorded
        dtype = VECTOR_DTYPES[recorded.decode()]
        self._dtypes[model_version] = dtype
        return dtype

    def _pack(self, model_version: str, vector: np.ndarray) -> bytes:
        return np.asarray(vector, dtype=self._dtype(model_version, writing=True)).tobytes()

    def _unpack(self, model_version: str, data: bytes) -> np.ndarray:
        return np.frombuffer(data, dtype=self._dtype(model_version)).astype(np.float32)

    def _trip(self, exc: BaseException | None) -> None:
        """Tell the breaker: a store that did not answer in time makes the calls after this
        one fail at once instead of each waiting out the timeout."""
        if exc is not None:
            self.breaker.trip(str(exc) or type(exc).__name__, isinstance(exc, redis.TimeoutError))

    def _log_change(self, pipe: Any, op: str, **fields: str) -> None:
        pipe.xadd(
            self.key("changes"),
            {"op": op, "origin": self.origin, **fields},
            maxlen=CHANGE_STREAM_MAXLEN,
            approximate=True,
        )

    def _write_references(
        self,
        pipe: Any,
        category: str,
        references: Sequence[NewReference],
        model_version: str,
        blob_keys: dict[str, str],
    ) -> None:
        """The references' hashes, vectors and set membership; their images are in the blob
        store already (`_stage`), under `blob_keys`."""
        now = _now_ms()
        if references:
            pipe.zrem(self._unsure_key(), *(blob_keys[r.id] for r in references))
        vectors_key = self._vectors_key(model_version)
        for ref in references:
            pipe.hset(
                self._ref_key(ref.id),
                mapping={
                    "id": ref.id,
                    "category": category,
                    "sha256": ref.sha256,
                    "metadata": json.dumps(ref.metadata, sort_keys=True),
                    "created_at_ms": now,
                    "blob": blob_keys[ref.id],
                    "attributes": json.dumps(ref.attributes, sort_keys=True),
                },
            )
            if ref.attributes:  # also in one hash, which a server loads in one read
                pipe.hset(self.key("attributes"), ref.id, json.dumps(ref.attributes))
            pipe.hset(vectors_key, ref.id, self._pack(model_version, ref.vector))
            for version, vector in ref.other_vectors.items():
                pipe.hset(self._vectors_key(version), ref.id, self._pack(version, vector))
            pipe.sadd(self._refs_key(category), ref.id)
        versions = {model_version, *(v for r in references for v in r.other_vectors)}
        if references:
            pipe.sadd(self.key("vector_versions"), *sorted(versions))

    # -- reads ---------------------------------------------------------------------------

    def category_names(self) -> list[str]:
        names = self.call(lambda: self._redis.smembers(self.key("categories")))
        return sorted(n.decode() for n in names)

    def get_category(self, name: str) -> Category | None:
        def read() -> tuple[dict[bytes, bytes], int]:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(self._category_key(name))
            pipe.scard(self._refs_key(name))
            fields, count = pipe.execute()
            return fields, count

        fields, count = self.call(read)
        if not fields:
            return None
        return Category(
            name=fields[b"name"].decode(),
            parent=fields[b"parent"].decode() or None,
            metadata=json.loads(fields[b"metadata"]),
            created_at_ms=int(fields[b"created_at_ms"]),
            reference_count=int(count),
            prompts=json.loads(fields.get(b"prompts", b"[]")),
        )

    def list_categories(self) -> list[Category]:
        categories = (self.get_category(name) for name in self.category_names())
        return [c for c in categories if c is not None]

    def reference_ids(self, category: str) -> list[str]:
        ids = self.call(lambda: self._redis.smembers(self._refs_key(category)))
        return sorted(i.decode() for i in ids)

    def get_references(self, reference_ids: Sequence[str]) -> list[Reference | None]:
        def read() -> list[dict[bytes, bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for reference_id in reference_ids:
                pipe.hgetall(self._ref_key(reference_id))
            return list(pipe.execute())

        return [_reference_from_hash(fields) if fields else None for fields in self.call(read)]

    def get_image(self, reference_id: str) -> bytes | None:
        return self.get_images([reference_id])[reference_id]

    def get_images(self, reference_ids: Sequence[str]) -> dict[str, bytes | None]:
        """Each reference's image (None for an unknown id), its key read in one round trip."""
        keys = self.image_keys(reference_ids)
        return {i: self._read_blob(keys[i]) if i in keys else None for i in reference_ids}

    def image_keys(self, reference_ids: Sequence[str]) -> dict[str, str]:
        """Where each reference's image is in `self.blobs` (unknown ids left out): what a
        worker elsewhere reads the images by (`indexer.blobs.open_blobs(store.blobs.url)`)."""

        def read() -> list[bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            for reference_id in reference_ids:
                pipe.hget(self._ref_key(reference_id), "blob")
            return list(pipe.execute())

        found = self.call(read) if reference_ids else []
        return {i: k.decode() for i, k in zip(reference_ids, found, strict=True) if k}

    # -- image bytes in the blob store -----------------------------------------------------

    def _read_blob(self, key: str) -> bytes | None:
        try:
            return self.blobs.get(key)
        except Exception as exc:  # an unreadable disk, an S3 error: no answer, not a crash
            raise Unavailable(
                f"cannot read an image from the blob store at {self.blobs.url} ({exc}); "
                "retry shortly"
            ) from exc

    def _stage(self, images: dict[str, bytes], owner: str = "") -> dict[str, str]:
        """Write images (reference id, or with `owner` LABELLED_BLOB a labelled photo's id ->
        bytes) to the blob store under fresh keys, each listed as unsure first; returns id ->
        key. The write that records them takes them off the list; `_settle` deletes those it
        did not record."""
        keys = {i: new_key(owner + i) for i in images}
        if not keys:
            return keys
        now = _now_ms()
        self.call(lambda: self._redis.zadd(self._unsure_key(), {k: now for k in keys.values()}))
        try:
            for reference_id, key in keys.items():
                self.blobs.put(key, images[reference_id])
        except Exception as exc:
            raise Unavailable(
                f"cannot write to the blob store at {self.blobs.url} ({exc}); nothing was "
                "added; retry shortly"
            ) from exc
        return keys

    def _settle(self, keys: dict[str, str], recorded: set[str]) -> None:
        """Delete the staged images the write did not record (duplicates, a refusal)."""
        self._delete_blobs([k for i, k in keys.items() if i not in recorded])

    def _settled(self, keys: dict[str, str], recorded: set[str], write: Callable[[], T]) -> T:
        """write(), which records the staged `keys` of the ids it puts in `recorded`; then
        the rest are deleted. A write that may or may not have been applied (Unavailable)
        leaves its keys to `sweep_blobs`."""
        try:
            result = write()
        except Unavailable:
            raise
        except BaseException:
            self._settle(keys, set())
            raise
        self._settle(keys, recorded)
        return result

    def _forget_blobs(self, pipe: Any, references: Sequence[Reference]) -> None:
        """In a removal's transaction: list its images as unsure (as old: no write is in
        flight for them), so that a crash before `_drop_blobs` leaves them to the sweep."""
        keys = [r.blob for r in references if r.blob]
        if keys:
            pipe.zadd(self._unsure_key(), dict.fromkeys(keys, 0))

    def _drop_blobs(self, references: Sequence[Reference]) -> None:
        self._delete_blobs([r.blob for r in references if r.blob])

    def _delete_blobs(self, keys: list[str]) -> None:
        """Delete unsure images no reference records; on failure they stay listed, for the
        next `sweep_blobs` (the call that got here has done its work: it does not fail)."""
        if not keys:
            return
        try:
            self.blobs.delete(keys)
            self.call(lambda: self._redis.zrem(self._unsure_key(), *keys))
        except Exception as exc:
            log.warning("%d image(s) left for the next sweep: %s", len(keys), exc)

    def sweep_blobs(self, older_than_s: float = 60.0) -> int:
        """Delete images no reference records (a crash between writing the bytes and
        recording them, or between a removal and deleting its bytes), listed as unsure for
        longer than `older_than_s` (younger ones may belong to a write in flight); returns
        how many were deleted."""
        cutoff = _now_ms() - int(older_than_s * 1000)
        keys = [
            k.decode()
            for k in self.call(
                lambda: self._redis.zrangebyscore(self._unsure_key(), "-inf", cutoff)
            )
        ]
        if not keys:
            return 0

        def recorded() -> list[bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            for key in keys:
                pipe.hget(self._owner_key(reference_of(key)), "blob")
            return list(pipe.execute())

        orphans = [
            k
            for k, r in zip(keys, self.call(recorded), strict=True)
            if r is None or r.decode() != k
        ]
        self.blobs.delete(orphans)
        self.call(lambda: self._redis.zrem(self._unsure_key(), *keys))
        return len(orphans)

    def _owner_key(self, owner: str) -> str:
        """The hash that records a blob key's image: a reference's, or a labelled photo's."""
        if owner.startswith(LABELLED_BLOB):
            return self.key("lab", owner.removeprefix(LABELLED_BLOB))
        return self._ref_key(owner)

    def migrate_images(self, batch: int = 200) -> int:
        """Move image bytes that earlier versions kept in Redis (references' ``img:<id>``,
        labelled photos' ``limg:<id>``) to the blob store; idempotent and resumable (each
        batch is one transaction). Returns how many were moved."""
        moved = 0
        for legacy, owner in (("img", ""), ("limg", LABELLED_BLOB)):
            pattern = self.key(legacy, "*")
            cursor = 0
            while True:
                cursor, names = self.call(partial(self._redis.scan, cursor, pattern, batch))
                if names:
                    moved += self._migrate_batch([n.decode() for n in names], owner)
                if cursor == 0:
                    break
        return moved

    def _migrate_batch(self, names: list[str], owner: str) -> int:
        ids = [n.rsplit(":", 1)[1] for n in names]
        images = self.call(lambda: self._redis.mget(names))
        keys = self._stage(
            {i: bytes(data) for i, data in zip(ids, images, strict=True) if data is not None},
            owner,
        )
        records = {i: self._owner_key(owner + i) for i in ids}
        recorded: set[str] = set()

        def body(pipe: Any) -> None:
            exists = [pipe.exists(records[i]) for i in ids]
            pipe.multi()
            recorded.clear()
            recorded.update(i for i, live in zip(ids, exists, strict=True) if live and i in keys)
            for i in recorded:
                pipe.hset(records[i], "blob", keys[i])
            if recorded:
                pipe.zrem(self._unsure_key(), *(keys[i] for i in recorded))
            pipe.delete(*names)

        watch = list(records.values())
        self._settled(keys, recorded, lambda: self.transaction(body, watch, "retry moves none"))
        return len(recorded)

    def iter_vectors(self, model_version: str, batch_size: int = 10_000) -> Iterator[VectorBatch]:
        """Every stored vector of model_version, category by category, in batches; one read
        of each vector, which also finds the references still without one."""
        for category in self.category_names():
            ids = self.reference_ids(category)
            for start in range(0, len(ids), batch_size):
                chunk = ids[start : start + batch_size]
                blobs = self._vector_blobs(model_version, chunk)
                present = [(i, b) for i, b in zip(chunk, blobs, strict=True) if b is not None]
                vectors = [self._unpack(model_version, b) for _, b in present]
                yield VectorBatch(
                    reference_ids=[i for i, _ in present],
                    categories=[category] * len(present),
                    vectors=np.stack(vectors) if vectors else np.zeros((0, 0)),
                    missing_ids=[i for i, b in zip(chunk, blobs, strict=True) if b is None],
                )

    def _vector_blobs(self, model_version: str, ids: Sequence[str]) -> list[bytes | None]:
        key = self._vectors_key(model_version)
        return list(self.call(lambda: self._redis.hmget(key, ids)))

    def get_vectors(self, model_version: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """The stored vectors of model_version for these references (absent ones left out)."""
        blobs = self._vector_blobs(model_version, ids) if ids else []
        return {
            i: self._unpack(model_version, b)
            for i, b in zip(ids, blobs, strict=True)
            if b is not None
        }

    def all_references(self) -> dict[str, str]:
        """Every reference id with its category (ids only: cheap even for a big catalogue)."""
        names = self.category_names()

        def read() -> list[set[bytes]]:
            pipe = self._redis.pipeline(transaction=False)
            for name in names:
                pipe.smembers(self._refs_key(name))
            return list(pipe.execute())

        return {
            i.decode(): name for name, ids in zip(names, self.call(read), strict=True) for i in ids
        }

    def all_attributes(self) -> dict[str, dict[str, str]]:
        """Every reference that carries attributes, with them (one read)."""
        reply = self.call(lambda: self._redis.hgetall(self.key("attributes")))
        return {k.decode(): json.loads(v) for k, v in reply.items()}

    def attributes_of(self, reference_ids: Sequence[str]) -> dict[str, dict[str, str]]:
        """Those of these references that carry attributes, with them."""
        ids = list(reference_ids)

        def read() -> list[bytes | None]:
            pipe = self._redis.pipeline(transaction=False)
            for start in range(0, len(ids), READ_CHUNK):
                pipe.hmget(self.key("attributes"), ids[start : start + READ_CHUNK])
            return [value for chunk in pipe.execute() for value in chunk]

        reply = self.call(read) if ids else []
        return {i: json.loads(v) for i, v in zip(ids, reply, strict=True) if v}

    def get_model(self) -> ModelVersions | None:
        """The active model version and the previous one, None before the first start."""
        fields = self.call(lambda: self._redis.hgetall(self.key("model")))
        if not fields or b"active" not in fields:
            return None
        return ModelVersions(
            fields[b"active"].decode(), fields.get(b"previous", b"").decode() or None
        )

    def seed_model(self, active: str) -> ModelVersions:
        """Record `active` unless a version is recorded already; returns what is recorded."""
        self.call(lambda: self._redis.hsetnx(self.key("model"), "active", active))
        recorded = self.get_model()
        assert recorded is not None
        return recorded

    # -- leases: work done once for all servers -----------------------------------------

    def take_lease(self, name: str, seconds: float, holder: str) -> bool:
        """Take the lease `name` for `seconds` unless another holder has it (SET NX PX)."""
        key = self.key("lease", name)
        return bool(
            self.call(lambda: self._redis.set(key, holder, nx=True, px=int(seconds * 1000)))
        )

    def release_lease(self, name: str, holder: str) -> None:
        """Give the lease back if `holder` still has it."""
        key = self.key("lease", name)
        self.call(lambda: self._release_script(keys=[key], args=[holder]))

    def get_reindex(self) -> dict[str, Any] | None:
        data = self.call(lambda: self._redis.get(self.key("reindex")))
        return json.loads(data) if data is not None else None

    def put_reindex(self, state: dict[str, Any]) -> None:
        payload = json.dumps(state, sort_keys=True)
        self.call(lambda: self._redis.set(self.key("reindex"), payload))

    def switch_model(self, active: str, previous: str | None, reindex: dict[str, Any]) -> None:
        """Record a switch and the reindex's outcome in one transaction."""

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(self.key("model"), mapping={"active": active, "previous": previous or ""})
            pipe.set(self.key("reindex"), json.dumps(reindex, sort_keys=True))
            self._log_change(pipe, "switch_model", active=active, previous=previous or "")
            pipe.execute()

        self.call(write)

    def put_vectors(self, model_version: str, vectors: dict[str, np.ndarray]) -> list[str]:
        """Store vectors for existing references (re-embedding for a new model version);
        returns the ids stored. A reference removed meanwhile gets none: its vector would be
        left behind, as no removal will come for it again."""
        if not vectors:
            return []
        ids = list(vectors)
        keys = [
            self._vectors_key(model_version),
            self.key("vector_versions"),
            *(self._ref_key(i) for i in ids),
        ]
        args: list[str | bytes] = [model_version]
        for i in ids:
            args += [i, self._pack(model_version, vectors[i])]
        stored = self.call(lambda: self._put_vectors_script(keys=keys, args=args))
        return [i.decode() for i in stored]

    def get_calibration(self, model_version: str) -> dict[str, Any] | None:
        data = self.call(lambda: self._redis.get(self.key("calibration", model_version)))
        return json.loads(data) if data is not None else None

    # -- writes --------------------------------------------------------------------------

    def put_calibration(self, model_version: str, calibration: dict[str, Any]) -> None:
        """Replace the calibration of a model's votes (one SET: atomic, durable on return)."""
        payload = json.dumps(calibration, sort_keys=True)

        def write() -> None:
            pipe = self._redis.pipeline(transaction=True)
            pipe.set(self.key("calibration", model_version), payload)
            self._log_change(pipe, "calibration", version=model_version)
            pipe.execute()

        self.call(write)

    # -- labelled traffic ----------------------------------------------------------------

    def add_labelled(
        self, items: Sequence[LabelledPhoto], model_version: str, vectors: Sequence[np.ndarray]
    ) -> int:
        """Store photos a person labelled (not references) with their vectors of
        `model_version`, in one transaction; returns how many were new. The image bytes are
        kept so that a new model version can embed them; an id already stored keeps its
        first label and source, and gets this version's vector."""
        if not items:
            return 0
        ids = self.key("labelled")
        asked = [i.id for i in items]

        def stored(client: Any) -> set[str]:
            """Which of these photos are stored (one membership test each, not the set)."""
            found = client.smismember(ids, asked)
            return {i for i, there in zip(asked, found, strict=True) if there}

        # Photos never leave the set: only those not in it yet need their bytes written.
        before = self.call(lambda: stored(self._redis))
        keys = self._stage({i.id: i.image for i in items if i.id not in before}, LABELLED_BLOB)
        recorded: set[str] = set()

        def body(pipe: Any) -> int:
            known = stored(pipe)
            pipe.multi()
            recorded.clear()
            for item, vector in zip(items, vectors, strict=True):
                if item.id not in known and item.id in keys and item.id not in recorded:
                    recorded.add(item.id)
                    pipe.sadd(ids, item.id)
                    pipe.hset(
                        self.key("lab", item.id),
                        mapping={
                            "label": item.label,
                            "source": item.source,
                            "sha256": item.sha256,
                            "at_ms": str(item.at_ms or _now_ms()),
                            "attributes": json.dumps(item.attributes, sort_keys=True),
                            "blob": keys[item.id],
                        },
                    )
                pipe.hset(
                    self.key("lvec", model_version),
                    item.id,
                    self._pack(model_version, vector),
                )
            if recorded:
                pipe.zrem(self._unsure_key(), *(keys[i] for i in recorded))
            return len(recorded)

        return self._settled(
            keys, recorded, lambda: self.transaction(body, [ids], "labelled photos stored")
        )

    def labelled(self, model_version: str) -> list[StoredLabel]:
        """Every stored labelled photo, with its vector of `model_version` (None: not
        embedded by that version yet), oldest first."""

        def read() -> tuple[list[bytes], list[dict[bytes, bytes]], list[bytes | None]]:
            ids = sorted(self._redis.smembers(self.key("labelled")))
            pipe = self._redis.pipeline(transaction=False)
            for i in ids:
                pipe.hgetall(self.key("lab", i.decode()))
            fields = pipe.execute()
            blobs = self._redis.hmget(self.key("lvec", model_version), ids) if ids else []
            return ids, fields, blobs

        ids, fields, blobs = self.call(read)
        out = [
            StoredLabel(
                id=i.decode(),
                label=f[b"label"].decode(),
                source=f[b"source"].decode(),
                at_ms=int(f[b"at_ms"]),
                vector=self._unpack(model_version, b) if b is not None else None,
                attributes=json.loads(f.get(b"attributes", b"{}")),
            )
            for i, f, b in zip(ids, fields, blobs, strict=True)
            if f
        ]
        return sorted(out, key=lambda x: (x.at_ms, x.id))

    def labelled_count(self, model_version: str) -> int:
        """Labelled photos with a vector of `model_version` (one read, no vectors fetched)."""
        return int(self.call(lambda: self._redis.hlen(self.key("lvec", model_version))))

    def get_labelled_image(self, labelled_id: str) -> bytes | None:
        blob = self.call(lambda: self._redis.hget(self.key("lab", labelled_id), "blob"))
        return self._read_blob(blob.decode()) if blob is not None else None

    def put_labelled_vectors(self, model_version: str, vectors: dict[str, np.ndarray]) -> None:
        """Vectors of another model version for stored labelled photos (a reindex)."""
        if vectors:
            mapping = {i: self._pack(model_version, v) for i, v in vectors.items()}
            key = self.key("lvec", model_version)
            self.call(lambda: self._redis.hset(key, mapping=mapping))

    def create_category(
        self,
        name: str,
        parent: str | None,
        metadata: dict[str, str],
        references: Sequence[NewReference],
        model_version: str,
        prompts: Sequence[str] = (),
    ) -> tuple[Category, list[bool]]:
        """Create a category with its first references, atomically; also returns, per
        reference, whether it repeats an earlier one of the request (not written twice)."""
        watch = [self._category_key(name)]
        if parent:
            watch.append(self._category_key(parent))
        blob_keys = self._stage({r.id: r.image for r in references})
        recorded: set[str] = set()

        def body(pipe: Any) -> tuple[Category, list[bool]]:
            if pipe.exists(self._category_key(name)):
                raise AlreadyExists(
                    f"category {name!r} already exists; use AddReferences "
                    "(`nearcat add-references`) to add images to it"
                )
            if parent and not pipe.exists(self._category_key(parent)):
                raise NotFound(f"parent category {parent!r} does not exist; create it first")
            created = _now_ms()
            new, duplicate = split_duplicates(references, set())
            pipe.multi()
            pipe.hset(
                self._category_key(name),
                mapping={
                    "name": name,
                    "parent": parent or "",
                    "metadata": json.dumps(metadata, sort_keys=True),
                    "prompts": json.dumps(list(prompts)),
                    "created_at_ms": created,
                },
            )
            pipe.sadd(self.key("categories"), name)
            if parent:
                pipe.sadd(self._children_key(parent), name)
            self._write_references(pipe, name, new, model_version, blob_keys)
            recorded.clear()
            recorded.update(r.id for r in new)
            self._log_change(
                pipe,
                "add_category",
                category=name,
                parent=parent or "",
                references=",".join(r.id for r in new),
            )
            category = Category(name, parent, dict(metadata), created, len(new), list(prompts))
            return category, duplicate

        if_applied = f"if it was, the retry fails with AlreadyExists (category {name!r})"
        return self._settled(blob_keys, recorded, lambda: self.transaction(body, watch, if_applied))

    def add_references(
        self, category: str, references: Sequence[NewReference], model_version: str
    ) -> list[bool]:
        """Add references atomically; returns, per reference, whether it was already there."""
        watch = [self._category_key(category), *(self._ref_key(r.id) for r in references)]
        blob_keys = self._stage({r.id: r.image for r in references})
        recorded: set[str] = set()

        def body(pipe: Any) -> list[bool]:
            if not pipe.exists(self._category_key(category)):
                raise NotFound(
                    f"category {category!r} does not exist; create it with AddCategory first"
                )
            former = json.loads(pipe.hget(self._category_key(category), "former_names") or "[]")
            # An image added before a rename has the id it got under the old name.
            aliases = [[r.id, *(id_in_category(f, r.sha256) for f in former)] for r in references]
            flat = [i for names in aliases for i in names]
            stored = dict(zip(flat, pipe.smismember(self._refs_key(category), flat), strict=True))
            new, duplicate = split_duplicates(
                references, {names[0] for names in aliases if any(stored[i] for i in names)}
            )
            pipe.multi()
            self._write_references(pipe, category, new, model_version, blob_keys)
            recorded.clear()
            recorded.update(r.id for r in new)
            if new:
                self._log_change(
                    pipe,
                    "add_references",
                    category=category,
                    references=",".join(r.id for r in new),
                )
            return duplicate

        if_applied = "if it was, the retry reports these references as duplicates"
        return self._settled(blob_keys, recorded, lambda: self.transaction(body, watch, if_applied))

    def update_category(
        self,
        name: str,
        *,
        new_name: str | None = None,
        parent: str | None = None,
        prompts: Sequence[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Category:
        """Rename a category, move it (`parent` "" for the top level), or replace its prompts
        or metadata, in one transaction. A rename keeps its references' ids and vectors (the
        old name is kept as a former name, so the same image is still a duplicate), moves
        its children along, and relabels its labelled photos."""
        target = new_name if new_name is not None else name
        watch = [
            self._category_key(name),
            self._category_key(target),
            self._refs_key(name),
            self._children_key(name),
            self.key("labelled"),
        ]
        if parent:
            watch.append(self._category_key(parent))

        def body(pipe: Any) -> Category:
            fields = pipe.hgetall(self._category_key(name))
            if not fields:
                raise NotFound(f"category {name!r} does not exist")
            if target != name and pipe.exists(self._category_key(target)):
                raise AlreadyExists(f"category {target!r} already exists; pick another name")
            old_parent = fields[b"parent"].decode()
            new_parent = old_parent if parent is None else parent
            if new_parent and new_parent != old_parent:
                self._check_new_parent(pipe, name, new_parent)
            ids = [i.decode() for i in pipe.smembers(self._refs_key(name))]
            children = [c.decode() for c in pipe.smembers(self._children_key(name))]
            relabel = self._labelled_with(pipe, name) if target != name else []
            former = json.loads(fields.get(b"former_names", b"[]"))
            pipe.multi()
            if target != name:
                pipe.rename(self._category_key(name), self._category_key(target))
                if ids:
                    pipe.rename(self._refs_key(name), self._refs_key(target))
                if children:
                    pipe.rename(self._children_key(name), self._children_key(target))
                pipe.srem(self.key("categories"), name)
                pipe.sadd(self.key("categories"), target)
                for i in ids:
                    pipe.hset(self._ref_key(i), "category", target)
                for child in children:
                    pipe.hset(self._category_key(child), "parent", target)
                for labelled_id in relabel:
                    pipe.hset(self.key("lab", labelled_id), "label", target)
                former = sorted({*former, name} - {target})
            if old_parent:
                pipe.srem(self._children_key(old_parent), name)
            if new_parent:
                pipe.sadd(self._children_key(new_parent), target)
            mapping: dict[str, Any] = {
                "name": target,
                "parent": new_parent,
                "former_names": json.dumps(former),
            }
            if prompts is not None:
                mapping["prompts"] = json.dumps(list(prompts))
            if metadata is not None:
                mapping["metadata"] = json.dumps(metadata, sort_keys=True)
            pipe.hset(self._category_key(target), mapping=mapping)
            self._log_change(
                pipe, "update_category", category=target, previous=name, parent=new_parent
            )
            return Category(
                name=target,
                parent=new_parent or None,
                metadata=dict(metadata)
                if metadata is not None
                else json.loads(fields[b"metadata"]),
                created_at_ms=int(fields[b"created_at_ms"]),
                reference_count=len(ids),
                prompts=list(prompts)
                if prompts is not None
                else json.loads(fields.get(b"prompts", b"[]")),
            )

        return self.transaction(body, watch, f"if it was, category {target!r} exists")

    def _check_new_parent(self, pipe: Any, name: str, parent: str) -> None:
        """A new parent must exist and must not be the category or one under it."""
        seen: set[str] = set()
        node: str = parent
        while node and node not in seen:
            if node == name:
                raise FailedPrecondition(
                    f"cannot move {name!r} under {parent!r}: {parent!r} is {name!r} itself or "
                    "one of its descendants"
                )
            seen.add(node)
            above = pipe.hget(self._category_key(node), "parent")
            if above is None:
                if node == parent:
                    raise NotFound(f"parent category {parent!r} does not exist; create it first")
                break
            node = above.decode()

    def _labelled_with(self, pipe: Any, label: str) -> list[str]:
        """The labelled photos with `label` (their set is watched; labels are read in one
        round trip)."""
        ids = [i.decode() for i in pipe.smembers(self.key("labelled"))]
        reads = self._redis.pipeline(transaction=False)
        for i in ids:
            reads.hget(self.key("lab", i), "label")
        labels = reads.execute() if ids else []
        return [
            i for i, x in zip(ids, labels, strict=True) if x is not None and x.decode() == label
        ]

    def remove_references(self, reference_ids: Sequence[str]) -> list[Reference]:
        """Remove references atomically; any unknown id fails the whole call."""
        unique_ids = list(dict.fromkeys(reference_ids))
        # vector_versions: a version first stored meanwhile must lose these references too.
        watch = [self.key("vector_versions"), *(self._ref_key(i) for i in unique_ids)]

        def body(pipe: Any) -> list[Reference]:
            found = [pipe.hgetall(self._ref_key(i)) for i in unique_ids]
            unknown = [i for i, fields in zip(unique_ids, found, strict=True) if not fields]
            if unknown:
                shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise NotFound(
                    f"{len(unknown)} reference id(s) not found: {shown}; nothing was removed"
                )
            removed = [_reference_from_hash(fields) for fields in found]
            versions = [v.decode() for v in pipe.smembers(self.key("vector_versions"))]
            pipe.multi()
            self._delete_references(pipe, removed, versions)
            self._log_change(pipe, "remove_references", references=",".join(unique_ids))
            return removed

        removed = self.transaction(
            body, watch, "if it was, the retry fails with NotFound for these references"
        )
        self._drop_blobs(removed)
        return removed

    def delete_category(self, name: str) -> list[Reference]:
        """Delete a leaf category and all its references; returns the references removed."""
        watch = [
            self._category_key(name),
            self._refs_key(name),
            self._children_key(name),
            self.key("vector_versions"),
        ]

        def body(pipe: Any) -> list[Reference]:
            fields = pipe.hgetall(self._category_key(name))
            if not fields:
                raise NotFound(f"category {name!r} does not exist")
            children = sorted(c.decode() for c in pipe.smembers(self._children_key(name)))
            if children:
                raise FailedPrecondition(
                    f"category {name!r} has child categories ({', '.join(children[:5])}); "
                    "delete them first"
                )
            ids = [i.decode() for i in pipe.smembers(self._refs_key(name))]
            removed = [_reference_from_hash(pipe.hgetall(self._ref_key(i))) for i in ids]
            versions = [v.decode() for v in pipe.smembers(self.key("vector_versions"))]
            parent = fields[b"parent"].decode()
            pipe.multi()
            self._delete_references(pipe, removed, versions)
            pipe.delete(self._category_key(name), self._refs_key(name), self._children_key(name))
            pipe.srem(self.key("categories"), name)
            if parent:
                pipe.srem(self._children_key(parent), name)
            self._log_change(pipe, "delete_category", category=name, references=",".join(ids))
            return removed

        removed = self.transaction(
            body, watch, f"if it was, the retry fails with NotFound (category {name!r})"
        )
        self._drop_blobs(removed)
        return removed

    def _delete_references(
        self, pipe: Any, references: Sequence[Reference], versions: Sequence[str]
    ) -> None:
        """In a removal's transaction; `_drop_blobs` deletes the images after it."""
        self._forget_blobs(pipe, references)
        if references:
            pipe.hdel(self.key("attributes"), *(ref.id for ref in references))
        for ref in references:
            pipe.delete(self._ref_key(ref.id))
            pipe.srem(self._refs_key(ref.category), ref.id)
            for version in versions:
                pipe.hdel(self._vectors_key(version), ref.id)


class BlobStoreMismatch(RuntimeError):
    """The blob store given is not the one that holds this store's images."""


def bind_blobs(client: redis.Redis, prefix: str, url: str | None, default: str) -> Blobs:
    """The blob store of the store at `client`/`prefix`: `url` when given, else the one the
    store recorded, else `default` (which is then recorded). Every blob store carries an id
    (indexer.blobs.MARKER) that the store records, so that a server given another place (a
    replica on another machine without the shared directory, a mistyped bucket) refuses to
    start instead of serving references whose images it cannot find."""
    record_key = f"{prefix}:blobs"
    reply: Any = client.hgetall(record_key)
    recorded = {k.decode(): v.decode() for k, v in reply.items()}
    blobs = open_blobs(url or recorded.get("url") or default)
    marker = blobs.get(MARKER)
    if "id" in recorded:
        if marker is None or marker.decode() != recorded["id"]:
            raise BlobStoreMismatch(
                f"this store's reference images are in the blob store at {recorded['url']} "
                f"(id {recorded['id']}), and {blobs.url} is not it; give --blob-url the same "
                "place (on another machine: the same shared directory, or the same bucket)"
            )
        return blobs
    ident = marker.decode() if marker is not None else uuid.uuid4().hex
    if marker is None:
        blobs.put(MARKER, ident.encode())
    client.hset(record_key, mapping={"url": blobs.url, "id": ident})
    return blobs


def split_duplicates(
    references: Sequence[NewReference], stored: set[str]
) -> tuple[list[NewReference], list[bool]]:
    """The references to write, and per reference whether it is a duplicate (stored already,
    or repeated earlier in the same request)."""
    seen = set(stored)
    new: list[NewReference] = []
    duplicate: list[bool] = []
    for ref in references:
        duplicate.append(ref.id in seen)
        if ref.id not in seen:
            new.append(ref)
            seen.add(ref.id)
    return new, duplicate


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _connection_error(exc: BaseException) -> BaseException | None:
    """The lost connection or timeout behind exc; None for a watched key that changed,
    which redis-py also reports as a WatchError."""
    for error in (exc, exc.__context__):
        if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
            return error
    return None


def _reference_from_hash(fields: dict[bytes, bytes]) -> Reference:
    return Reference(
        id=fields[b"id"].decode(),
        category=fields[b"category"].decode(),
        sha256=fields[b"sha256"].decode(),
        metadata=json.loads(fields[b"metadata"]),
        created_at_ms=int(fields[b"created_at_ms"]),
        blob=fields.get(b"blob", b"").decode(),
        attributes=json.loads(fields.get(b"attributes", b"{}")),
    )
