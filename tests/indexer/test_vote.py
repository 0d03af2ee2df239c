"""kNN voting: the math by hand, and no drowning of small categories by big ones."""

from __future__ import annotations

import math

import pytest

from indexer.index import Hit
from indexer.vote import VoteConfig, knn_vote


def hit(category: str, similarity: float, n: int = 0) -> Hit:
    return Hit(f"{category}-{n}-{similarity}", category, similarity)


def test_scores_match_a_hand_computation() -> None:
    config = VoteConfig(k=3, votes_per_category=3, temperature=0.1)
    hits = [hit("a", 0.9), hit("b", 0.8), hit("a", 0.7)]
    wa = math.exp(0.9 / 0.1) + math.exp(0.7 / 0.1)
    wb = math.exp(0.8 / 0.1)
    scores = knn_vote(hits, config, top_n=5)
    assert [s.category for s in scores] == ["a", "b"]
    assert scores[0].score == pytest.approx(wa / (wa + wb))
    assert scores[1].score == pytest.approx(wb / (wa + wb))


def test_a_big_category_cannot_outvote_a_closer_small_one_by_numbers() -> None:
    config = VoteConfig(k=20, votes_per_category=3, temperature=0.05)
    big = [hit("big", 0.80, n) for n in range(17)]
    small = [hit("small", 0.86, n) for n in range(3)]
    scores = knn_vote(big + small, config, top_n=2)
    assert scores[0].category == "small"
    # Without the per-category cap, 17 votes would have won.
    uncapped = knn_vote(big + small, VoteConfig(20, 20, 0.05), top_n=2)
    assert uncapped[0].category == "big"


def test_top_n_truncates_and_scores_sum_to_one_over_all_categories() -> None:
    hits = [hit(c, 0.5 + i / 100) for i, c in enumerate("abcdef")]
    scores = knn_vote(hits, VoteConfig(), top_n=3)
    assert len(scores) == 3
    assert sum(s.score for s in knn_vote(hits, VoteConfig(), top_n=10)) == pytest.approx(1.0)
    assert knn_vote([], VoteConfig(), top_n=3) == []
