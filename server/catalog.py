"""The catalogue: categories defined by reference images, and classification against them.

Plain Python, no gRPC: the servicer translates to and from this. The store is written first;
the index and the parent map are derived and updated only after the store has committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from embedder import Embedder
from embedder.images import ImageDecodeError, check_reference
from embedder.text import text_shares
from indexer.answer import HeadInput, Prediction, ScoredCategory, TextEvidence, answer
from indexer.calibration import Bound, Calibration
from indexer.decision import DecisionPolicy
from indexer.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NearcatError,
    NotFound,
)
from indexer.holdout import (
    CALIBRATION_EXAMPLES,
)
from indexer.ids import image_sha256, reference_id
from indexer.index import Hit, IndexConfig, VectorIndex
from indexer.names import case_twin_warning, case_twins
from indexer.store import Category, LabelledPhoto, NewReference, Reference, Store
from indexer.taxonomy import categories_under, path_of
from indexer.vote import VoteConfig
from server.calibrating import Calibrating
from server.requests import (
    MAX_K,
    MAX_LABELS,
    MAX_TOP_N,
    MAX_WITHIN,
    category_name,
    check_attributes,
    check_deadline,
    check_metadata,
    check_prompts,
    check_reference_ids,
    check_text,
    listed,
)
from server.serving import EMBED_BATCH, Batching, Serving, SwitchGate, text_cosines

if TYPE_CHECKING:
    from embedder.text import TextTower

log = logging.getLogger(__name__)


# What embeds stored references (id, category) for a serving state, `batch_size` at a time:
# yields each batch's (reference ids, vectors), in any order, leaving out references removed
# meanwhile; `Catalog.fill` stores and indexes each batch before it asks for the next. The
# catalogue's own model worker by default (`Catalog.embed_here`); server.ray_engine on Ray.
Batches = Generator[tuple[list[str], np.ndarray], None, None]
EmbedEngine = Callable[["Serving", Sequence[tuple[str, str]], int], Batches]


@dataclass(frozen=True)
class Limits:
    """Request limits: images per call, metadata size."""

    max_images_per_request: int = 256


@dataclass(frozen=True)
class ReferenceInput:
    image: bytes
    metadata: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)  # answered for images too


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
    # best first: the cosine similarity of the text with their prompts (or name), 1 for a
    # category one of whose prompts is the text
    categories: list[ScoredCategory]
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
    warnings: tuple[str, ...] = ()  # for a person: e.g. a name that differs only in case


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
    head_current: bool = False  # the calibration's head covers the catalogue
    server_id: str = ""  # this server on the change stream
    change_position: str = "0-0"  # the stream's last entry its state includes
    change_lag: int = 0  # entries of the stream not applied yet (at most 10,000 counted)
    change_lag_s: float = 0.0  # how long the oldest of them has waited


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
        bound: Bound | None = None,
    ) -> None:
        self.store = store
        self.bound = bound or Bound()
        self.vote = vote or VoteConfig()
        self.limits = limits or Limits()
        self.decisions = decisions or DecisionPolicy()
        self.prompt_weight = prompt_weight
        self.index_config = index_config or IndexConfig()
        self.batching = batching or Batching()
        self.calibrating = Calibrating(store, self.vote, self.bound, lambda: self._attributes)
        self._parents: dict[str, str | None] = {}
        # The attributes of the references held (those that carry any): model-independent,
        # so one table serves every state; followed wherever the index follows the store.
        self._attributes: dict[str, dict[str, str]] = {}
        self._state_lock = threading.Lock()
        self._serving = self.new_serving(embedder, text)
        # The state a reindex is building: while it is set, writes embed for it too.
        self._pending: Serving | None = None
        self._gate = SwitchGate()
        self._vectors_loaded = 0
        self._started_at_ms = int(time.time() * 1000)
        # The change stream's last entry this server's state includes (server.follower moves
        # it on as it applies other servers' writes).
        self.change_position = "0-0"

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
        gone = sorted(held - stored.keys())
        serving.index.remove(gone)
        missing = [i for i in stored if i not in held]
        self._follow_attributes(missing, gone)
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
        and index them; returns how many."""
        category_of = dict(references)
        return sum(
            self._keep_embedded(serving, ids, vectors, category_of)
            for ids, vectors in self.embed_here(serving, references, max(len(references), 1))
        )

    def embed_here(
        self, serving: Serving, references: Sequence[tuple[str, str]], batch_size: int
    ) -> Batches:
        """The in-process engine (see `EmbedEngine`): the stored images through `serving`'s
        model worker. One removed meanwhile (its image gone) is left out: a reindex runs
        beside live writes and must not fail on a deletion."""
        for start in range(0, len(references), batch_size):
            chunk = references[start : start + batch_size]
            images = self.store.get_images([i for i, _ in chunk])
            ids = [i for i, _ in chunk if images[i] is not None]
            if ids:
                vectors, _ = serving.embed(
                    [images[i] or b"" for i in ids], [f"stored reference {i}" for i in ids]
                )
                yield ids, vectors

    def _keep_embedded(
        self,
        serving: Serving,
        ids: Sequence[str],
        vectors: np.ndarray,
        category_of: Mapping[str, str],
    ) -> int:
        """Store one batch of `serving`'s vectors and index those still stored (one removed
        meanwhile is not); returns how many."""
        stored = set(self.store.put_vectors(serving.version, dict(zip(ids, vectors, strict=True))))
        kept = [n for n, i in enumerate(ids) if i in stored]
        categories = [category_of[ids[n]] for n in kept]
        serving.index.add([ids[n] for n in kept], categories, vectors[kept])
        return len(kept)

    # -- start-up ------------------------------------------------------------------------

    def load(self, progress: bool = False) -> None:
        """Build the index from the store; embed only references this model has no vector for.
        Records the change stream's position first (`change_position`): what is written during
        the load is applied again by the follower, never missed."""
        self.change_position = self.store.last_change_id()
        categories_now = self.store.list_categories()
        for category in categories_now:
            self._parents[category.name] = category.parent
        self._attributes = self.store.all_attributes()
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
        engine: EmbedEngine | None = None,
    ) -> tuple[int, int]:
        """Build `serving.index` from the store: load every stored vector of its version and
        embed, in batches, the references that have none (each batch stored before the next,
        so an interrupted fill resumes where it stopped), with `engine` (default: in
        process). Tells `on_progress(done, total)` after each batch; returns (vectors
        loaded, references embedded)."""
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
        todo = [(r.id, r.category) for r in missing]
        category_of = dict(todo)
        batches = (engine or self.embed_here)(serving, todo, batch_size)
        try:
            while stop is None or not stop.is_set():
                result = next(batches, None)
                if result is None:
                    break
                embedded += self._keep_embedded(serving, *result, category_of)
                if on_progress is not None:
                    on_progress(len(ids) + embedded, total)
        finally:
            batches.close()  # a stopped engine lets go of what it holds (a Ray cluster)
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
        within: Sequence[str] = (),
    ) -> list[Prediction | NearcatError]:
        """Classify each image; a bad image gets its own error and does not fail the others.

        `within`: taxonomy nodes (a department, or an allow-list of leaves) the caller knows
        the answer is at or under; the vote, the head, the text, calibration and bands then
        see those categories only, and the evidence comes from their references."""
        self._check_count(images, "images")
        top_n = top_n or 5
        k = k or self.vote.k
        if not 1 <= top_n <= MAX_TOP_N:
            raise InvalidArgument(f"top_n must be between 1 and {MAX_TOP_N}, got {top_n}")
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        allowed = self._allowed(within)
        with self._use() as s:
            if len(s.index) == 0 and not s.prompted:
                raise FailedPrecondition(
                    "no reference images yet: add a category with AddCategory (or `nearcat import`)"
                )
            if allowed is not None and not self._nameable(s) & allowed:
                raise FailedPrecondition(
                    f"nothing under {listed(within)} can be named yet: add reference images "
                    "(or text prompts) to a category there, or widen the restriction"
                )
            with s.batcher.expecting():
                decoded = s.decode_each(images)
                check_deadline(deadline, "embedding")
                vectors, semantics = s.embed_decoded(decoded)
            found = s.index.search(vectors, k, allowed)
            head = s.calibration.head  # once per call, as are its probabilities
            present = s.index.categories()
            if allowed is not None:
                present &= allowed
            rows = head.probabilities(vectors) if head is not None and len(vectors) else None
            held = head.held(present) if head is not None else None
            out: list[Prediction | NearcatError] = []
            row = 0
            for d in decoded:
                if not isinstance(d, np.ndarray):
                    out.append(d)
                    continue
                out.append(
                    answer(
                        found[row],
                        vote=self.vote,
                        calibration=s.calibration,
                        policy=self.decisions,
                        indexed=present,
                        parents=self._parents,
                        head=HeadInput(head, rows[row], held)
                        if head is not None and rows is not None
                        else None,
                        text=self._text_evidence(s, semantics[row], allowed),
                        top_n=top_n,
                        model_version=s.version,
                        attributes_of=self._attributes,
                    )
                )
                row += 1
            return out

    def head_current(self) -> bool:
        """Whether the calibration's head was fitted on exactly the categories an answer can
        name now (those with references or text prompts). Once one comes or goes it is due a
        refit: it cannot judge a category it has never seen, which keeps its vote alone."""
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

    def _text_evidence(
        self, s: Serving, semantic: np.ndarray, allowed: set[str] | None = None
    ) -> TextEvidence | None:
        """The text tower's say on one image, for categories with text prompts: each
        category's share of the text softmax over every category's text (its prompts, or its
        name; only the `allowed` ones when restricted), and for the prompted ones the weight
        m / (m + references), m the `prompt_weight`. None without prompted categories
        (nothing changes)."""
        if not s.prompted or s.text is None:
            return None
        matrix = s.text_snapshot(sorted(self._parents))
        if matrix is None:
            return None
        names, vectors = matrix
        if allowed is not None:
            rows = [i for i, name in enumerate(names) if name in allowed]
            if not rows:
                return None
            names, vectors = [names[i] for i in rows], vectors[rows]
        share = text_shares(s.text, semantic, vectors)[0]
        prompted = {name: s.index.count(name) for name in names if name in s.prompted}
        return TextEvidence.weighed(names, share.tolist(), prompted, self.prompt_weight)

    def _allowed(self, within: Sequence[str]) -> set[str] | None:
        """The categories a restriction to `within` lets an answer name; None: no
        restriction. A name that is not a category is refused: a typo would otherwise
        narrow the answer to nothing."""
        if not within:
            return None
        if len(within) > MAX_WITHIN:
            raise InvalidArgument(
                f"{len(within)} categories to restrict to; the limit is {MAX_WITHIN}"
            )
        parents = dict(self._parents)  # a copy: writes may change it meanwhile
        unknown = sorted({n for n in within if n not in parents})
        if unknown:
            raise InvalidArgument(
                f"cannot restrict to {listed(unknown)}: no such category "
                "(ListCategories shows the names; they are case-sensitive)"
            )
        return categories_under(within, parents)

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
                check_text(label, f"label {i}")
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
            check_text(query, "text")
            top_n = top_n or 5
            k = k or self.vote.k
            if not 1 <= top_n <= MAX_TOP_N or not 1 <= k <= MAX_K:
                raise InvalidArgument(f"top_n must be 1..{MAX_TOP_N} and k 1..{MAX_K}")
            vector = s.encode_text([query])
            categories: list[ScoredCategory] = []
            matrix = s.text_snapshot(sorted(self._parents))
            if matrix is not None:
                names, vectors = matrix
                # A category whose own text is the query (one of its prompts, ignoring case
                # and spacing) scores what a text scores against itself, 1, and comes first:
                # its prompts' mean direction alone may be nearer another category's text.
                similarity = text_cosines(vectors, vector[0])
                matched = s.text_matches(query, names)
                exact = np.array([name in matched for name in names], dtype=bool)
                similarity[exact] = 1.0
                order = np.lexsort((~exact, -similarity))[:top_n]
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
        """Fit the serving state's calibration on examples it has not seen and keep it
        (server.calibrating)."""
        with self._use() as s:
            return self.calibrating.fit(s, group_by, max_examples)

    def labelled_count(self) -> int:
        """Labelled photos stored with a vector of the serving model version."""
        with self._use() as s:
            return self.store.labelled_count(s.version)

    def add_labelled(
        self,
        photos: Sequence[tuple[bytes, str]],
        source: str,
        deadline: float | None = None,
        attributes: Sequence[Mapping[str, str]] = (),
    ) -> int:
        """Store photos a person labelled (image, category) as labelled traffic, embedded by
        the serving model (and a reindex's new one); returns how many were new. They drive
        the next calibration (`calibrate`), with their `attributes` (one mapping per photo,
        or none) the attributes' too. All or nothing: a bad image refuses the call."""
        self._check_count(photos, "labelled photos")
        given = list(attributes) or [{}] * len(photos)
        if len(given) != len(photos):
            raise InvalidArgument(f"{len(given)} attribute sets for {len(photos)} photos")
        for i, labels in enumerate(given):
            check_attributes(dict(labels), f"labelled photo {i}")
        photos = [
            (image, category_name(label, f"label of photo {i}"))
            for i, (image, label) in enumerate(photos)
        ]
        if not source.strip():
            raise InvalidArgument("source is empty; say where the labels came from")
        images = [image for image, _ in photos]
        names = [f"labelled photo {i}" for i in range(len(photos))]
        check_deadline(deadline, "embedding; nothing was written")
        with self._use() as s:
            vectors, _ = s.embed(images, names)
            pending = self._pending
            other = pending.embed(images, names)[0] if pending is not None else None
            items = []
            for (image, label), labels in zip(photos, given, strict=True):
                sha = image_sha256(image)
                items.append(
                    LabelledPhoto(
                        reference_id(label, sha), label, source, sha, image, 0, dict(labels)
                    )
                )
            check_deadline(deadline, "writing; nothing was written")
            new = self.store.add_labelled(items, s.version, list(vectors))
            if pending is not None and other is not None:
                self.store.put_labelled_vectors(
                    pending.version, {it.id: v for it, v in zip(items, other, strict=True)}
                )
        return new

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
        the model has a text tower. A name that differs only in case from an existing one is
        allowed (they are two categories), logged and returned as a warning.
        """
        name = category_name(name)
        if parent:
            parent = self._stored_name(parent, "parent category name")
        if parent == name:
            raise InvalidArgument(f"category {name!r} cannot be its own parent")
        check_metadata(metadata or {}, f"category {name!r}")
        check_prompts(prompts)
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
                prepared = self.prepare(name, references, deadline)
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
        return AddResult(category, _added(prepared, duplicate), self._case_twins(name))

    def add_references(
        self,
        category: str,
        references: Sequence[ReferenceInput],
        deadline: float | None = None,
    ) -> AddResult:
        """Add references to an existing category; all or nothing; duplicates are not stored."""
        category = self._stored_name(category)
        if not references:
            raise InvalidArgument("no references given: send at least one image")
        if self.store.get_category(category) is None:
            raise NotFound(
                f"category {category!r} does not exist; create it with AddCategory first"
            )
        with self._gate.write(), self._use() as s:
            prepared = self.prepare(category, references, deadline)
            duplicate = self.store.add_references(category, prepared, s.version)
            # A duplicate is indexed only under an id the store holds: an image added before
            # a rename is a duplicate by its former id, which the index has already.
            repeated = [r.id for r, d in zip(prepared, duplicate, strict=True) if d]
            held = {r.id for r in self.store.get_references(repeated) if r is not None}
            self._index_new(
                s,
                category,
                [r for r, d in zip(prepared, duplicate, strict=True) if not d or r.id in held],
            )
        stored = self.store.get_category(category)
        if stored is None:  # deleted concurrently right after our commit
            raise NotFound(f"category {category!r} was deleted while references were added")
        return AddResult(stored, _added(prepared, duplicate))

    def update_category(
        self,
        name: str,
        *,
        new_name: str | None = None,
        parent: str | None = None,
        prompts: Sequence[str] | None = None,
        metadata: dict[str, str] | None = None,
    ) -> Category:
        """Rename, move, or replace prompts or metadata, atomically in the store; the index,
        the taxonomy and the text evidence follow before the call returns."""
        name = self._stored_name(name)
        if new_name is not None:
            new_name = category_name(new_name, "new name")
        if parent:
            parent = self._stored_name(parent, "parent category name")
        if parent is not None and parent in (name, new_name):
            raise InvalidArgument(f"category {name!r} cannot be its own parent")
        if metadata is not None:
            check_metadata(metadata, f"category {name!r}")
        if prompts is not None:
            check_prompts(prompts)
        if new_name is None and parent is None and prompts is None and metadata is None:
            raise InvalidArgument("nothing to change: give a new name, parent, prompts or metadata")
        with self._gate.write(), self._use() as s:
            if prompts:
                s.require_text()
            category = self.store.update_category(
                name, new_name=new_name, parent=parent, prompts=prompts, metadata=metadata
            )
            states = [s] + ([self._pending] if self._pending is not None else [])
            for state in states:
                if category.name != name:
                    state.index.relabel(name, category.name)
                state.drop_text(name)
                state.set_texts([category])
            self._parents.pop(name, None)
            self._parents[category.name] = category.parent
            for child, above in list(self._parents.items()):
                if above == name:
                    self._parents[child] = category.name
        if category.name != name:
            self._case_twins(category.name)
        return category

    def has_category(self, name: str) -> bool:
        return self.store.get_category(self._stored_name(name)) is not None

    def remove_references(self, reference_ids: Sequence[str]) -> int:
        if not reference_ids:
            raise InvalidArgument("no reference ids given")
        check_reference_ids(reference_ids)
        try:
            with self._gate.write(), self._use() as s:
                removed = self.store.remove_references(reference_ids)
                s.index.remove([r.id for r in removed])
                self._follow_attributes([], [r.id for r in removed])
        except NotFound:  # perhaps removed by an attempt whose reply was lost
            self._drop_unstored(list(reference_ids))
            raise
        return len(removed)

    def delete_category(self, name: str) -> int:
        name = self._stored_name(name)
        try:
            with self._gate.write(), self._use() as s:
                removed = self.store.delete_category(name)
                s.index.remove([r.id for r in removed])
                self._follow_attributes([], [r.id for r in removed])
                self._parents.pop(name, None)
                s.drop_text(name)
        except NotFound:  # perhaps deleted by an attempt whose reply was lost
            self._follow_store(name)
            raise
        return len(removed)

    # -- reads ---------------------------------------------------------------------------

    def get_category(self, name: str) -> Category:
        name = self._stored_name(name)
        category = self.store.get_category(name)
        if category is None:
            raise NotFound(f"category {name!r} does not exist")
        return category

    def references(self, name: str, offset: int = 0, limit: int = 0) -> list[Reference]:
        """A category's references, newest first; a page of them with `limit`."""
        if offset < 0 or limit < 0:
            raise InvalidArgument(f"offset and limit must not be negative; got {offset}, {limit}")
        name = self._stored_name(name)
        ids = self.store.reference_ids(name)
        found = [r for r in self.store.get_references(ids) if r is not None]
        found.sort(key=lambda r: (-r.created_at_ms, r.id))
        return found[offset : offset + limit] if limit else found[offset:]

    def reference_image(self, reference_id: str) -> tuple[Reference, bytes]:
        [reference] = self.store.get_references([reference_id])
        image = self.store.get_image(reference_id) if reference is not None else None
        if reference is None or image is None:
            raise NotFound(f"reference {reference_id!r} does not exist")
        return reference, image

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
            **self.change_lag(),
        )

    def change_lag(self) -> dict[str, Any]:
        """Where this server stands on the store's change stream, and how far behind."""
        position = self.change_position
        behind, oldest_ms = self.store.changes_after(position)
        return {
            "server_id": self.store.origin,
            "change_position": position,
            "change_lag": behind,
            "change_lag_s": max(0.0, time.time() - oldest_ms / 1000) if behind else 0.0,
        }

    # -- following other servers (server.follower) ---------------------------------------

    def apply_change(self, change: Mapping[str, str]) -> None:
        """Bring this server level with one change another server wrote to the store (an
        entry of its change stream). Idempotent: the store says what to hold."""
        op = change.get("op", "")
        if op in ("add_category", "add_references", "delete_category"):
            self._follow_store(change["category"])
        elif op == "update_category":
            self._follow_update(change.get("previous", ""), change["category"])
        elif op == "remove_references":
            self._drop_unstored([i for i in change.get("references", "").split(",") if i])
        elif op == "calibration":
            self._follow_calibration(change["version"])
        # switch_model: the follower hands it to the reindexer, which opens models.

    def reload(self) -> None:
        """Level everything with the store (a replica that fell behind the change stream):
        the index of each model version held, parents, prompts and calibrations."""
        with self._gate.switch():
            categories = self.store.list_categories()
            self._parents = {c.name: c.parent for c in categories}
            self._attributes = self.store.all_attributes()
            for state in self._states():
                self.sync_index(state)
                for name in state.prompted_names():
                    state.drop_text(name)
                state.set_texts(categories)
                self._follow_calibration(state.version)

    def _states(self) -> list[Serving]:
        pending = self._pending
        return [self._serving] + ([pending] if pending is not None else [])

    def _follow_update(self, previous: str, name: str) -> None:
        category = self.store.get_category(name)
        if category is None:  # changed again since: a later entry follows
            return
        with self._gate.switch():
            for state in self._states():
                if previous and previous != name:
                    state.index.relabel(previous, name)
                    state.drop_text(previous)
                state.drop_text(name)
                state.set_texts([category])
            if previous and previous != name:
                self._parents.pop(previous, None)
                for child, above in list(self._parents.items()):
                    if above == previous:
                        self._parents[child] = name
            self._parents[name] = category.parent
        self._follow_store(name)

    def _follow_calibration(self, version: str) -> None:
        for state in self._states():
            if state.version == version:
                state.calibration = Calibration.from_json(self.store.get_calibration(version) or {})

    # -- helpers -------------------------------------------------------------------------

    def _stored_name(self, given: str, what: str = "category name") -> str:
        """The name under which the category a request names is stored: the NFC form
        (`normalise_name`), or the name as given for a category stored before names were
        normalised (which is then still found, renamed or deleted by its own spelling)."""
        name = category_name(given, what)
        if name == given or self.store.get_category(name) is not None:
            return name
        return given if self.store.get_category(given) is not None else name

    def _case_twins(self, name: str) -> tuple[str, ...]:
        """Warnings when other categories' names differ from `name` only in case (or Unicode
        form): they are allowed, but mostly a typo that splits one category in two."""
        twins = case_twins(name, self.store.category_names())
        if not twins:
            return ()
        warning = case_twin_warning(name, twins)
        log.warning("%s", warning)
        return (warning,)

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
            gone = [i for i, ref in zip(held, found, strict=True) if ref is None]
            s.index.remove(gone)
            self._follow_attributes([], gone)

    def _index_new(self, s: Serving, category: str, references: Sequence[NewReference]) -> None:
        # Duplicates too, once each: a write that committed while its reply was lost (store
        # connection dropped) comes back as a duplicate on retry and must still be indexed.
        # The index skips ids it holds already.
        new = list({r.id: r for r in references}.values())
        if new:
            s.index.add(
                [r.id for r in new], [category] * len(new), np.stack([r.vector for r in new])
            )
            # As stored: a duplicate keeps the attributes it was first added with.
            self._follow_attributes([r.id for r in new if r.attributes])

    def _follow_attributes(self, added: Sequence[str], removed: Sequence[str] = ()) -> None:
        """Hold the stored attributes of the references `added`, drop those `removed`."""
        for gone in removed:
            self._attributes.pop(gone, None)
        if added:
            self._attributes.update(self.store.attributes_of(added))

    def _check_count(self, items: Sequence[object], what: str) -> None:
        if not items:
            raise InvalidArgument(f"no {what} given")
        limit = self.limits.max_images_per_request
        if len(items) > limit:
            raise InvalidArgument(
                f"{len(items)} {what} in one request; the limit is {limit}: split the request"
            )

    def reference_problem(self, image: bytes) -> str | None:
        """Why these image bytes cannot become a reference because of their shape (see
        `embedder.images.reference_shape_problem`), or None."""
        try:
            check_reference(image, self._serving.embedder.limits)
        except ImageDecodeError as exc:
            return str(exc)
        return None

    def prepare(
        self, category: str, references: Sequence[ReferenceInput], deadline: float | None
    ) -> list[NewReference]:
        """Decode and embed every reference, or fail naming the first bad one; while a
        reindex runs, embed it with the new model too, so it is stored for both versions."""
        if not references:
            return []
        self._check_count(references, "references")
        limits = self._serving.embedder.limits
        for i, ref in enumerate(references):
            check_metadata(ref.metadata, f"reference {i}")
            check_attributes(ref.attributes, f"reference {i}")
            try:
                check_reference(ref.image, limits)
            except ImageDecodeError as exc:
                raise InvalidArgument(f"reference {i}: {exc}; nothing was written") from exc
        images = [r.image for r in references]
        labels = [f"reference {i}" for i in range(len(references))]
        check_deadline(deadline, "embedding; nothing was written")  # queued past it
        vectors, _ = self._serving.embed(images, labels)
        pending = self._pending
        other = pending.embed(images, labels)[0] if pending is not None else None
        check_deadline(deadline, "writing the references; nothing was written")
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
                    attributes=dict(ref.attributes),
                    other_vectors={pending.version: other[i]}
                    if pending is not None and other is not None
                    else {},
                )
            )
        return prepared

    def close(self) -> None:
        """Stop the model worker once in-flight calls are done, and the store's prober."""
        self._serving.close()
        self.store.breaker.close()


def _added(references: Sequence[NewReference], duplicate: Sequence[bool]) -> list[AddedReference]:
    return [
        AddedReference(r.id, r.sha256, dup) for r, dup in zip(references, duplicate, strict=True)
    ]
