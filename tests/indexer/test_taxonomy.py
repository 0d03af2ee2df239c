"""Taxonomy levels: parents collect their children's probability."""

from __future__ import annotations

import pytest

from indexer.taxonomy import LevelScore, level_scores, path_of
from indexer.vote import CategoryScore

PARENTS: dict[str, str | None] = {
    "Fruit": None,
    "Apple": "Fruit",
    "Granny-Smith": "Apple",
    "Gala": "Apple",
    "Banana": "Fruit",
    "Shoes": None,
}


def test_path_runs_from_the_top() -> None:
    assert path_of("Granny-Smith", PARENTS) == ["Fruit", "Apple", "Granny-Smith"]
    assert path_of("Shoes", PARENTS) == ["Shoes"]
    assert path_of("unknown", PARENTS) == ["unknown"]
    assert path_of("a", {"a": "b", "b": "a"}) == ["b", "a"]  # a stored cycle stops the walk


def test_ambiguous_leaves_under_a_clear_parent() -> None:
    scores = [
        CategoryScore("Granny-Smith", 0.48),
        CategoryScore("Gala", 0.47),
        CategoryScore("Banana", 0.03),
        CategoryScore("Shoes", 0.02),
    ]
    levels = level_scores(scores, PARENTS)
    assert [(lv.depth, lv.category) for lv in levels] == [
        (1, "Fruit"),
        (2, "Apple"),
        (3, "Granny-Smith"),
    ]
    assert [lv.score for lv in levels] == pytest.approx([0.98, 0.95, 0.48])


def test_levels_follow_the_mass_not_the_single_best_leaf() -> None:
    # The best leaf is a top-level one, but most probability sits under Fruit.
    scores = [
        CategoryScore("Shoes", 0.4),
        CategoryScore("Gala", 0.3),
        CategoryScore("Banana", 0.3),
    ]
    assert level_scores(scores, PARENTS)[0] == LevelScore(1, "Fruit", pytest.approx(0.6))
    assert level_scores([], PARENTS) == []
