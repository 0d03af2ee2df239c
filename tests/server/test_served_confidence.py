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
    blended, calibrated = scores(a=0.8, b=0.2), scores(a=0.9, b=0.1)
    assert Catalog._confidence(s, head_over("a", "b"), blended, calibrated) == 0.4


def test_a_category_the_head_never_saw_takes_its_share_out_of_the_heads_say() -> None:
    """The curve reads a's share among the categories the head knows, 0.6 of 0.8; then the
    new category's calibrated 0.3 comes out of the head's say."""
    s = serving({"a": 5, "b": 5, "new": 2})
    blended, calibrated = scores(a=0.6, new=0.2, b=0.2), scores(a=0.6, new=0.3, b=0.1)
    confidence = Catalog._confidence(s, head_over("a", "b"), blended, calibrated)
    assert confidence == pytest.approx((0.6 + 0.1) * (0.6 / 0.8) / 2)


@pytest.mark.parametrize(
    ("references", "answer"),
    [({"a": 5, "new": 2}, "new"), ({"a": 5}, "prompted")],  # unseen by the head; text alone
)
def test_without_the_heads_word_the_answer_keeps_its_calibrated_score(
    references: dict[str, int], answer: str
) -> None:
    blended = [CategoryScore(answer, 0.6), CategoryScore("a", 0.4)]
    calibrated = [CategoryScore(answer, 0.7), CategoryScore("a", 0.3)]
    assert Catalog._confidence(serving(references), head_over("a", "b"), blended, calibrated) == 0.7
    assert Catalog._confidence(serving(references), None, blended, calibrated) == 0.7


def test_an_answer_known_to_the_head_but_without_references_keeps_its_score() -> None:
    """Its photos deleted, prompts added: the head's word on its old photos does not count."""
    blended, calibrated = scores(a=0.6, b=0.4), scores(a=0.7, b=0.3)
    assert Catalog._confidence(serving({"b": 5}), head_over("a", "b"), blended, calibrated) == 0.7
