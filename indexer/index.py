"""The vector index: FAISS inner product over unit vectors, i.e. cosine similarity.

Derived state: it is built from the store at start-up and updated after every committed
write, never written to first. Reference ids map one-to-one onto FAISS int64 ids
(`indexer.ids`), so no id table needs to be kept in step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from indexer.ids import faiss_id, reference_id_of_faiss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    reference_id: str
    category: str
    similarity: float


def _gpu_count() -> int:
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


class VectorIndex:
    """Exact (flat) inner-product search with live adds and removes; thread-safe.

    With a FAISS GPU build and a GPU present, searches run on a GPU copy of the index that
    follows adds directly and is re-copied after removals (GPU flat indexes cannot remove).
    """

    def __init__(self, dim: int, use_gpu: bool | None = None) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._category_of: dict[int, str] = {}
        self._lock = threading.Lock()
        self._gpu_resources: Any = None
        self._gpu_index: Any = None
        if use_gpu is None:
            use_gpu = _gpu_count() > 0
        if use_gpu:
            self._gpu_resources = faiss.StandardGpuResources()
            log.info("FAISS index on GPU")

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(
        self, reference_ids: Sequence[str], categories: Sequence[str], vectors: np.ndarray
    ) -> None:
        if len(reference_ids) == 0:
            return
        ids = np.array([faiss_id(r) for r in reference_ids], dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            fresh = np.array([i not in self._category_of for i in ids])
            ids, vectors = ids[fresh], vectors[fresh]
            self._index.add_with_ids(vectors, ids)
            if self._gpu_index is not None:
                self._gpu_index.add_with_ids(vectors, ids)
            for i, category in zip(
                ids.tolist(), np.asarray(categories)[fresh].tolist(), strict=True
            ):
                self._category_of[i] = category

    def remove(self, reference_ids: Sequence[str]) -> None:
        ids = np.array([faiss_id(r) for r in reference_ids], dtype=np.int64)
        with self._lock:
            self._index.remove_ids(ids)  # type: ignore[arg-type]  # faiss accepts arrays
            for i in ids.tolist():
                self._category_of.pop(i, None)
            self._gpu_index = None

    def search(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """The k nearest references of each query, nearest first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            k = min(k, len(self))
            if k == 0 or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            similarities, ids = self._searcher().search(queries, k)
            categories = self._category_of
            return [
                [
                    Hit(reference_id_of_faiss(i), categories[i], float(s))
                    for s, i in zip(row_s, row_i, strict=True)
                    if i >= 0
                ]
                for row_s, row_i in zip(similarities.tolist(), ids.tolist(), strict=True)
            ]

    def _searcher(self) -> faiss.Index:
        if self._gpu_resources is None:
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
        return self._gpu_index
