"""The vector index: FAISS inner product over unit vectors, i.e. cosine similarity.

Derived state: it is built from the store at start-up and updated after every committed
write, never written to first. Reference ids map one-to-one onto FAISS int64 ids
(`indexer.ids`), so no id table needs to be kept in step.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from faiss.contrib.inspect_tools import get_invlist

from indexer.ids import faiss_id, reference_id_of_faiss

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hit:
    reference_id: str
    category: str
    similarity: float


# FAISS warns below 39 training points per IVF list.
MIN_TRAIN_PER_LIST = 39


@dataclass(frozen=True)
class IndexConfig:
    """Which FAISS index serves searches.

    Flat scans every vector: exact, and fast enough up to about a hundred thousand. IVF
    clusters the vectors into `nlist` lists and scans only the `nprobe` nearest lists, for
    larger sets. The kind is chosen when the index is built from the store (at start-up) and
    when a reindex has filled its new index (`VectorIndex.resized`): a set that grows past
    the threshold while serving switches at the next start or reindex.
    """

    kind: str = "auto"  # auto | flat | ivf
    ivf_threshold: int = 100_000
    nlist: int = 0  # 0: sqrt(number of vectors)
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in {"auto", "flat", "ivf"}:
            raise ValueError(f"index kind must be auto, flat or ivf, not {self.kind!r}")

    def kind_for(self, size: int) -> str:
        """The kind that serves `size` vectors. IVF lists are trained on the vectors, so
        fewer than MIN_TRAIN_PER_LIST are served flat whatever the configured kind."""
        if size < MIN_TRAIN_PER_LIST:
            return "flat"
        if self.kind != "auto":
            return self.kind
        return "ivf" if size >= self.ivf_threshold else "flat"


def make_faiss_index(dim: int, config: IndexConfig, training: np.ndarray) -> faiss.Index:
    """An empty id-mapped inner-product index; IVF is trained on `training`."""
    if config.kind_for(len(training)) == "flat":
        if config.kind == "ivf":
            log.info(
                "flat index: %d vectors are too few to train IVF lists on (%d needed); "
                "IVF once the index is rebuilt with more",
                len(training),
                MIN_TRAIN_PER_LIST,
            )
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    nlist = config.nlist or int(np.sqrt(len(training)))
    nlist = max(1, min(nlist, len(training) // MIN_TRAIN_PER_LIST))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    # A sample of 64 points per list and 10 k-means rounds place the lists well enough;
    # FAISS's defaults (256 per list, 25 rounds) cost minutes of start-up at 1M vectors.
    index.cp.niter = 10
    sample = training
    if len(training) > 64 * nlist:
        rows = np.random.default_rng(0).choice(len(training), 64 * nlist, replace=False)
        sample = training[np.sort(rows)]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.nprobe = min(config.nprobe, nlist)
    return index


def _gpu_count() -> int:
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


class VectorIndex:
    """Inner-product search with live adds and removes; thread-safe.

    With a FAISS GPU build and a GPU present, searches run on a GPU copy of the index that
    follows adds directly and is re-copied after removals (GPU indexes cannot remove).
    """

    def __init__(
        self,
        dim: int,
        config: IndexConfig | None = None,
        use_gpu: bool | None = None,
        training: np.ndarray | None = None,
    ) -> None:
        self.dim = dim
        self.config = config or IndexConfig()
        if training is None:
            training = np.zeros((0, dim), dtype=np.float32)
        self._index = make_faiss_index(dim, self.config, training)
        self.kind = "flat" if isinstance(self._index, faiss.IndexIDMap2) else "ivf"
        self._category_of: dict[int, str] = {}
        self._ids_of: dict[str, set[int]] = {}  # each category's FAISS ids
        self._lock = threading.Lock()
        self._gpu_resources: Any = None
        self._gpu_index: Any = None
        if use_gpu is None:
            use_gpu = _gpu_count() > 0
        if use_gpu:
            self._gpu_resources = faiss.StandardGpuResources()
            log.info("FAISS index on GPU")

    @classmethod
    def build(
        cls,
        dim: int,
        reference_ids: Sequence[str],
        categories: Sequence[str],
        vectors: np.ndarray,
        config: IndexConfig | None = None,
        use_gpu: bool | None = None,
    ) -> VectorIndex:
        """An index holding these vectors, of the kind their number calls for."""
        index = cls(dim, config, use_gpu, training=vectors)
        index.add(reference_ids, categories, vectors)
        log.info("%s index built over %d vectors", index.kind, len(index))
        return index

    def resized(self) -> VectorIndex:
        """A new index of the kind this one's size calls for, built from its vectors with the
        same config and GPU use; itself when it is that kind already. The kind is chosen at
        build time, so an index filled by adds (a reindex's starts from no vectors) stays
        flat however large it grows until resized. The new index holds what this one held
        at the call: adds and removes made meanwhile must be made again on it."""
        with self._lock:
            if self.config.kind_for(len(self)) == self.kind:
                return self
            ids, vectors = self._contents()
            categories = [self._category_of[i] for i in ids.tolist()]
        return VectorIndex.build(
            self.dim,
            [reference_id_of_faiss(i) for i in ids.tolist()],
            categories,
            vectors,
            self.config,
            use_gpu=self._gpu_resources is not None,
        )

    def _contents(self) -> tuple[np.ndarray, np.ndarray]:
        """The FAISS ids held and their vectors, read back from the CPU index."""
        if isinstance(self._index, faiss.IndexIDMap2):
            ids = faiss.vector_to_array(self._index.id_map)
            return ids, self._index.index.reconstruct_n(0, len(ids))
        ivf = faiss.extract_index_ivf(self._index)
        lists = [get_invlist(ivf.invlists, n) for n in range(ivf.nlist)]
        ids = np.concatenate([i for i, _ in lists])
        codes = np.concatenate([c for _, c in lists])  # IVFFlat codes are the float32 vectors
        return ids, codes.view(np.float32).reshape(len(ids), self.dim)

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(
        self, reference_ids: Sequence[str], categories: Sequence[str], vectors: np.ndarray
    ) -> None:
        """Add the references not held yet; of an id given twice, the first is kept (FAISS
        itself would hold both, and search would return the reference twice)."""
        if len(reference_ids) == 0:
            return
        ids = np.array([faiss_id(r) for r in reference_ids], dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        with self._lock:
            first: dict[int, int] = {}
            for row, i in enumerate(ids.tolist()):
                first.setdefault(i, row)
            fresh = [row for i, row in first.items() if i not in self._category_of]
            ids, vectors = ids[fresh], vectors[fresh]
            self._index.add_with_ids(vectors, ids)
            if self._gpu_index is not None:
                self._gpu_index.add_with_ids(vectors, ids)
            for i, row in zip(ids.tolist(), fresh, strict=True):
                self._category_of[i] = categories[row]
                self._ids_of.setdefault(categories[row], set()).add(i)

    def remove(self, reference_ids: Sequence[str]) -> None:
        ids = np.array([faiss_id(r) for r in reference_ids], dtype=np.int64)
        with self._lock:
            self._index.remove_ids(ids)  # type: ignore[arg-type]  # faiss accepts arrays
            for i in ids.tolist():
                category = self._category_of.pop(i, None)
                if category is not None:
                    held = self._ids_of[category]
                    held.discard(i)
                    if not held:
                        del self._ids_of[category]
            self._gpu_index = None

    def reference_ids(self) -> set[str]:
        with self._lock:
            return {reference_id_of_faiss(i) for i in self._category_of}

    def holds(self, reference_ids: Sequence[str]) -> list[str]:
        """Those of these (well-formed) reference ids that the index holds."""
        with self._lock:
            return [i for i in reference_ids if faiss_id(i) in self._category_of]

    def reference_ids_of(self, category: str) -> set[str]:
        """The ids held for one category."""
        with self._lock:
            return {reference_id_of_faiss(i) for i in self._ids_of.get(category, ())}

    def members(self) -> dict[str, set[str]]:
        """Every category's reference ids (for calibration, not every call)."""
        with self._lock:
            return {
                category: {reference_id_of_faiss(i) for i in ids}
                for category, ids in self._ids_of.items()
            }

    def relabel(self, old: str, new: str) -> None:
        """Category `old` is now called `new` (a rename): its vectors stay as they are."""
        with self._lock:
            moved = self._ids_of.pop(old, set())
            for i in moved:
                self._category_of[i] = new
            if moved:
                self._ids_of.setdefault(new, set()).update(moved)

    def categories(self) -> set[str]:
        """The categories with at least one vector in the index."""
        with self._lock:
            return set(self._ids_of)

    def count(self, category: str) -> int:
        """Vectors of one category in the index."""
        with self._lock:
            return len(self._ids_of.get(category, ()))

    def search(
        self, queries: np.ndarray, k: int, within: Collection[str] | None = None
    ) -> list[list[Hit]]:
        """The k nearest references of each query, nearest first; with `within`, the k
        nearest of those categories' references only."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        with self._lock:
            params = None
            size = len(self)
            if within is not None:
                params, size = self._restricted(within)
            k = min(k, size)
            if k == 0 or len(queries) == 0:
                return [[] for _ in range(len(queries))]
            if params is None:
                similarities, ids = self._searcher().search(queries, k)
            else:  # GPU indexes take no selector: the CPU index answers
                # Once faiss.contrib.torch_utils is imported (pytorch-metric-learning does,
                # for training), `search` takes no `params`; the numpy search it wraps does.
                search = getattr(self._index, "search_numpy", self._index.search)
                similarities, ids = search(queries, k, params=params)
            categories = self._category_of
            return [
                [
                    Hit(reference_id_of_faiss(i), categories[i], float(s))
                    for s, i in zip(row_s, row_i, strict=True)
                    if i >= 0
                ]
                for row_s, row_i in zip(similarities.tolist(), ids.tolist(), strict=True)
            ]

    def _restricted(self, within: Collection[str]) -> tuple[faiss.SearchParameters, int]:
        """Search parameters that see only `within`'s references, and how many there are.
        IVF probes more lists the smaller their share, so that as many of them are scanned as
        an unrestricted search scans of all."""
        held = [self._ids_of[c] for c in within if c in self._ids_of]
        size = sum(len(ids) for ids in held)
        chosen = np.fromiter(itertools.chain.from_iterable(held), np.int64, size)
        selector = faiss.IDSelectorBatch(chosen)
        if isinstance(self._index, faiss.IndexIDMap2):
            # The stubs lack the keyword constructor faiss's Python layer adds.
            return faiss.SearchParameters(sel=selector), size  # type: ignore[call-arg]
        ivf = faiss.extract_index_ivf(self._index)
        share = size / max(1, len(self))
        nprobe = min(ivf.nlist, math.ceil(ivf.nprobe / max(share, 1e-9)))
        return faiss.SearchParametersIVF(sel=selector, nprobe=nprobe), size  # type: ignore[call-arg]

    def _searcher(self) -> faiss.Index:
        if self._gpu_resources is None:
            return self._index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, self._index)
        return self._gpu_index
