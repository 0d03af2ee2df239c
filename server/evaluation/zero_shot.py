"""Zero-shot evaluation: queries classified from the category names alone, by the model's
text tower and zero-shot head; no reference image is used (`nearcat eval --zero-shot`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from embedder.datasets import LabeledImage
from embedder.model import Embedder
from embedder.text import text_shares
from server.evaluation.embedding import EMBED_BATCH, EmbeddingCache, Skipped, decode_batch
from server.evaluation.metrics import TOP_N, Answer, Metrics, score

if TYPE_CHECKING:
    from embedder.text import TextTower


# -- zero-shot from category names ---------------------------------------------------------


@dataclass
class ZeroShotEvaluation:
    """Queries classified from the category names alone: no reference image is used."""

    model_name: str
    model_version: str
    tower_version: str
    logit_scale: float
    labels: list[str]  # the candidate categories, whose names are the prompts
    metrics: Metrics
    skipped: list[Skipped]
    split: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "zero_shot": {
                "text_tower": self.tower_version,
                "logit_scale": self.logit_scale,
                "prompts": "the category names",
                "candidates": self.labels,
                "chance_top1": round(1 / len(self.labels), 4),
            },
            "counts": {
                "queries": self.metrics.queries,
                "categories": len(self.labels),
                "skipped": len(self.skipped),
            },
            **self.metrics.to_dict(),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
            **({"split": self.split} if self.split is not None else {}),
        }


def embed_semantics(
    embedder: Embedder, images: Sequence[LabeledImage], batch_size: int = EMBED_BATCH
) -> tuple[list[LabeledImage], np.ndarray, list[Skipped]]:
    """The zero-shot head's semantic vectors of labelled image files; unreadable ones skipped."""
    kept: list[LabeledImage] = []
    rows: list[np.ndarray] = []
    skipped: list[Skipped] = []
    nothing_cached = EmbeddingCache()  # so every readable image comes back as pixels
    for start in tqdm(range(0, len(images), batch_size), desc="queries", unit="batch"):
        batch = decode_batch(embedder, nothing_cached, images[start : start + batch_size])
        kept += batch.images
        skipped += batch.skipped
        if batch.pixels:
            rows.append(embedder.embed_pixels_with_semantics(np.stack(batch.pixels))[1])
    semantics = np.concatenate(rows) if rows else np.empty((0, embedder.semantic_dim), np.float32)
    return kept, semantics, skipped


def zero_shot_answers(
    truths: Sequence[str], semantics: np.ndarray, labels: Sequence[str], tower: TextTower
) -> list[Answer]:
    """Rank `labels` for each image by semantics @ text vector of the label's name; the
    scores are softmax(tower.logit_scale * scores) over the labels (uncalibrated)."""
    probabilities = text_shares(tower, semantics, tower.encode(list(labels)))
    answers = []
    for truth, row in zip(truths, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:TOP_N]
        answers.append(
            Answer(truth, tuple(labels[i] for i in best), tuple(float(row[i]) for i in best))
        )
    return answers


def evaluate_zero_shot(
    queries: Sequence[LabeledImage],
    model: Embedder,
    labels: Sequence[str] | None = None,
    *,
    parents: Mapping[str, str | None] | None = None,
    batch_size: int = EMBED_BATCH,
) -> ZeroShotEvaluation:
    """Classify `queries` among `labels` (default: the queries' categories) from the names
    alone, with the model's text tower; ValueError when the model has none."""
    from embedder.text import load_text_tower

    tower = load_text_tower(model)
    if tower is None:
        raise ValueError(
            f"model {model.version} has no zero-shot head (no text tower): rebuild the "
            "artifact with this version of nearcat, or use an open_clip model"
        )
    candidates = sorted(set(labels) if labels else {i.category for i in queries})
    unknown = sorted({i.category for i in queries} - set(candidates))
    if unknown:
        raise ValueError(f"query categories missing from the candidates: {', '.join(unknown)}")
    if len(candidates) < 2:
        raise ValueError("zero-shot evaluation needs at least two candidate categories")
    kept, semantics, skipped = embed_semantics(model, queries, batch_size)
    if not kept:
        raise ValueError("none of the query images could be read")
    answers = zero_shot_answers([i.category for i in kept], semantics, candidates, tower)
    return ZeroShotEvaluation(
        model_name=model.config.name,
        model_version=model.version,
        tower_version=tower.version,
        logit_scale=tower.logit_scale,
        labels=candidates,
        metrics=score(answers, parents),
        skipped=skipped,
    )
