"""kNN accuracy on trained and held-out categories, and the checkpoint selection rule.

References are the training images of every category, held-out ones included (added as
references only, as a user would add a new category); queries are validation images. Accuracy
is reported separately for queries of trained categories and of held-out categories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from indexer.ids import reference_id
from indexer.index import VectorIndex
from indexer.vote import VoteConfig, knn_vote


def knn_top1(
    references: np.ndarray,
    reference_categories: Sequence[str],
    queries: np.ndarray,
    k: int,
) -> list[str]:
    """The top category of each query by the service's own index and vote."""
    index = VectorIndex(references.shape[1], use_gpu=False)
    ids = [reference_id(c, f"{n:064x}") for n, c in enumerate(reference_categories)]
    index.add(ids, list(reference_categories), references)
    config = VoteConfig(k=k)
    return [
        scores[0].category if (scores := knn_vote(hits, config, top_n=1)) else ""
        for hits in index.search(queries, k)
    ]


@dataclass(frozen=True)
class SplitAccuracy:
    """Top-1 kNN accuracy on queries of trained (`seen`) and of held-out categories."""

    seen: float
    held_out: float | None  # None when nothing is held out
    queries_seen: int
    queries_held_out: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {
            "seen_top1": self.seen,
            "held_out_top1": self.held_out,
            "queries_seen": self.queries_seen,
            "queries_held_out": self.queries_held_out,
        }


def split_accuracy(
    references: np.ndarray,
    reference_categories: Sequence[str],
    queries: np.ndarray,
    query_categories: Sequence[str],
    held_out: Sequence[str],
    k: int,
) -> SplitAccuracy:
    predicted = knn_top1(references, reference_categories, queries, k)
    held = set(held_out)
    hits: dict[bool, list[bool]] = {True: [], False: []}
    for guess, truth in zip(predicted, query_categories, strict=True):
        hits[truth in held].append(guess == truth)
    return SplitAccuracy(
        seen=float(np.mean(hits[False])) if hits[False] else 0.0,
        held_out=float(np.mean(hits[True])) if hits[True] else None,
        queries_seen=len(hits[False]),
        queries_held_out=len(hits[True]),
    )


def selection_score(accuracy: SplitAccuracy, held_out_floor: float | None) -> float:
    """Seen accuracy, as long as held-out accuracy stays at or above the floor.

    An epoch below the floor scores below every epoch above it (held-out accuracy - 1), so
    a checkpoint that buys seen accuracy with held-out accuracy is never selected silently.
    """
    if held_out_floor is None or accuracy.held_out is None:
        return accuracy.seen
    if accuracy.held_out >= held_out_floor:
        return accuracy.seen
    return accuracy.held_out - 1.0
