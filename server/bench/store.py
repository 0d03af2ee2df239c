"""`nearcat bench store`: what a reference costs the store, and how long a start takes.

Writes synthetic references through the real `Store` (images to a blob directory, vectors
and metadata to an embedded Valkey), then reads them back as a starting server does
(`Store.iter_vectors` into a `VectorIndex` of the kind the server would build, as
`Catalog.fill` does when every vector is stored). Per vector type: Redis memory per
reference, start-up load time, and the recall that float16 costs against float32 (exact
neighbours of the vectors as stored, on the same queries). 1 M is extrapolated from the
largest size measured (both grow linearly).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.blobs import DirBlobs
from indexer.embedded import EmbeddedValkey
from indexer.ids import image_sha256, reference_id
from indexer.index import IndexConfig, VectorIndex
from indexer.store import NewReference, Store
from server.bench.common import catalogue_vectors, machine, print_table

VERSION = "bench"
PER_CATEGORY = 1000  # references per category, written one category per transaction
EXTRAPOLATE_TO = 1_000_000


def bench_store(
    sizes: Sequence[int],
    dim: int = 512,
    queries: int = 500,
    k: int = 10,
    dtypes: Sequence[str] = ("float32", "float16"),
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    # Images go to memory where it can (/dev/shm): this bench is about Redis, and an fsync
    # per image would make 100k references take many minutes for nothing measured here.
    shm = Path("/dev/shm")
    with (
        tempfile.TemporaryDirectory(prefix="nearcat-bench-store-") as tmp,
        tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as blob_dir,
    ):
        blob_root = Path(blob_dir)
        valkey = EmbeddedValkey(Path(tmp) / "data", timeout_s=60)
        client = valkey.start()
        try:
            for n in sizes:
                vectors, asked = catalogue_vectors(n, dim, queries, seed=n)
                truth = None
                for dtype in dtypes:
                    progress(f"store bench: {n:,} references, {dtype} vectors")
                    store = Store(
                        client,
                        f"bench-{dtype}-{n}",
                        blobs=DirBlobs(blob_root / f"{dtype}-{n}"),
                        vector_dtype=dtype,
                    )
                    row = _bench_one(store, client, vectors, asked, k)
                    found = row.pop("found")
                    if truth is None:
                        truth = found
                    overlap = [len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]
                    row["recall_vs_first"] = round(float(np.mean(overlap)), 4)
                    rows.append({"references": n, "vector_dtype": dtype, **row})
                    client.flushdb()
        finally:
            valkey.stop()
    largest = max(sizes)
    for row in rows:
        if row["references"] == largest:
            scale = EXTRAPOLATE_TO / largest
            per_reference = row["redis_bytes_per_reference"]
            row["memory_mb_at_1m"] = round(per_reference * EXTRAPOLATE_TO / 2**20)
            row["load_s_at_1m"] = round(row["load_s"] * scale, 1)
    print_table(
        rows,
        [
            "references",
            "vector_dtype",
            "write_refs_per_s",
            "redis_bytes_per_reference",
            "vector_bytes_per_reference",
            "load_s",
            "index_kind",
            "recall_vs_first",
            "memory_mb_at_1m",
            "load_s_at_1m",
        ],
    )
    return {
        "bench": "store",
        "machine": machine(),
        "dim": dim,
        "k": k,
        "queries": queries,
        "data": "synthetic catalogue vectors (see benchmarks.catalogue_vectors); images of "
        "64 bytes to a blob directory in memory (/dev/shm): Redis holds what it would for "
        "real photos; write_refs_per_s leaves out the images' disk",
        "memory": "MEMORY USAGE summed over the store's keys",
        "recall": f"recall@{k} of each type's index against the first type's, same queries",
        "results": rows,
    }


def _memory_of(client: Any, pattern: str) -> int:
    """Bytes Redis holds for the keys matching `pattern` (MEMORY USAGE, counted exactly)."""
    total = 0
    batch: list[bytes] = []
    for key in [*client.scan_iter(match=pattern, count=1000), None]:
        if key is not None:
            batch.append(key)
        if batch and (key is None or len(batch) == 1000):
            pipe = client.pipeline(transaction=False)
            for name in batch:
                pipe.memory_usage(name, samples=0)
            total += sum(int(b or 0) for b in pipe.execute())
            batch = []
    return total


def _bench_one(
    store: Store, client: Any, vectors: np.ndarray, queries: np.ndarray, k: int
) -> dict[str, Any]:
    n = len(vectors)
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, n, PER_CATEGORY):
        category = f"category-{start // PER_CATEGORY}"
        refs = []
        for i in range(start, min(n, start + PER_CATEGORY)):
            image = rng.bytes(64)
            sha = image_sha256(image)
            refs.append(NewReference(reference_id(category, sha), sha, image, vectors[i]))
        store.create_category(category, None, {}, refs, VERSION)
    write_s = time.perf_counter() - started
    used = _memory_of(client, store.key_pattern)
    vector_bytes = int(client.memory_usage(store.key("vec", VERSION)) or 0)

    started = time.perf_counter()
    ids: list[str] = []
    categories: list[str] = []
    stored = [np.zeros((0, vectors.shape[1]), dtype=np.float32)]
    for batch in store.iter_vectors(VERSION):
        ids += batch.reference_ids
        categories += batch.categories
        stored.append(batch.vectors)
    matrix = np.concatenate(stored)
    index = VectorIndex.build(
        vectors.shape[1], ids, categories, matrix, IndexConfig(), use_gpu=False
    )
    load_s = time.perf_counter() - started
    del index
    # Exact neighbours of the vectors as stored: the recall float16 costs, apart from any
    # approximation of the index kind.
    nearest = np.argsort(-(queries @ matrix.T), axis=1)[:, :k]
    found = [[ids[j] for j in row] for row in nearest]
    return {
        "write_refs_per_s": round(n / write_s),
        "redis_bytes_per_reference": round(used / n),
        "vector_bytes_per_reference": round(vector_bytes / n),
        "load_s": round(load_s, 2),
        "index_kind": IndexConfig().kind_for(n),
        "found": found,
    }
