"""The catalogue: categories defined by reference images, and classification against them.

Plain Python, no gRPC: the servicer translates to and from this. The store is written first;
the index and the parent map are derived and updated only after the store has committed.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from embedder import Embedder, ImageDecodeError
from indexer.calibration import Calibration, LabelledVote, fit_calibration
from indexer.decision import Decision, DecisionPolicy
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
from indexer.taxonomy import LevelScore, level_scores, path_of
from indexer.vote import CategoryScore, VoteConfig, knn_vote
from server.batcher import MicroBatcher

if TYPE_CHECKING:
    from embedder.text import TextTower

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
MAX_TOP_N = 100
MAX_K = 1000
MAX_METADATA_BYTES = 16 * 1024
MAX_PROMPTS = 32
MAX_PROMPT_LENGTH = 300
MAX_LABELS = 256
EMBED_BATCH = 32
REVIEW_CANDIDATES = 3  # a person reviewing an uncertain image picks from this many
CALIBRATION_EXAMPLES = 2000  # references sampled for the leave-one-out fit
# Extra neighbours fetched in the leave-one-out fit, so that k remain after dropping the image
# itself and its group (e.g. the same sender's other photos).
CALIBRATION_EXTRA_NEIGHBOURS = 100


@dataclass(frozen=True)
class Limits:
    """Request limits: images per call, metadata size."""

    max_images_per_request: int = 256


@dataclass(frozen=True)
class Batching:
    """How the model worker groups concurrent calls (see server.batcher)."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    on_batch: Callable[[int], None] | None = None  # told each batch's size (metrics)


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
    """One image's answer: calibrated category probabilities, best first, what to do with it,
    the most probable node at each taxonomy level, and the nearest references as evidence."""

    categories: list[ScoredCategory]
    neighbors: list[Hit]
    decision: Decision = Decision.REVIEW
    levels: list[LevelScore] = field(default_factory=list)
    # The deepest ancestor of the answer that is sure enough to auto-accept when the answer
    # itself is not: "certainly Shoes, maybe Sneakers".
    confident_ancestor: LevelScore | None = None

    @property
    def confidence(self) -> float:
        return self.categories[0].score if self.categories else 0.0


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class TextSearch:
    categories: list[ScoredCategory]  # by how well their prompts (or names) match the text
    references: list[Hit]  # nearest reference images to the text, when the model can say


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
    calibration: Calibration
    text_model: str


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
        batching: Batching | None = None,
        index_config: IndexConfig | None = None,
        decisions: DecisionPolicy | None = None,
        text: TextTower | None = None,
        prompt_weight: float = 3.0,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.vote = vote or VoteConfig()
        self.limits = limits or Limits()
        self.index = VectorIndex(embedder.dim, index_config)
        self.decisions = decisions or DecisionPolicy()
        self.calibration = Calibration()
        self.text = text
        self.prompt_weight = prompt_weight
        batching = batching or Batching()
        self.batcher = MicroBatcher(
            self.model_rows, batching.max_batch, batching.max_wait_ms, batching.on_batch
        )
        self._parents: dict[str, str | None] = {}
        # Text vectors: of categories with prompts (encoded when they are added), and of the
        # others' names (encoded only once text is needed: the text model is big to load).
        # Only categories with prompts take text evidence into account; names compete.
        self._text_lock = threading.Lock()
        self._prompted: dict[str, np.ndarray] = {}
        self._names: dict[str, np.ndarray] = {}
        self._text_matrix: tuple[list[str], np.ndarray] | None = None
        self._vectors_loaded = 0
        self._started_at_ms = int(time.time() * 1000)

    def model_rows(self, pixels: np.ndarray) -> np.ndarray:
        """What the model worker runs: embeddings, followed by the image's semantic vector
        (for text prompts) when there is a text tower; `_split_rows` takes them apart."""
        if self.text is None:
            return self.embedder.embed_pixels(pixels)
        vectors, semantics = self.embedder.embed_pixels_with_semantics(pixels)
        return np.hstack([vectors, semantics]).astype(np.float32, copy=False)

    def _split_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows[:, : self.embedder.dim], rows[:, self.embedder.dim :]

    # -- start-up ------------------------------------------------------------------------

    def load(self, progress: bool = False) -> None:
        """Build the index from the store; embed only references this model has no vector for."""
        version = self.embedder.version
        categories_now = self.store.list_categories()
        for category in categories_now:
            self._parents[category.name] = category.parent
        self._set_texts([c for c in categories_now if c.prompts])
        self.calibration = Calibration.from_json(self.store.get_calibration(version) or {})
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
            vectors, _ = self._embed(images, [f"stored reference {r.id}" for r in chunk])
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
        if len(self.index) == 0 and not self._prompted:
            raise FailedPrecondition(
                "no reference images yet: add a category with AddCategory (or `nearcat import`)"
            )
        with self.batcher.expecting():
            decoded = self._decode_each(images)
            _check_deadline(deadline, "embedding")
            vectors, semantics = self._embed_decoded(decoded)
        neighbours = iter(self.index.search(vectors, k))
        meanings = iter(semantics)
        return [
            self._predict(next(neighbours), next(meanings), top_n)
            if isinstance(d, np.ndarray)
            else d
            for d in decoded
        ]

    def _predict(self, hits: list[Hit], semantic: np.ndarray, top_n: int) -> Prediction:
        scores = knn_vote(hits, self.vote, MAX_K)  # every category that got a vote
        if self._prompted and self.text is not None:
            scores = self._with_text_evidence(scores, semantic)
        scores = self.calibration.apply(scores)
        if not scores:
            return Prediction([], hits, Decision.UNKNOWN)
        top = scores[0]
        # Only image evidence can say "unlike anything here": a category known from text
        # alone has no references to be far from.
        nearest = hits[0].similarity if hits and self.index.count(top.category) else 1.0
        decision = self.decisions.decide(
            top.category, top.score, nearest, self.calibration.unknown_below
        )
        levels = level_scores(scores, self._parents)
        if decision in (Decision.REVIEW, Decision.UNKNOWN):
            top_n = max(top_n, REVIEW_CANDIDATES)
        return Prediction(
            categories=[ScoredCategory(c.category, c.score, self.path(c.category)) for c in scores][
                :top_n
            ],
            neighbors=hits,
            decision=decision,
            levels=levels,
            confident_ancestor=self._confident_ancestor(decision, top.category, levels),
        )

    def _confident_ancestor(
        self, decision: Decision, answer: str, levels: list[LevelScore]
    ) -> LevelScore | None:
        if decision in (Decision.AUTO_ACCEPT, Decision.UNKNOWN):
            return None
        sure = [
            level
            for level in levels
            if level.category != answer
            and level.score >= self.decisions.thresholds(level.category).auto_accept
        ]
        return sure[-1] if sure else None

    def _with_text_evidence(
        self, image_scores: list[CategoryScore], semantic: np.ndarray
    ) -> list[CategoryScore]:
        """Mix in text evidence for categories that have prompts.

        The text tower scores the image against every category's text (its prompts, or its
        name) as a softmax over categories: text(c). A category with prompts claims
        w_c * text(c) of the probability, where w_c = m / (m + its reference count) and m is
        `prompt_weight`: all of its text share at first, fading as reference images arrive.
        The rest, 1 - sum of the claims, is shared out by the image vote, each category's
        share weighted by 1 - w_c. So a category known from text alone can win outright when
        the text is sure, and without prompts nothing changes.
        """
        assert self.text is not None
        matrix = self._text_snapshot()
        if matrix is None:
            return image_scores
        names, vectors = matrix
        logits = self.text.logit_scale * (vectors @ semantic)
        text_share = np.exp(logits - logits.max())
        text_share /= text_share.sum()
        weight = {
            name: self.prompt_weight / (self.prompt_weight + self.index.count(name))
            for name in names
            if name in self._prompted
        }
        claimed = {
            name: weight[name] * share
            for name, share in zip(names, text_share.tolist(), strict=True)
            if name in weight
        }
        image = {s.category: (1 - weight.get(s.category, 0.0)) * s.score for s in image_scores}
        image_total = sum(image.values())
        left = 1.0 - sum(claimed.values())
        mixed = dict(claimed)  # with no image evidence at all, the claims are all there is
        if image_total > 0:
            for name, value in image.items():
                mixed[name] = mixed.get(name, 0.0) + left * value / image_total
        total = sum(mixed.values())
        if total <= 0:
            return image_scores
        ranked = sorted(mixed.items(), key=lambda item: (-item[1], item[0]))
        return [CategoryScore(name, value / total) for name, value in ranked if value > 0]

    def path(self, category: str) -> list[str]:
        """Ancestors then the category itself."""
        return path_of(category, self._parents)

    # -- text ----------------------------------------------------------------------------

    def _require_text(self) -> TextTower:
        if self.text is None:
            raise FailedPrecondition(
                f"model {self.embedder.version} has no text tower, so text prompts cannot be "
                "used; add reference images instead, or serve a model with one "
                "(the packaged efficientnet_lite0 or a CLIP model)"
            )
        return self.text

    def _encode_text(self, texts: Sequence[str]) -> np.ndarray:
        text = self._require_text()
        try:
            return text.encode(list(texts))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def _set_texts(self, categories: Sequence[Category]) -> None:
        """Encode the prompts of these categories."""
        if self.text is not None and categories:
            self._remember_prompts(categories, self._prompt_vectors(categories))

    def _prompt_vectors(self, categories: Sequence[Category]) -> list[np.ndarray]:
        """One unit vector per category: the mean of its prompts' vectors (a prompt ensemble)."""
        texts = [c.prompts for c in categories]
        flat = self._encode_text([t for group in texts for t in group])
        vectors, start = [], 0
        for group in texts:
            vectors.append(_unit(flat[start : start + len(group)].mean(axis=0)))
            start += len(group)
        return vectors

    def _remember_prompts(self, categories: Sequence[Category], vectors: list[np.ndarray]) -> None:
        with self._text_lock:
            for category, vector in zip(categories, vectors, strict=True):
                self._prompted[category.name] = vector
            self._text_matrix = None

    def _forget_text_matrix(self) -> None:
        with self._text_lock:
            self._text_matrix = None

    def _drop_text(self, name: str) -> None:
        with self._text_lock:
            self._prompted.pop(name, None)
            self._names.pop(name, None)
            self._text_matrix = None

    def _text_snapshot(self) -> tuple[list[str], np.ndarray] | None:
        """(category names, their text vectors): prompts where given, else the name."""
        with self._text_lock:
            if self._text_matrix is not None:
                return self._text_matrix
            names = sorted(self._parents)
            unencoded = [n for n in names if n not in self._prompted and n not in self._names]
        if unencoded:  # outside the lock: encoding takes a while
            encoded = self._encode_text(unencoded)
        with self._text_lock:
            if unencoded:
                self._names.update(zip(unencoded, encoded, strict=True))
            names = [n for n in sorted(self._parents) if n in self._prompted or n in self._names]
            if not names:
                return None
            vectors = [self._prompted.get(n, self._names.get(n)) for n in names]
            self._text_matrix = (names, np.stack([v for v in vectors if v is not None]))
            return self._text_matrix

    def zero_shot(self, image: bytes, labels: Sequence[str]) -> list[LabelScore]:
        """Rank free-text labels for one image, no references needed; best first."""
        text = self._require_text()
        if not labels:
            raise InvalidArgument("no labels given: send the candidate labels to rank")
        if len(labels) > MAX_LABELS:
            raise InvalidArgument(f"{len(labels)} labels; the limit is {MAX_LABELS}")
        for i, label in enumerate(labels):
            _check_text(label, f"label {i}")
        label_vectors = self._encode_text(labels)
        with self.batcher.expecting():
            [decoded] = self._decode_each([image])
            if not isinstance(decoded, np.ndarray):
                raise decoded
            _, semantics = self._embed_decoded([decoded])
        logits = text.logit_scale * (label_vectors @ semantics[0])
        shares = np.exp(logits - logits.max())
        shares /= shares.sum()
        ranked = sorted(zip(labels, shares.tolist(), strict=True), key=lambda p: -p[1])
        return [LabelScore(label, score) for label, score in ranked]

    def search_by_text(self, query: str, top_n: int = 5, k: int | None = None) -> TextSearch:
        """Categories whose text matches the query, and the reference images nearest to it."""
        text = self._require_text()
        _check_text(query, "text")
        top_n = top_n or 5
        k = k or self.vote.k
        if not 1 <= top_n <= MAX_TOP_N or not 1 <= k <= MAX_K:
            raise InvalidArgument(f"top_n must be 1..{MAX_TOP_N} and k 1..{MAX_K}")
        vector = self._encode_text([query])
        categories: list[ScoredCategory] = []
        matrix = self._text_snapshot()
        if matrix is not None:
            names, vectors = matrix
            similarity = vectors @ vector[0]
            order = np.argsort(-similarity)[:top_n]
            categories = [
                ScoredCategory(names[i], float(similarity[i]), self.path(names[i])) for i in order
            ]
        queries = text.image_queries(vector)
        references = self.index.search(queries, k)[0] if queries is not None else []
        return TextSearch(categories, references)

    # -- calibration ---------------------------------------------------------------------

    def calibrate(
        self, group_by: str | None = None, max_examples: int = CALIBRATION_EXAMPLES
    ) -> Calibration:
        """Fit the calibration by leave-one-out over the stored references and keep it.

        Each sampled reference is classified by the others, never by itself nor, with
        `group_by`, by references sharing its value of that metadata key (e.g. the same
        sender's other photos), so the fit sees the odds a new image really has.
        """
        population = [
            (reference, category)
            for category in self.store.category_names()
            for reference in self.store.reference_ids(category)
        ]
        if len({category for _, category in population}) < 2:
            raise FailedPrecondition(
                "calibration needs references in at least two categories; add more first"
            )
        # Only the sample's vectors are read: a big catalogue is never loaded whole.
        sample = random.Random(0).sample(population, min(max_examples, len(population)))
        stored = self.store.get_vectors(self.embedder.version, [r for r, _ in sample])
        sample = [s for s, v in zip(sample, stored, strict=True) if v is not None]
        found = self.index.search(
            np.stack([v for v in stored if v is not None]) if sample else np.zeros((0, 0)),
            self.vote.k + CALIBRATION_EXTRA_NEIGHBOURS,
        )
        group_of: dict[str, str] = {}
        if group_by:
            involved = {r for r, _ in sample} | {h.reference_id for hits in found for h in hits}
            for ref in self.store.get_references(sorted(involved)):
                if ref is not None and group_by in ref.metadata:
                    group_of[ref.id] = ref.metadata[group_by]
        votes = []
        for (own, category), hits in zip(sample, found, strict=True):
            group = group_of.get(own)
            others = [
                h
                for h in hits
                if h.reference_id != own
                and (group is None or group_of.get(h.reference_id) != group)
            ][: self.vote.k]
            if others:
                votes.append(
                    LabelledVote(knn_vote(others, self.vote, MAX_K), category, others[0].similarity)
                )
        how = f"leave-one-out over {len(votes)} references" + (
            f", excluding the same {group_by!r}" if group_by else ""
        )
        try:
            calibration = fit_calibration(votes, how)
        except ValueError as exc:
            raise FailedPrecondition(f"{exc}; add more references first") from exc
        self.store.put_calibration(self.embedder.version, calibration.to_json())
        self.calibration = calibration
        log.info(
            "calibrated: temperature %.3f, unknown below %.3f, ECE %.3f -> %.3f (%s)",
            calibration.temperature,
            calibration.unknown_below,
            calibration.ece_before or 0.0,
            calibration.ece_after or 0.0,
            how,
        )
        return calibration

    # -- writes --------------------------------------------------------------------------

    def add_category(
        self,
        name: str,
        parent: str | None = None,
        metadata: dict[str, str] | None = None,
        references: Sequence[ReferenceInput] = (),
        deadline: float | None = None,
        prompts: Sequence[str] = (),
    ) -> AddResult:
        """Create a category with optional first references and text prompts; all or nothing.

        A category with prompts is classifiable at once, before any reference image, when
        the model has a text tower.
        """
        validate_category_name(name)
        if parent:
            validate_category_name(parent, "parent category name")
        if parent == name:
            raise InvalidArgument(f"category {name!r} cannot be its own parent")
        _check_metadata(metadata or {}, f"category {name!r}")
        if len(prompts) > MAX_PROMPTS:
            raise InvalidArgument(f"{len(prompts)} prompts; the limit is {MAX_PROMPTS}")
        for i, prompt in enumerate(prompts):
            _check_text(prompt, f"prompt {i}")
        if prompts:
            self._require_text()
        if self.store.get_category(name) is not None:  # fail before the costly embedding
            raise AlreadyExists(
                f"category {name!r} already exists; use AddReferences to add images to it"
            )
        draft = Category(name, parent or None, {}, 0, 0, list(prompts))
        text_vectors = self._prompt_vectors([draft]) if prompts else []
        prepared = self._prepare(name, references, deadline)
        category, duplicate = self.store.create_category(
            name, parent or None, metadata or {}, prepared, self.embedder.version, prompts
        )
        self._parents[name] = parent or None
        if text_vectors:
            self._remember_prompts([category], text_vectors)
        else:
            self._forget_text_matrix()
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
        self._drop_text(name)
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
            calibration=self.calibration,
            text_model=self.text.version if self.text is not None else "",
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
        vectors, _ = self._embed(
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

    def _embed(
        self, images: Sequence[bytes], labels: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings and semantic vectors of images that must all be good, or InvalidArgument
        naming the first bad one."""
        pixels = []
        with self.batcher.expecting():
            for image, label in zip(images, labels, strict=True):
                try:
                    pixels.append(self.embedder.decode(image))
                except ImageDecodeError as exc:
                    raise InvalidArgument(f"{label}: {exc}; nothing was written") from exc
            return self._embed_decoded(pixels)

    def _decode_each(self, images: Sequence[bytes]) -> list[np.ndarray | NearcatError]:
        """Pixels of each image, or its own error; call inside `batcher.expecting()`."""
        decoded: list[np.ndarray | NearcatError] = []
        for i, image in enumerate(images):
            try:
                decoded.append(self.embedder.decode(image))
            except ImageDecodeError as exc:
                decoded.append(InvalidArgument(f"image {i}: {exc}"))
        return decoded

    def _embed_decoded(
        self, decoded: Sequence[np.ndarray | NearcatError]
    ) -> tuple[np.ndarray, np.ndarray]:
        pixels = [d for d in decoded if isinstance(d, np.ndarray)]
        if not pixels:
            rows = np.zeros((0, self.embedder.dim), dtype=np.float32)
        else:
            rows = self.batcher.run(np.stack(pixels))
        return self._split_rows(rows)

    def close(self) -> None:
        """Stop the model worker once in-flight calls are done."""
        self.batcher.close()


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm if norm > 0 else vector).astype(np.float32)


def _check_text(text: str, what: str) -> None:
    if not text.strip():
        raise InvalidArgument(f"{what} is empty; give a few words such as 'red sneakers'")
    if len(text) > MAX_PROMPT_LENGTH:
        raise InvalidArgument(f"{what} is {len(text)} characters; the limit is {MAX_PROMPT_LENGTH}")


def _added(references: Sequence[NewReference], duplicate: Sequence[bool]) -> list[AddedReference]:
    return [
        AddedReference(r.id, r.sha256, dup) for r, dup in zip(references, duplicate, strict=True)
    ]
