"""One model version's serving state: embedder, text tower, index, calibration, model worker.

A reindex builds a second `Serving` beside the one answering calls, then the catalogue swaps
the reference to it in one assignment. A call takes the reference once, when it starts, and
uses only that object to the end, so no call mixes two versions and none fails because of a
switch; a retired state is closed once the last call using it has finished.
"""

from __future__ import annotations

import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedder import Embedder, ImageDecodeError
from embedder.backends import available_cores
from indexer.calibration import Calibration
from indexer.errors import FailedPrecondition, InvalidArgument, NearcatError
from indexer.index import VectorIndex
from server.batcher import MicroBatcher

if TYPE_CHECKING:
    from embedder.text import TextTower
    from indexer.store import Category


# Stored images (references, labelled photos) embedded at a time when a state is filled.
EMBED_BATCH = 32


@dataclass(frozen=True)
class Batching:
    """How the model worker groups concurrent calls (see server.batcher)."""

    max_batch: int = 32
    max_wait_ms: float = 2.0
    on_batch: Callable[[int], None] | None = None  # told each batch's size (metrics)
    workers: int = 1  # model runs side by side (see model_layout)


def model_layout(workers: int, device: str) -> tuple[int, int | None]:
    """(model workers, threads each: None for all cores) for `--model-workers` (0: auto).

    On a CPU, auto runs one single-threaded model per core: EfficientNet-Lite1 on 2 cores in
    batches of 8 does 142 images/s at 13.9 ms of CPU each, against 121 at 15.8 as one run
    spread over both cores (no hand-offs between threads inside every layer), though a lone
    image takes 14.5 ms instead of 10.4. A GPU wants one stream of large batches: one worker.
    """
    if workers == 0:
        workers = 1 if _may_use_gpu(device) else available_cores()
    if workers == 1:
        return 1, None
    return workers, max(1, available_cores() // workers)


def _may_use_gpu(device: str) -> bool:
    if device == "cpu":
        return False
    if device == "cuda":
        return True
    import torch

    from embedder.artifact import onnx_has_cuda

    return bool(torch.cuda.is_available()) or onnx_has_cuda()


class Serving:
    """Everything that answers with one model version. The embedder, text tower and model
    worker never change; the index takes adds and removes and the calibration may be refit,
    both for this same version."""

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        text: TextTower | None = None,
        calibration: Calibration | None = None,
        batching: Batching | None = None,
    ) -> None:
        self.embedder = embedder
        self.index = index
        self.text = text
        self.calibration = calibration or Calibration()
        batching = batching or Batching()
        self.batcher = MicroBatcher(
            self.model_rows,
            batching.max_batch,
            batching.max_wait_ms,
            batching.on_batch,
            batching.workers,
        )
        # Text vectors: of categories with prompts (encoded when they are added), and of the
        # others' names (encoded only once text is needed: the text model is big to load).
        self._text_lock = threading.Lock()
        self.prompted: dict[str, np.ndarray] = {}
        self._prompt_keys: dict[str, frozenset[str]] = {}  # each prompt's `text_key`
        self._names: dict[str, np.ndarray] = {}
        self._text_matrix: tuple[list[str], np.ndarray] | None = None
        # Calls using this state right now, and whether it has been replaced (see Catalog).
        self.users = 0
        self.retired = False

    @property
    def version(self) -> str:
        return self.embedder.version

    # -- the model -----------------------------------------------------------------------

    def model_rows(self, pixels: np.ndarray) -> np.ndarray:
        """What the model worker runs: embeddings, followed by the image's semantic vector
        (for text prompts) when there is a text tower; `split_rows` takes them apart."""
        if self.text is None:
            return self.embedder.embed_pixels(pixels)
        vectors, semantics = self.embedder.embed_pixels_with_semantics(pixels)
        return np.hstack([vectors, semantics]).astype(np.float32, copy=False)

    def split_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows[:, : self.embedder.dim], rows[:, self.embedder.dim :]

    def embed(
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
            return self.embed_decoded(pixels)

    def decode_each(self, images: Sequence[bytes]) -> list[np.ndarray | NearcatError]:
        """Pixels of each image, or its own error; call inside `batcher.expecting()`."""
        decoded: list[np.ndarray | NearcatError] = []
        for i, image in enumerate(images):
            try:
                decoded.append(self.embedder.decode(image))
            except ImageDecodeError as exc:
                decoded.append(InvalidArgument(f"image {i}: {exc}"))
        return decoded

    def embed_decoded(
        self, decoded: Sequence[np.ndarray | NearcatError]
    ) -> tuple[np.ndarray, np.ndarray]:
        pixels = [d for d in decoded if isinstance(d, np.ndarray)]
        if not pixels:
            rows = np.zeros((0, self.embedder.dim), dtype=np.float32)
        else:  # one image (a Classify call) goes as a view: no copy of its 0.7 MB of pixels
            rows = self.batcher.run(pixels[0][None] if len(pixels) == 1 else np.stack(pixels))
        return self.split_rows(rows)

    # -- text ----------------------------------------------------------------------------

    def require_text(self) -> TextTower:
        if self.text is None:
            raise FailedPrecondition(
                f"model {self.version} has no text tower, so text prompts cannot be "
                "used; add reference images instead, or serve a model with one "
                "(the packaged efficientnet_lite0 or a CLIP model)"
            )
        return self.text

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        text = self.require_text()
        try:
            return text.encode(list(texts))
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from exc

    def set_texts(self, categories: Sequence[Category]) -> None:
        """Encode the prompts of these categories (those this state has not encoded yet)."""
        todo = [c for c in categories if c.prompts and c.name not in self.prompted]
        if self.text is not None and todo:
            self.remember_prompts(todo, self.prompt_vectors(todo))

    def prompt_vectors(self, categories: Sequence[Category]) -> list[np.ndarray]:
        """One vector per category from its prompts (a prompt ensemble, see `prompt_ensemble`)."""
        texts = [c.prompts for c in categories]
        flat = self.encode_text([t for group in texts for t in group])
        vectors, start = [], 0
        for group in texts:
            vectors.append(prompt_ensemble(flat[start : start + len(group)]))
            start += len(group)
        return vectors

    def remember_prompts(self, categories: Sequence[Category], vectors: list[np.ndarray]) -> None:
        with self._text_lock:
            for category, vector in zip(categories, vectors, strict=True):
                self.prompted[category.name] = vector
                self._prompt_keys[category.name] = frozenset(map(text_key, category.prompts))
            self._text_matrix = None

    def text_matches(self, text: str, names: Sequence[str]) -> set[str]:
        """Those of `names` whose own text is `text`, ignoring case and spacing: one of its
        prompts, or, for a category without prompts, its name."""
        key = text_key(text)
        with self._text_lock:
            return {
                name
                for name in names
                if key in self._prompt_keys.get(name, frozenset([text_key(name)]))
            }

    def prompted_names(self) -> set[str]:
        with self._text_lock:
            return set(self.prompted)

    def forget_text_matrix(self) -> None:
        with self._text_lock:
            self._text_matrix = None

    def drop_text(self, name: str) -> None:
        with self._text_lock:
            self.prompted.pop(name, None)
            self._prompt_keys.pop(name, None)
            self._names.pop(name, None)
            self._text_matrix = None

    def text_snapshot(self, all_names: Sequence[str]) -> tuple[list[str], np.ndarray] | None:
        """(category names, their text vectors): prompts where given, else the name."""
        with self._text_lock:
            if self._text_matrix is not None:
                return self._text_matrix
            unencoded = [n for n in all_names if n not in self.prompted and n not in self._names]
        if unencoded:  # outside the lock: encoding takes a while
            encoded = self.encode_text(unencoded)
        with self._text_lock:
            if unencoded:
                self._names.update(zip(unencoded, encoded, strict=True))
            names = [n for n in all_names if n in self.prompted or n in self._names]
            if not names:
                return None
            vectors = [self.prompted.get(n, self._names.get(n)) for n in names]
            self._text_matrix = (names, np.stack([v for v in vectors if v is not None]))
            return self._text_matrix

    def close(self) -> None:
        """Stop the model worker once in-flight calls are done."""
        self.batcher.close()


def text_key(text: str) -> str:
    """What two texts that differ only in case, spacing or Unicode form have in common."""
    return unicodedata.normalize("NFC", " ".join(text.split())).casefold()


def text_cosines(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of `vectors` with `query`, in [-1, 1]. Text vectors
    are not all unit length (the packaged tower's are class weightings of length 0.04-0.26):
    their plain dot product ranks the longest first, not the most alike."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    return np.asarray((vectors @ query) / np.clip(norms, 1e-12, None), dtype=np.float32)


def prompt_ensemble(vectors: np.ndarray) -> np.ndarray:
    """The prompts' mean direction at their mean length; one prompt is its own vector.

    At the tower's own scale, like the category names it competes with in the text softmax:
    the packaged tower's vectors are class weightings of length 0.04-0.17, and a prompt
    vector stretched to unit length outscored every name 6-26 times, so a category known
    from a prompt alone took most other categories' images (60% on clothing's val part).
    """
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    length = float(np.linalg.norm(vectors, axis=1).mean())
    return (mean * (length / norm) if norm > 0 else mean).astype(np.float32)


class SwitchGate:
    """Writes pass together; a switch waits for the writes in flight and holds new ones back
    until it is done (a readers-writer lock that favours the switch)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._writes = 0
        self._switching = False

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._switching:
                self._cond.wait()
            self._writes += 1
        try:
            yield
        finally:
            with self._cond:
                self._writes -= 1
                self._cond.notify_all()

    @contextmanager
    def switch(self) -> Iterator[None]:
        with self._cond:
            while self._switching:
                self._cond.wait()
            self._switching = True
            while self._writes:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._switching = False
                self._cond.notify_all()
