"""`nearcat bench index`: build time, memory, queries/s and recall of each kind of FAISS index
on synthetic catalogue vectors."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.ids import faiss_id, reference_id
from indexer.index import IndexConfig, VectorIndex
from server.bench.common import catalogue_vectors, machine, print_table, rss_bytes


def _ids_of(index: Any) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda queries, k: index.search(queries, k)[1]


def _search_all(
    search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray, k: int, batch: int
) -> tuple[np.ndarray, float]:
    """Ids found for every query, searched `batch` at a time as the server does; queries/s."""
    found = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        found.append(search(queries[start : start + batch], k))
    return np.concatenate(found), len(queries) / (time.perf_counter() - started)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def _timed_build(make: Callable[[], Any]) -> tuple[Any, float, float]:
    """The built index, seconds taken, and resident memory it added (MB)."""
    before = rss_bytes()
    started = time.perf_counter()
    index = make()
    return index, time.perf_counter() - started, (rss_bytes() - before) / 2**20


def bench_index(
    sizes: Sequence[int],
    dim: int = 512,
    queries: int = 500,
    k: int = 10,
    batch: int = 32,
    nprobes: Sequence[int] = (8, 16, 32, 64),
    ef_searches: Sequence[int] = (32, 64, 128),
    hnsw_m: int = 32,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Flat vs IVF vs HNSW on clustered unit vectors: build time, memory, queries/s, recall@k
    against flat, and how long after `add` a new vector is found (flat and IVF are the
    service's own `VectorIndex`; HNSW is measured as FAISS's IndexHNSWFlat)."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        progress(f"index bench: {n:,} vectors of dimension {dim}")
        rows += _bench_size(n, dim, queries, k, batch, nprobes, ef_searches, hnsw_m)
    columns = ["size", "index", "params", "build_s", "memory_mb", "qps", "recall", "speedup"]
    print_table(rows, [*columns, "add_to_found_ms"])
    return {
        "bench": "index",
        "machine": machine(),
        "dim": dim,
        "queries": queries,
        "k": k,
        "query_batch": batch,
        "data": "synthetic catalogue: 1 category per 1,000 vectors, 1 product per 10; "
        "queries are other photos of indexed products (see catalogue_vectors)",
        "results": rows,
    }


def _bench_size(
    n: int,
    dim: int,
    queries: int,
    k: int,
    batch: int,
    nprobes: Sequence[int],
    ef_searches: Sequence[int],
    hnsw_m: int,
) -> list[dict[str, Any]]:
    data, query = catalogue_vectors(n, dim, queries, seed=n)
    reference_ids = [reference_id("bench", str(i)) for i in range(n)]
    position = {faiss_id(r): i for i, r in enumerate(reference_ids)}

    def positions(found: np.ndarray) -> np.ndarray:
        return np.array([[position.get(int(i), -1) for i in row] for row in found])

    rows: list[dict[str, Any]] = []
    flat_qps = 0.0
    truth = np.zeros((0, k), dtype=np.int64)
    for kind, sweep in (("flat", [0]), ("ivf", list(nprobes))):
        config = IndexConfig(kind)
        index, build_s, memory_mb = _timed_build(
            lambda: VectorIndex.build(dim, reference_ids, ["c"] * n, data, config, use_gpu=False)  # noqa: B023
        )
        add_ms = _add_to_found_ms(index, dim)
        raw = index._index
        for nprobe in sweep:
            if kind == "ivf":
                raw.nprobe = nprobe
            found, qps = _search_all(_ids_of(raw), query, k, batch)
            if kind == "flat":
                truth, flat_qps = positions(found), qps
            rows.append(
                {
                    "size": n,
                    "index": kind,
                    "params": f"nlist={raw.nlist} nprobe={nprobe}" if kind == "ivf" else "",
                    "build_s": build_s,
                    "memory_mb": memory_mb,
                    "qps": qps,
                    "recall": _recall(positions(found), truth),
                    "speedup": qps / flat_qps,
                    "add_to_found_ms": add_ms,
                }
            )
        del index, raw

    import faiss

    hnsw, build_s, memory_mb = _timed_build(lambda: _hnsw(faiss, data, hnsw_m))
    for ef in ef_searches:
        hnsw.hnsw.efSearch = ef
        found, qps = _search_all(_ids_of(hnsw), query, k, batch)
        rows.append(
            {
                "size": n,
                "index": "hnsw",
                "params": f"M={hnsw_m} efSearch={ef}",
                "build_s": build_s,
                "memory_mb": memory_mb,
                "qps": qps,
                "recall": _recall(found, truth),  # HNSW ids are positions already
                "speedup": qps / flat_qps,
            }
        )
    return rows


def _hnsw(faiss: Any, data: np.ndarray, m: int) -> Any:
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.add(data)
    return index


def _add_to_found_ms(index: VectorIndex, dim: int) -> float:
    """Time from add() of a new vector until a search returns it as the nearest."""
    vector, _ = catalogue_vectors(1, dim, 0, seed=12345)
    new_id = reference_id("bench-new", "1")
    started = time.perf_counter()
    index.add([new_id], ["new"], vector)
    [[hit, *_]] = index.search(vector, 1)
    elapsed = (time.perf_counter() - started) * 1000
    if hit.reference_id != new_id:
        raise AssertionError("the vector just added was not found")
    return elapsed
