"""The catalogue: categories defined by reference images, and classification against them.

Plain Python, no gRPC: the servicer translates to and from this. The store is written first;
the index and the parent map are derived and updated only after the store has committed.
"""

from __future__ import annotations

import logging
import time
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from embedder import Embedder, ImageDecodeError
from indexer.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NearcatError,
    NotFound,
)
from indexer.ids import image_sha256, reference_id
from indexer.index import Hit, IndexConfig, VectorIndex
from indexer.store import Category, NewReference, Reference, Store
from indexer.vote import VoteConfig, knn_vote
from server.batcher import MicroBatcher

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
MAX_TOP_N = 100
MAX_K = 1000
MAX_METADATA_BYTES = 16 * 1024
EMBED_BATCH = 32


@dataclass(frozen=True)
class Limits:
    """Request limits: images per call, metadata size."""

    max_images_per_request: int = 256


@dataclass(frozen=True)
class ReferenceInput:
    image: bytes
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredCategory:
    category: str
    score: float
    path: list[str]


@dataclass(frozen=True)
class Prediction:
    categories: list[ScoredCategory]
    neighbors: list[Hit]


@dataclass(frozen=True)
class AddedReference:
    reference_id: str
    sha256: str
    duplicate: bool


@dataclass(frozen=True)
class AddResult:
    category: Category
    references: list[AddedReference]


@dataclass(frozen=True)
class Status:
    model_version: str
    embedding_dim: int
    index_size: int
    category_count: int
    images_embedded: int
    vectors_loaded_at_start: int
    started_at_ms: int


def validate_category_name(name: str, what: str = "category name") -> None:
    if not name:
        raise InvalidArgument(f"{what} is empty; give a name such as 'Shoes'")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgument(
            f"{what} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if name != name.strip():
        raise InvalidArgument(f"{what} {name!r} has leading or trailing spaces; remove them")
    if ">" in name:
        raise InvalidArgument(f"{what} {name!r} contains '>', which is reserved for paths")
    if any(unicodedata.category(ch).startswith("C") for ch in name):
        raise InvalidArgument(f"{what} {name!r} contains control or unprintable characters")


def _check_metadata(metadata: dict[str, str], where: str) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{where}: metadata is {size} bytes; the limit is {MAX_METADATA_BYTES}"
        )
    if any(not k for k in metadata):
        raise InvalidArgument(f"{where}: metadata has an empty key")


def _check_deadline(deadline: float | None, before: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded(f"deadline passed before {before}; nothing was written")


class Catalog:
    """Categories, their references and classification; safe to call from many threads."""

    def __init__(
        self,
        store: Store,
        embedder: Embedder,
        vote: VoteConfig | None = None,
        limits: Limits | None = None,
        batcher: MicroBatcher | None = None,
        index_config: IndexConfig | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.vote = vote or VoteConfig()
        self.limits = limits or Limits()
        self.index = VectorIndex(embedder.dim, index_config)
        self.batcher = batcher or MicroBatcher(embedder.embed_pixels)
        self._parents: dict[str, str | None] = {}
        self._vectors_loaded = 0
        self._started_at_ms = int(time.time() * 1000)

    # -- start-up ------------------------------------------------------------------------

    def load(self, progress: bool = False) -> None:
        """Build the index from the store; embed only references this model has no vector for."""
        version = self.embedder.version
        for category in self.store.list_categories():
            self._parents[category.name] = category.parent
        ids: list[str] = []
        categories: list[str] = []
        missing_ids: list[str] = []
        stored = [np.zeros((0, self.embedder.dim), dtype=np.float32)]
        for batch in self.store.iter_vectors(version):  # one pass: vectors and what lacks one
            missing_ids += batch.missing_ids
            if batch.reference_ids:
                ids += batch.reference_ids
                categories += batch.categories
                stored.append(batch.vectors)
        self.index = VectorIndex.build(
            self.embedder.dim, ids, categories, np.concatenate(stored), self.index.config
        )
        self._vectors_loaded = len(ids)
        missing = [r for r in self.store.get_references(missing_ids) if r is not None]
        if missing:
            log.info("embedding %d references that have no %s vector yet", len(missing), version)
        for start in tqdm(
            range(0, len(missing), EMBED_BATCH),
            desc="embedding",
            disable=not progress or not missing,
        ):
            chunk = missing[start : start + EMBED_BATCH]
            images = [self.store.get_image(ref.id) or b"" for ref in chunk]
            vectors = self._embed(images, [f"stored reference {r.id}" for r in chunk])
            self.store.put_vectors(version, {r.id: v for r, v in zip(chunk, vectors, strict=True)})
            self.index.add([r.id for r in chunk], [r.category for r in chunk], vectors)
        log.info(
            "index ready: %d vectors (%d loaded, %d embedded), model %s",
            len(self.index),
            self._vectors_loaded,
            len(missing),
            version,
        )

    # -- classification ------------------------------------------------------------------

    def classify(
        self,
        images: Sequence[bytes],
        top_n: int = 5,
        k: int | None = None,
        deadline: float | None = None,
    ) -> list[Prediction | NearcatError]:
        """Classify each image; a bad image gets its own error and does not fail the others."""
        self._check_count(images, "images")
        top_n = top_n or 5
        k = k or self.vote.k
        if not 1 <= top_n <= MAX_TOP_N:
            raise InvalidArgument(f"top_n must be between 1 and {MAX_TOP_N}, got {top_n}")
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        if len(self.index) == 0:
            raise FailedPrecondition(
                "no reference images yet: add a category with AddCategory (or `nearcat import`)"
            )
        decoded: list[np.ndarray | NearcatError] = []
        with self.batcher.expecting():
            for i, image in enumerate(images):
                try:
                    decoded.append(self.embedder.decode(image))
                except ImageDecodeError as exc:
                    decoded.append(InvalidArgument(f"image {i}: {exc}"))
            _check_deadline(deadline, "embedding")
            pixels = [d for d in decoded if isinstance(d, np.ndarray)]
            vectors = self._embed_pixels(pixels)
        neighbours = iter(self.index.search(vectors, k))
        return [
            self._predict(next(neighbours), top_n) if isinstance(d, np.ndarray) else d
            for d in decoded
        ]

    def _predict(self, hits: list[Hit], top_n: int) -> Prediction:
        scores = knn_vote(hits, self.vote, top_n)
        return Prediction(
            categories=[ScoredCategory(s.category, s.score, self.path(s.category)) for s in scores],
            neighbors=hits,
        )

    def path(self, category: str) -> list[str]:
        """Ancestors then the category itself."""
        path = [category]
        parent = self._parents.get(category)
        while parent and parent not in path:
            path.append(parent)
            parent = self._parents.get(parent)
        return path[::-1]

    # -- writes --------------------------------------------------------------------------

    def add_category(
        self,
        name: str,
        parent: str | None = None,
        metadata: dict[str, str] | None = None,
        references: Sequence[ReferenceInput] = (),
        deadline: float | None = None,
    ) -> AddResult:
        """Create a category with optional first references; all or nothing."""
        validate_category_name(name)
        if parent:
            validate_category_name(parent, "parent category name")
        if parent == name:
            raise InvalidArgument(f"category {name!r} cannot be its own parent")
        _check_metadata(metadata or {}, f"category {name!r}")
        if self.store.get_category(name) is not None:  # fail before the costly embedding
            raise AlreadyExists(
                f"category {name!r} already exists; use AddReferences to add images to it"
            )
        prepared = self._prepare(name, references, deadline)
        category, duplicate = self.store.create_category(
            name, parent or None, metadata or {}, prepared, self.embedder.version
        )
        self._parents[name] = parent or None
        self._index_new(name, prepared)
        return AddResult(category, _added(prepared, duplicate))

    def add_references(
        self,
        category: str,
        references: Sequence[ReferenceInput],
        deadline: float | None = None,
    ) -> AddResult:
        """Add references to an existing category; all or nothing; duplicates are not stored."""
        validate_category_name(category)
        if not references:
            raise InvalidArgument("no references given: send at least one image")
        if self.store.get_category(category) is None:
            raise NotFound(
                f"category {category!r} does not exist; create it with AddCategory first"
            )
        prepared = self._prepare(category, references, deadline)
        duplicate = self.store.add_references(category, prepared, self.embedder.version)
        self._index_new(category, prepared)
        stored = self.store.get_category(category)
        if stored is None:  # deleted concurrently right after our commit
            raise NotFound(f"category {category!r} was deleted while references were added")
        return AddResult(stored, _added(prepared, duplicate))

    def remove_references(self, reference_ids: Sequence[str]) -> int:
        if not reference_ids:
            raise InvalidArgument("no reference ids given")
        removed = self.store.remove_references(reference_ids)
        self.index.remove([r.id for r in removed])
        return len(removed)

    def delete_category(self, name: str) -> int:
        validate_category_name(name)
        removed = self.store.delete_category(name)
        self.index.remove([r.id for r in removed])
        self._parents.pop(name, None)
        return len(removed)

    # -- reads ---------------------------------------------------------------------------

    def get_category(self, name: str) -> Category:
        validate_category_name(name)
        category = self.store.get_category(name)
        if category is None:
            raise NotFound(f"category {name!r} does not exist")
        return category

    def references(self, name: str) -> list[Reference]:
        ids = self.store.reference_ids(name)
        return [r for r in self.store.get_references(ids) if r is not None]

    def list_categories(self) -> list[Category]:
        return self.store.list_categories()

    def status(self) -> Status:
        return Status(
            model_version=self.embedder.version,
            embedding_dim=self.embedder.dim,
            index_size=len(self.index),
            category_count=len(self.store.category_names()),
            images_embedded=self.batcher.stats().images,
            vectors_loaded_at_start=self._vectors_loaded,
            started_at_ms=self._started_at_ms,
        )

    # -- helpers -------------------------------------------------------------------------

    def _index_new(self, category: str, references: Sequence[NewReference]) -> None:
        # Duplicates too, once each: a write that committed while its reply was lost (store
        # connection dropped) comes back as a duplicate on retry and must still be indexed.
        # The index skips ids it holds already.
        new = list({r.id: r for r in references}.values())
        if new:
            self.index.add(
                [r.id for r in new], [category] * len(new), np.stack([r.vector for r in new])
            )

    def _check_count(self, items: Sequence[object], what: str) -> None:
        if not items:
            raise InvalidArgument(f"no {what} given")
        limit = self.limits.max_images_per_request
        if len(items) > limit:
            raise InvalidArgument(
                f"{len(items)} {what} in one request; the limit is {limit}: split the request"
            )

    def _prepare(
        self, category: str, references: Sequence[ReferenceInput], deadline: float | None
    ) -> list[NewReference]:
        """Decode and embed every reference, or fail naming the first bad one."""
        if not references:
            return []
        self._check_count(references, "references")
        for i, ref in enumerate(references):
            _check_metadata(ref.metadata, f"reference {i}")
        vectors = self._embed(
            [r.image for r in references], [f"reference {i}" for i in range(len(references))]
        )
        _check_deadline(deadline, "writing the references")
        prepared = []
        for ref, vector in zip(references, vectors, strict=True):
            sha = image_sha256(ref.image)
            prepared.append(
                NewReference(
                    id=reference_id(category, sha),
                    sha256=sha,
                    image=ref.image,
                    vector=vector,
                    metadata=dict(ref.metadata),
                )
            )
        return prepared

    def _embed(self, images: Sequence[bytes], labels: Sequence[str]) -> np.ndarray:
        pixels = []
        with self.batcher.expecting():
            for image, label in zip(images, labels, strict=True):
                try:
                    pixels.append(self.embedder.decode(image))
                except ImageDecodeError as exc:
                    raise InvalidArgument(f"{label}: {exc}; nothing was written") from exc
            return self._embed_pixels(pixels)

    def _embed_pixels(self, pixels: list[np.ndarray]) -> np.ndarray:
        if not pixels:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return self.batcher.run(np.stack(pixels))

    def close(self) -> None:
        """Stop the model worker once in-flight calls are done."""
        self.batcher.close()


def _added(references: Sequence[NewReference], duplicate: Sequence[bool]) -> list[AddedReference]:
    return [
        AddedReference(r.id, r.sha256, dup) for r, dup in zip(references, duplicate, strict=True)
    ]
