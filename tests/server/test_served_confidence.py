"""The served confidence: the head's curve of the blend, discounted by what the head never saw.
Catalog._confidence alone; tests/integration/test_confidence.py runs it in a real server."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from indexer.head import ConfidenceHead
from indexer.vote import CategoryScore
from server.catalog import Catalog


def head_over(*categories: str) -> ConfidenceHead:
    """A head over `categories` whose curve maps a blended probability p to p / 2."""
    n = len(categories)
    head = ConfidenceHead(categories, np.zeros(2, np.float32), np.zeros((n, 2), np.float32),
                          np.zeros(n, np.float32))  # fmt: skip
    return replace(head, curve=(np.array([0.0, 1.0]), np.array([0.0, 0.5])))


def serving(references: dict[str, int]) -> SimpleNamespace:
    return SimpleNamespace(index=SimpleNamespace(count=lambda c: references.get(c, 0)))


def scores(**shares: float) -> list[CategoryScore]:
    return [CategoryScore(c, p) for c, p in shares.items()]


def test_the_confidence_is_the_curve_of_the_blended_probability() -> None:
    s = serving({"a": 5, "b": 5})
    assert Catalog._confidence(s, head_over("a", "b"), scores(a=0.9, b=0.1), 0.8) == 0.4


def test_a_category_the_head_never_saw_takes_its_share_out_of_the_heads_say() -> None:
    s = serving({"a": 5, "b": 5, "new": 2})
    confidence = Catalog._confidence(s, head_over("a", "b"), scores(a=0.6, new=0.3, b=0.1), 0.8)
    assert confidence == pytest.approx((0.6 + 0.1) * 0.4)


@pytest.mark.parametrize(
    ("references", "answer"),
    [({"a": 5, "new": 2}, "new"), ({"a": 5}, "prompted")],  # unseen by the head; text alone
)
def test_without_the_heads_word_the_answer_keeps_its_calibrated_score(
    references: dict[str, int], answer: str
) -> None:
    ranked = [CategoryScore(answer, 0.7), CategoryScore("a", 0.3)]
    assert Catalog._confidence(serving(references), head_over("a", "b"), ranked, 0.9) == 0.7
    assert Catalog._confidence(serving(references), None, ranked, 0.9) == 0.7
