"""Similarity-weighted kNN voting over the nearest references."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from indexer.index import Hit


@dataclass(frozen=True)
class VoteConfig:
    """How neighbours turn into category scores.

    Each neighbour's weight is exp(similarity / temperature). A category sums the weights of
    at most `votes_per_category` of its nearest neighbours, so a category with 1,000
    references cannot outvote one with 5 by numbers alone: only closeness counts.
    """

    k: int = 10
    votes_per_category: int = 3
    temperature: float = 0.05


@dataclass(frozen=True)
class CategoryScore:
    category: str
    score: float


def knn_vote(hits: Sequence[Hit], config: VoteConfig, top_n: int) -> list[CategoryScore]:
    """Category scores from the nearest references, best first; the scores sum to 1."""
    if not hits:
        return []
    best = max(h.similarity for h in hits)
    weights: dict[str, list[float]] = defaultdict(list)
    for hit in sorted(hits, key=lambda h: -h.similarity):
        votes = weights[hit.category]
        if len(votes) < config.votes_per_category:
            # Shifted by the best similarity so exp() cannot overflow; the shift cancels out.
            votes.append(math.exp((hit.similarity - best) / config.temperature))
    totals = {category: sum(votes) for category, votes in weights.items()}
    norm = sum(totals.values())
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return [CategoryScore(category, total / norm) for category, total in ranked[:top_n]]
