"""Benchmarks behind `nearcat bench`: each returns a JSON-able dict and prints a table.

Numbers are only comparable on the same machine: every result records the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from indexer.ids import faiss_id, reference_id
from indexer.index import IndexConfig, VectorIndex


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- index -----------------------------------------------------------------------------------


def catalogue_vectors(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like a catalogue's embeddings, and held-out query photos.

    Categories (one per 1,000 vectors) are made of products (one per 10 vectors), each seen
    in several photos; a query is another photo of an indexed product. Uniformly random
    vectors would be a misleading benchmark: in high dimension all their distances are nearly
    equal, so no approximate index can find "the" neighbours.
    """
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(dim)  # noise of norm about 1 per unit of `scale`, in any dimension
    categories = rng.standard_normal((max(10, n // 1000), dim)).astype(np.float32) * scale
    products = categories[rng.integers(0, len(categories), max(1, n // 10))]
    products += rng.standard_normal(products.shape).astype(np.float32) * (0.7 * scale)

    def photos(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):  # in chunks, to bound peak memory at 1M
            stop = min(count, start + 100_000)
            chunk = products[rng.integers(0, len(products), stop - start)]
            chunk += rng.standard_normal(chunk.shape).astype(np.float32) * (0.35 * scale)
            out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out

    return photos(n), photos(queries)


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
