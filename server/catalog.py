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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from embedder import Embedder
from embedder.text import text_shares
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
from indexer.head import ConfidenceHead
from indexer.ids import image_sha256, is_reference_id, reference_id
from indexer.index import Hit, IndexConfig, VectorIndex
from indexer.store import Category, NewReference, Reference, Store
from indexer.taxonomy import LevelScore, level_scores, path_of
from indexer.vote import CategoryScore, VoteConfig, knn_vote
from server.serving import Batching, Serving, SwitchGate

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
# References sampled for the leave-one-out fit and the head. The head gains from more
# (clothing, the split before the sender cap, before the blend; val-chosen threshold: 52.8%
# auto-accepted with a head on 2,000 references, 56.8% on 3,426). Calibrating all 5,096
# clothing references took 48 s on 2 cores.
CALIBRATION_EXAMPLES = 5000
# Extra neighbours fetched in the leave-one-out fit, so that k remain after dropping the image
# itself and its group (e.g. the same sender's other photos).
CALIBRATION_EXTRA_NEIGHBOURS = 100


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
    """One image's answer: calibrated category probabilities, best first, what to do with it,
    the most probable node at each taxonomy level, and the nearest references as evidence."""

    categories: list[ScoredCategory]
    neighbors: list[Hit]
    decision: Decision = Decision.REVIEW
    levels: list[LevelScore] = field(default_factory=list)
    # The deepest ancestor of the answer that is sure enough to auto-accept when the answer
    # itself is not: "certainly Shoes, maybe Sneakers".
    confident_ancestor: LevelScore | None = None
    model_version: str = ""  # the version that answered: one per call, never a mix
    # How likely the answer is right: the head's curve of the blend's probability of it,
    # discounted by the evidence for categories the head does not know; else the answer's
    # calibrated score.
    confidence: float = 0.0


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


@dataclass(frozen=True)
class ZeroShot:
    labels: list[LabelScore]  # best first
    model_version: str  # the version that answered (a reindex may switch right after)


@dataclass(frozen=True)
class TextSearch:
    categories: list[ScoredCategory]  # by how well their prompts (or names) match the text
    references: list[Hit]  # nearest reference images to the text, when the model can say
    model_version: str


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
    head_current: bool = False  # the calibration's confidence head covers the catalogue


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
        raise InvalidArgument(
            f"{what} {name!r} contains '>', which is reserved for paths; give the category's "
            f"own name, e.g. {name.rsplit('>', 1)[-1].strip()!r}"
        )
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
        raise DeadlineExceeded(f"deadline passed before {before}")


class Catalog:
    """Categories, their references and classification; safe to call from many threads.

    What depends on the model version (embedder, index, calibration, text vectors, model
    worker) lives in one `Serving` object; a reindex prepares another and `switch` swaps
    them (see server.serving and server.reindex).
    """

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
        self.vote = vote or VoteConfig()
        self.limits = limits or Limits()
        self.decisions = decisions or DecisionPolicy()
        self.prompt_weight = prompt_weight
        self.index_config = index_config or IndexConfig()
        self.batching = batching or Batching()
        self._parents: dict[str, str | None] = {}
        self._state_lock = threading.Lock()
        self._serving = self.new_serving(embedder, text)
        # The state a reindex is building: while it is set, writes embed for it too.
        self._pending: Serving | None = None
        self._gate = SwitchGate()
        self._vectors_loaded = 0
        self._started_at_ms = int(time.time() * 1000)

    # -- the serving state ---------------------------------------------------------------

    def new_serving(self, embedder: Embedder, text: TextTower | None) -> Serving:
        """An empty serving state for `embedder`, with the calibration stored for it."""
        calibration = Calibration.from_json(self.store.get_calibration(embedder.version) or {})
        index = VectorIndex(embedder.dim, self.index_config)
        return Serving(embedder, index, text, calibration, self.batching)

    @property
    def serving(self) -> Serving:
        return self._serving

    @property
    def embedder(self) -> Embedder:
        return self._serving.embedder

    @property
    def index(self) -> VectorIndex:
        return self._serving.index

    @property
    def calibration(self) -> Calibration:
        return self._serving.calibration

    @property
    def pending(self) -> Serving | None:
        return self._pending

    @contextmanager
    def _use(self) -> Iterator[Serving]:
        """The serving state, held for one call: a switch never closes it under the call."""
        with self._state_lock:
            serving = self._serving
            serving.users += 1
        try:
            yield serving
        finally:
            with self._state_lock:
                serving.users -= 1
                finished = serving.retired and serving.users == 0
            if finished:
                serving.close()

    def begin_reindex(self, pending: Serving) -> None:
        """From now on, every write also embeds and stores vectors for `pending`."""
        with self._gate.switch():
            self._pending = pending

    def end_reindex(self) -> None:
        """Stop writing vectors for the pending state (a refused or failed reindex)."""
        with self._gate.switch():
            self._pending = None

    def switch(self, new: Serving, commit: Callable[[], None]) -> None:
        """Make `new` the serving state, atomically for every call.

        Writes are held back while its index is brought level with the store (references
        added or removed since it was filled), its prompts encoded, and `commit` records the
        switch in the store; then one assignment swaps the state. Calls that started before
        finish on the old state, which closes after the last of them.
        """
        with self._gate.switch():
            self.sync_index(new)
            new.set_texts([c for c in self.store.list_categories() if c.prompts])
            commit()
            with self._state_lock:
                old, self._serving = self._serving, new
                self._pending = None
                old.retired = True
                idle = old.users == 0
        log.info("switched from model %s to %s", old.version, new.version)
        if idle:
            old.close()

    def sync_index(self, serving: Serving) -> None:
        """Bring `serving.index` level with the store's references: drop the removed ones,
        add those missing (with their stored vector, or embedded now when they have none)."""
        self._level(serving, self.store.all_references(), serving.index.reference_ids())

    def _level(self, serving: Serving, stored: Mapping[str, str], held: set[str]) -> None:
        """Make the index, which holds `held`, hold exactly `stored` (id -> category): drop
        the rest, add the missing with their stored vector, or embedded now without one."""
        serving.index.remove(sorted(held - stored.keys()))
        missing = [i for i in stored if i not in held]
        if not missing:
            return
        vectors = self.store.get_vectors(serving.version, missing)
        if vectors:
            ids = list(vectors)
            serving.index.add(ids, [stored[i] for i in ids], np.stack([vectors[i] for i in ids]))
        unembedded = [(i, stored[i]) for i in missing if i not in vectors]
        for start in range(0, len(unembedded), EMBED_BATCH):
            self._embed_stored(serving, unembedded[start : start + EMBED_BATCH])

    def _embed_stored(self, serving: Serving, references: Sequence[tuple[str, str]]) -> int:
        """Embed stored references (id, category) from their stored images, store the vectors
        and index them; returns how many. One removed meanwhile (its image gone) is skipped:
        a reindex runs beside live writes and must not fail on a deletion."""
        images = {i: self.store.get_image(i) for i, _ in references}
        present = [(i, category) for i, category in references if images[i] is not None]
        if not present:
            return 0
        ids = [i for i, _ in present]
        vectors, _ = serving.embed(
            [images[i] or b"" for i in ids], [f"stored reference {i}" for i in ids]
        )
        stored = set(self.store.put_vectors(serving.version, dict(zip(ids, vectors, strict=True))))
        kept = [n for n, i in enumerate(ids) if i in stored]  # removed since: not indexed
        serving.index.add([ids[n] for n in kept], [present[n][1] for n in kept], vectors[kept])
        return len(kept)

    # -- start-up ------------------------------------------------------------------------

    def load(self, progress: bool = False) -> None:
        """Build the index from the store; embed only references this model has no vector for."""
        categories_now = self.store.list_categories()
        for category in categories_now:
            self._parents[category.name] = category.parent
        serving = self._serving
        serving.set_texts(categories_now)
        bar = tqdm(desc="embedding", disable=not progress)

        def show(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        loaded, embedded = self.fill(serving, show if progress else None)
        bar.close()
        self._vectors_loaded = loaded
        log.info(
            "index ready: %d vectors (%d loaded, %d embedded), model %s",
            len(serving.index),
            loaded,
            embedded,
            serving.version,
        )

    def fill(
        self,
        serving: Serving,
        on_progress: Callable[[int, int], None] | None = None,
        batch_size: int = EMBED_BATCH,
        stop: threading.Event | None = None,
    ) -> tuple[int, int]:
        """Build `serving.index` from the store: load every stored vector of its version and
        embed, in batches, the references that have none (each batch stored before the next,
        so an interrupted fill resumes where it stopped). Tells `on_progress(done, total)`
        after each batch; returns (vectors loaded, references embedded)."""
        version = serving.version
        ids: list[str] = []
        categories: list[str] = []
        missing_ids: list[str] = []
        stored = [np.zeros((0, serving.embedder.dim), dtype=np.float32)]
        for batch in self.store.iter_vectors(version):  # one pass: vectors and what lacks one
            missing_ids += batch.missing_ids
            if batch.reference_ids:
                ids += batch.reference_ids
                categories += batch.categories
                stored.append(batch.vectors)
        serving.index = VectorIndex.build(
            serving.embedder.dim, ids, categories, np.concatenate(stored), self.index_config
        )
        missing = [r for r in self.store.get_references(missing_ids) if r is not None]
        total = len(ids) + len(missing)
        if missing:
            log.info("embedding %d references that have no %s vector yet", len(missing), version)
        if on_progress is not None:
            on_progress(len(ids), total)
        embedded = 0
        for start in range(0, len(missing), batch_size):
            if stop is not None and stop.is_set():
                break
            chunk = missing[start : start + batch_size]
            embedded += self._embed_stored(serving, [(r.id, r.category) for r in chunk])
            if on_progress is not None:
                on_progress(len(ids) + embedded, total)
        # A fill that embedded most of its vectors began as a flat index over the few stored
        # ones (none, in a fresh reindex); give it the kind its size calls for.
        serving.index = serving.index.resized()
        return len(ids), embedded

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
        with self._use() as s:
            if len(s.index) == 0 and not s.prompted:
                raise FailedPrecondition(
                    "no reference images yet: add a category with AddCategory (or `nearcat import`)"
                )
            with s.batcher.expecting():
                decoded = s.decode_each(images)
                _check_deadline(deadline, "embedding")
                vectors, semantics = s.embed_decoded(decoded)
            neighbours = iter(s.index.search(vectors, k))
            head = s.calibration.head  # once per call, as are its probabilities
            head_rows = vectors  # unused without a head
            if head is not None and len(vectors):
                head_rows = head.probabilities(vectors)
            rows = iter(zip(semantics, head_rows, strict=True))
            held = head.held(s.index.categories()) if head is not None else None
            return [
                self._predict(s, head, held, next(neighbours), *next(rows), top_n)
                if isinstance(d, np.ndarray)
                else d
                for d in decoded
            ]

    def _predict(
        self,
        s: Serving,
        head: ConfidenceHead | None,
        held: np.ndarray | None,
        hits: list[Hit],
        semantic: np.ndarray,
        head_row: np.ndarray,
        top_n: int,
    ) -> Prediction:
        scores = knn_vote(hits, self.vote, MAX_K)  # every category that got a vote
        if head is not None:
            scores = head.blend(scores, head_row, held)
        if s.prompted and s.text is not None:
            scores = self._with_text_evidence(s, scores, semantic)
        blended = scores
        scores = s.calibration.apply(blended)
        if not scores:
            return Prediction([], hits, Decision.UNKNOWN, model_version=s.version)
        top = scores[0]
        confidence = self._confidence(s, head, blended, scores)
        if s.index.count(top.category):
            decision = self.decisions.decide(
                top.category,
                confidence,
                hits[0].similarity,
                s.calibration.unknown_below,
                calibrated=s.calibration.fitted,
            )
        else:
            # Known from text alone: zero-shot scores are not calibrated (a closed set of a
            # few prompts puts ~1.0 on the least bad one), and there are no references to be
            # far from. A person confirms; confirmed images make good first references.
            decision = Decision.REVIEW
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
            model_version=s.version,
            confidence=confidence,
        )

    def head_current(self) -> bool:
        """Whether the calibration's confidence head was fitted on exactly the categories an
        answer can name now (those with references or text prompts). Once one comes or goes
        it is due a refit: it cannot judge a category it has never seen, so it speaks only
        for the evidence the categories it knows hold (see `_confidence`)."""
        with self._use() as s:
            return self._head_current(s)

    def nameable_categories(self) -> set[str]:
        """The categories an answer can name now: those with references or text prompts."""
        with self._use() as s:
            return self._nameable(s)

    @staticmethod
    def _nameable(s: Serving) -> set[str]:
        return s.index.categories() | s.prompted_names()

    @classmethod
    def _head_current(cls, s: Serving) -> bool:
        head = s.calibration.head
        return head is not None and head.covers(cls._nameable(s))

    @staticmethod
    def _confidence(
        s: Serving,
        head: ConfidenceHead | None,
        blended: list[CategoryScore],
        scores: list[CategoryScore],
    ) -> float:
        """The head's word on the answer (`ConfidenceHead.served_confidence`: its curve,
        discounted by the evidence on categories it was not fitted on), from the scores
        `blended` before the calibration's temperature and `scores` after. Without a head,
        for a category it was not fitted on, or one known from text alone, the answer's
        calibrated score."""
        top = scores[0]
        said = head.served_confidence(blended, scores) if head is not None else None
        if said is None or not s.index.count(top.category):
            return top.score
        return said

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
        self, s: Serving, image_scores: list[CategoryScore], semantic: np.ndarray
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
        assert s.text is not None
        matrix = s.text_snapshot(sorted(self._parents))
        if matrix is None:
            return image_scores
        names, vectors = matrix
        text_share = text_shares(s.text, semantic, vectors)[0]
        weight = {
            name: self.prompt_weight / (self.prompt_weight + s.index.count(name))
            for name in names
            if name in s.prompted
        }
        claimed = {
            name: weight[name] * share
            for name, share in zip(names, text_share.tolist(), strict=True)
            if name in weight
        }
        image = {c.category: (1 - weight.get(c.category, 0.0)) * c.score for c in image_scores}
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

    def zero_shot(self, image: bytes, labels: Sequence[str]) -> ZeroShot:
        """Rank free-text labels for one image, no references needed; best first."""
        with self._use() as s:
            text = s.require_text()
            if not labels:
                raise InvalidArgument("no labels given: send the candidate labels to rank")
            if len(labels) > MAX_LABELS:
                raise InvalidArgument(f"{len(labels)} labels; the limit is {MAX_LABELS}")
            for i, label in enumerate(labels):
                _check_text(label, f"label {i}")
            label_vectors = s.encode_text(labels)
            with s.batcher.expecting():
                [decoded] = s.decode_each([image])
                if not isinstance(decoded, np.ndarray):
                    raise decoded
                _, semantics = s.embed_decoded([decoded])
        shares = text_shares(text, semantics[0], label_vectors)[0]
        ranked = sorted(zip(labels, shares.tolist(), strict=True), key=lambda p: -p[1])
        return ZeroShot([LabelScore(label, score) for label, score in ranked], s.version)

    def search_by_text(self, query: str, top_n: int = 5, k: int | None = None) -> TextSearch:
        """Categories whose text matches the query, and the reference images nearest to it."""
        with self._use() as s:
            text = s.require_text()
            _check_text(query, "text")
            top_n = top_n or 5
            k = k or self.vote.k
            if not 1 <= top_n <= MAX_TOP_N or not 1 <= k <= MAX_K:
                raise InvalidArgument(f"top_n must be 1..{MAX_TOP_N} and k 1..{MAX_K}")
            vector = s.encode_text([query])
            categories: list[ScoredCategory] = []
            matrix = s.text_snapshot(sorted(self._parents))
            if matrix is not None:
                names, vectors = matrix
                similarity = vectors @ vector[0]
                order = np.argsort(-similarity)[:top_n]
                categories = [
                    ScoredCategory(names[i], float(similarity[i]), self.path(names[i]))
                    for i in order
                ]
            queries = text.image_queries(vector)
            references = s.index.search(queries, k)[0] if queries is not None else []
            return TextSearch(categories, references, s.version)

    # -- calibration ---------------------------------------------------------------------

    def calibrate(
        self, group_by: str | None = None, max_examples: int = CALIBRATION_EXAMPLES
    ) -> Calibration:
        """Fit the calibration by leave-one-out over the stored references and keep it.

        Each sampled reference is classified by the others, never by itself nor, with
        `group_by`, by references sharing its value of that metadata key (e.g. the same
        sender's other photos), so the fit sees the odds a new image really has.
        """
        with self._use() as s:
            votes = self.leave_one_out(s, group_by, max_examples)
            how = f"leave-one-out over {len(votes)} references" + (
                f", excluding the same {group_by!r}" if group_by else ""
            )
            try:
                calibration = fit_calibration(votes, how)
            except ValueError as exc:
                raise FailedPrecondition(f"{exc}; add more references first") from exc
            calibration = self.keep_calibration(s, calibration, group_by)
        log.info(
            "calibrated: temperature %.3f, unknown below %.3f, ECE %.3f -> %.3f (%s)",
            calibration.temperature,
            calibration.unknown_below,
            calibration.ece_before or 0.0,
            calibration.ece_after or 0.0,
            how,
        )
        return calibration

    def keep_calibration(
        self, s: Serving, calibration: Calibration, group_by: str | None
    ) -> Calibration:
        """Store this calibration, fitted on leave-one-out votes, for `s`'s version and serve
        it."""
        # Kept so that a refit after the categories change (server.recalibrate) is alike.
        calibration = replace(calibration, extra={**calibration.extra, "group_by": group_by})
        self.store.put_calibration(s.version, calibration.to_json())
        s.calibration = calibration
        return calibration

    def leave_one_out(
        self, s: Serving, group_by: str | None, max_examples: int = CALIBRATION_EXAMPLES
    ) -> list[LabelledVote]:
        """The kNN vote of each sampled stored reference by the others in `s.index`, never by
        itself nor by references sharing its `group_by` metadata. The sample is drawn the same
        way for every model version, so two versions holding vectors for the same references
        are measured on the same images; only the sample's vectors are read."""
        # By category, then id: the order the sample is drawn from, the same every time.
        population = sorted(self.store.all_references().items(), key=lambda p: (p[1], p[0]))
        if len({category for _, category in population}) < 2:
            raise FailedPrecondition(
                "calibration needs references in at least two categories; add more first"
            )
        sample = random.Random(0).sample(population, min(max_examples, len(population)))
        stored = self.store.get_vectors(s.version, [r for r, _ in sample])
        sample = [pair for pair in sample if pair[0] in stored]
        found = s.index.search(
            np.stack([stored[r] for r, _ in sample]) if sample else np.zeros((0, 0)),
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
                    LabelledVote(
                        knn_vote(others, self.vote, MAX_K),
                        category,
                        others[0].similarity,
                        stored[own],
                        group,
                    )
                )
        return votes

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
        try:
            with self._gate.write(), self._use() as s:
                if prompts:
                    s.require_text()
                if self.store.get_category(name) is not None:  # before the costly embedding
                    raise AlreadyExists(
                        f"category {name!r} already exists; use AddReferences "
                        "(`nearcat add-references`) to add images to it"
                    )
                draft = Category(name, parent or None, {}, 0, 0, list(prompts))
                text_vectors = s.prompt_vectors([draft]) if prompts else []
                prepared = self._prepare(name, references, deadline)
                category, duplicate = self.store.create_category(
                    name, parent or None, metadata or {}, prepared, s.version, prompts
                )
                self._parents[name] = parent or None
                if text_vectors:
                    s.remember_prompts([category], text_vectors)
                else:
                    s.forget_text_matrix()
                self._index_new(s, name, prepared)
        except AlreadyExists:  # perhaps created by an attempt whose reply was lost
            self._follow_store(name)
            raise
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
        with self._gate.write(), self._use() as s:
            prepared = self._prepare(category, references, deadline)
            duplicate = self.store.add_references(category, prepared, s.version)
            self._index_new(s, category, prepared)
        stored = self.store.get_category(category)
        if stored is None:  # deleted concurrently right after our commit
            raise NotFound(f"category {category!r} was deleted while references were added")
        return AddResult(stored, _added(prepared, duplicate))

    def remove_references(self, reference_ids: Sequence[str]) -> int:
        if not reference_ids:
            raise InvalidArgument("no reference ids given")
        try:
            with self._gate.write(), self._use() as s:
                removed = self.store.remove_references(reference_ids)
                s.index.remove([r.id for r in removed])
        except NotFound:  # perhaps removed by an attempt whose reply was lost
            self._drop_unstored([i for i in reference_ids if is_reference_id(i)])
            raise
        return len(removed)

    def delete_category(self, name: str) -> int:
        validate_category_name(name)
        try:
            with self._gate.write(), self._use() as s:
                removed = self.store.delete_category(name)
                s.index.remove([r.id for r in removed])
                self._parents.pop(name, None)
                s.drop_text(name)
        except NotFound:  # perhaps deleted by an attempt whose reply was lost
            self._follow_store(name)
            raise
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
        s = self._serving
        return Status(
            model_version=s.version,
            embedding_dim=s.embedder.dim,
            index_size=len(s.index),
            category_count=len(self.store.category_names()),
            images_embedded=s.batcher.stats().images,
            vectors_loaded_at_start=self._vectors_loaded,
            started_at_ms=self._started_at_ms,
            calibration=s.calibration,
            head_current=self._head_current(s),
            text_model=s.text.version if s.text is not None else "",
        )

    # -- helpers -------------------------------------------------------------------------

    def _follow_store(self, name: str) -> None:
        """Bring what this server holds of category `name` (its vectors in the index, its
        parent, its prompts) level with the store.

        For a write whose reply was lost: the store applied it, the caller saw UNAVAILABLE,
        and the retry answers AlreadyExists or NotFound; the index must still follow. Writes
        are held back meanwhile (the comparison must not see one half done), but only when a
        quick look finds this server behind: a plain AlreadyExists costs no more than before.
        """
        if not self._behind_store(name):
            return
        with self._gate.switch(), self._use() as s:
            category = self.store.get_category(name)
            stored = self.store.reference_ids(name) if category is not None else []
            self._level(s, dict.fromkeys(stored, name), s.index.reference_ids_of(name))
            if category is None:
                self._parents.pop(name, None)
                s.drop_text(name)
            else:
                self._parents[name] = category.parent
                s.set_texts([category])

    def _behind_store(self, name: str) -> bool:
        category = self.store.get_category(name)
        with self._use() as s:
            if category is None:
                return bool(s.index.count(name)) or name in self._parents
            return (
                s.index.count(name) != category.reference_count
                or self._parents.get(name, "") != category.parent
                or (bool(category.prompts) and s.text is not None and name not in s.prompted)
            )

    def _drop_unstored(self, reference_ids: Sequence[str]) -> None:
        """Drop from the index those of these references the store no longer has (removed by
        an attempt whose reply was lost); writes are held back only when one is held."""
        with self._use() as s:
            if not s.index.holds(reference_ids):
                return
        with self._gate.switch(), self._use() as s:
            held = s.index.holds(reference_ids)
            found = self.store.get_references(held)
            s.index.remove([i for i, ref in zip(held, found, strict=True) if ref is None])

    def _index_new(self, s: Serving, category: str, references: Sequence[NewReference]) -> None:
        # Duplicates too, once each: a write that committed while its reply was lost (store
        # connection dropped) comes back as a duplicate on retry and must still be indexed.
        # The index skips ids it holds already.
        new = list({r.id: r for r in references}.values())
        if new:
            s.index.add(
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
        """Decode and embed every reference, or fail naming the first bad one; while a
        reindex runs, embed it with the new model too, so it is stored for both versions."""
        if not references:
            return []
        self._check_count(references, "references")
        for i, ref in enumerate(references):
            _check_metadata(ref.metadata, f"reference {i}")
        images = [r.image for r in references]
        labels = [f"reference {i}" for i in range(len(references))]
        _check_deadline(deadline, "embedding; nothing was written")  # queued past it
        vectors, _ = self._serving.embed(images, labels)
        pending = self._pending
        other = pending.embed(images, labels)[0] if pending is not None else None
        _check_deadline(deadline, "writing the references; nothing was written")
        prepared = []
        for i, (ref, vector) in enumerate(zip(references, vectors, strict=True)):
            sha = image_sha256(ref.image)
            prepared.append(
                NewReference(
                    id=reference_id(category, sha),
                    sha256=sha,
                    image=ref.image,
                    vector=vector,
                    metadata=dict(ref.metadata),
                    other_vectors={pending.version: other[i]}
                    if pending is not None and other is not None
                    else {},
                )
            )
        return prepared

    def close(self) -> None:
        """Stop the model worker once in-flight calls are done."""
        self._serving.close()


def _check_text(text: str, what: str) -> None:
    if not text.strip():
        raise InvalidArgument(f"{what} is empty; give a few words such as 'red sneakers'")
    if len(text) > MAX_PROMPT_LENGTH:
        raise InvalidArgument(f"{what} is {len(text)} characters; the limit is {MAX_PROMPT_LENGTH}")


def _added(references: Sequence[NewReference], duplicate: Sequence[bool]) -> list[AddedReference]:
    return [
        AddedReference(r.id, r.sha256, dup) for r, dup in zip(references, duplicate, strict=True)
    ]
