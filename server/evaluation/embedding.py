"""Embedding labelled image files for evaluation: decoded in a worker thread while the model
runs, unreadable files reported rather than raised, and every vector kept by model version
and file hash (`EmbeddingCache`), in memory and optionally in a file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from embedder.datasets import LabeledImage
from embedder.images import ImageDecodeError
from embedder.model import Embedder
from indexer.ids import image_sha256

EMBED_BATCH = 32


# -- embedding -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class EmbeddedImages:
    """The images that could be embedded, their file hashes and vectors, row for row."""

    images: list[LabeledImage]
    shas: list[str]
    vectors: np.ndarray

    @property
    def labels(self) -> list[str]:
        return [i.category for i in self.images]


class EmbeddingCache:
    """Vectors by (model version, sha256 of the file), so within a run an image is embedded
    once per model however often it appears (the same file as reference and query, say);
    saved to a file (`nearcat eval --embedding-cache`), across runs too."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str], np.ndarray] = {}

    def get(self, version: str, sha: str) -> np.ndarray | None:
        return self._vectors.get((version, sha))

    def put(self, version: str, sha: str, vector: np.ndarray) -> None:
        self._vectors[(version, sha)] = vector

    def save(self, path: Path) -> None:
        """Write every vector to `path` (.npz, one matrix per model version), atomically."""
        versions = sorted({v for v, _ in self._vectors})
        arrays: dict[str, np.ndarray] = {"versions": np.array(versions)}
        for n, version in enumerate(versions):
            shas = sorted(sha for v, sha in self._vectors if v == version)
            arrays[f"shas{n}"] = np.array(shas)
            arrays[f"vectors{n}"] = np.stack([self._vectors[(version, sha)] for sha in shas])
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez(partial, **arrays)  # type: ignore[arg-type]
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> EmbeddingCache:
        """The vectors saved at `path`; empty when there is no such file."""
        cache = cls()
        if path.exists():
            with np.load(path) as data:
                for n, version in enumerate(data["versions"].tolist()):
                    vectors = data[f"vectors{n}"]
                    for sha, vector in zip(data[f"shas{n}"].tolist(), vectors, strict=True):
                        cache.put(str(version), str(sha), vector)
        return cache


@dataclass
class DecodedBatch:
    images: list[LabeledImage] = field(default_factory=list)
    shas: list[str] = field(default_factory=list)
    vectors: list[np.ndarray | None] = field(default_factory=list)  # None: still to embed
    pixels: list[np.ndarray] = field(default_factory=list)  # of the None rows, in order
    skipped: list[Skipped] = field(default_factory=list)


def decode_batch(
    embedder: Embedder, cache: EmbeddingCache, images: Sequence[LabeledImage]
) -> DecodedBatch:
    batch = DecodedBatch()
    for image in images:
        try:
            data = image.path.read_bytes()
        except OSError as exc:
            batch.skipped.append(Skipped(image.path, f"cannot read: {exc.strerror or exc}"))
            continue
        sha = image_sha256(data)
        vector = cache.get(embedder.version, sha)
        if vector is None:
            try:
                batch.pixels.append(embedder.decode(data))
            except ImageDecodeError as exc:
                batch.skipped.append(Skipped(image.path, exc.reason))
                continue
        batch.images.append(image)
        batch.shas.append(sha)
        batch.vectors.append(vector)
    return batch


def embed_images(
    embedder: Embedder,
    images: Sequence[LabeledImage],
    cache: EmbeddingCache | None = None,
    batch_size: int = EMBED_BATCH,
    desc: str = "embedding",
) -> tuple[EmbeddedImages, list[Skipped]]:
    """Embed labelled image files; unreadable ones are returned as skipped, never raised.

    The next batch is read and decoded in a worker thread while the network runs on this one.
    """
    cache = cache or EmbeddingCache()
    chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
    kept: list[LabeledImage] = []
    shas: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[Skipped] = []
    with (
        ThreadPoolExecutor(max_workers=1) as pool,
        tqdm(total=len(images), desc=desc, unit="img") as bar,
    ):
        pending: Future[DecodedBatch] | None = None
        for n, chunk in enumerate(chunks):
            if pending is None:
                pending = pool.submit(decode_batch, embedder, cache, chunk)
            batch = pending.result()
            pending = (
                pool.submit(decode_batch, embedder, cache, chunks[n + 1])
                if n + 1 < len(chunks)
                else None
            )
            fresh: Iterator[np.ndarray] = iter(
                embedder.embed_pixels(np.stack(batch.pixels)) if batch.pixels else []
            )
            for sha, vector in zip(batch.shas, batch.vectors, strict=True):
                if vector is None:
                    vector = next(fresh)
                    cache.put(embedder.version, sha, vector)
                rows.append(vector)
            kept.extend(batch.images)
            shas.extend(batch.shas)
            skipped.extend(batch.skipped)
            bar.update(len(chunk))
    vectors = np.stack(rows) if rows else np.empty((0, embedder.dim), dtype=np.float32)
    return EmbeddedImages(kept, shas, vectors.astype(np.float32, copy=False)), skipped
