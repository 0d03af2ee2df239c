"""Calibration: the temperature fixes known over- and under-confidence; ECE by hand."""

from __future__ import annotations

import random

import pytest

from indexer.calibration import (
    Calibration,
    LabelledVote,
    ece,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
    temper,
)
from indexer.vote import CategoryScore


def votes(confidence: float, accuracy: float, n: int = 400, seed: int = 0) -> list[LabelledVote]:
    """n two-category votes of the given top share, right `accuracy` of the time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scores = [CategoryScore("a", confidence), CategoryScore("b", 1 - confidence)]
        truth = "a" if rng.random() < accuracy else "b"
        out.append(LabelledVote(scores, truth, nearest_similarity=0.5 + i / (2 * n)))
    return out


def top_ece(examples: list[LabelledVote], calibration: Calibration) -> float:
    confidences = [calibration.apply(v.scores)[0].score for v in examples]
    return ece(confidences, [v.correct for v in examples])


def test_ece_matches_a_hand_computation() -> None:
    confidences = [0.1, 0.4, 0.7, 0.95]
    correct = [False, True, False, True]
    bins = reliability_bins(confidences, correct)
    assert expected_calibration_error(bins) == pytest.approx((0.1 + 0.6 + 0.7 + 0.05) / 4)


def test_tempering_keeps_the_ranking_and_sums_to_one() -> None:
    scores = [CategoryScore("a", 0.7), CategoryScore("b", 0.2), CategoryScore("c", 0.1)]
    for temperature in (0.3, 1.0, 4.0):
        tempered = temper(scores, temperature)
        assert [s.category for s in tempered] == ["a", "b", "c"]
        assert sum(s.score for s in tempered) == pytest.approx(1.0)
    assert temper(scores, 4.0)[0].score < 0.7 < temper(scores, 0.3)[0].score
    assert temper(scores, 1.0)[0].score == pytest.approx(0.7)


def test_fit_flattens_known_over_confidence() -> None:
    # Says 0.99, is right 70% of the time: the fit must bring the confidence down to ~0.7.
    examples = votes(confidence=0.99, accuracy=0.7)
    calibration = fit_calibration(examples, "generated")
    assert calibration.temperature > 1
    assert calibration.apply(examples[0].scores)[0].score == pytest.approx(0.7, abs=0.05)
    assert top_ece(examples, calibration) < 0.05 < top_ece(examples, Calibration())
    assert calibration.ece_before == pytest.approx(top_ece(examples, Calibration()))
    assert calibration.ece_after == pytest.approx(top_ece(examples, calibration))


def test_fit_sharpens_known_under_confidence() -> None:
    examples = votes(confidence=0.6, accuracy=0.95)
    calibration = fit_calibration(examples, "generated")
    assert calibration.temperature < 1
    assert calibration.apply(examples[0].scores)[0].score == pytest.approx(0.95, abs=0.03)


def test_unknown_threshold_lets_through_all_but_the_farthest_percent() -> None:
    examples = votes(confidence=0.9, accuracy=0.9)
    calibration = fit_calibration(examples, "generated")
    nearest = sorted(v.nearest_similarity for v in examples)
    below = sum(s < calibration.unknown_below for s in nearest)
    assert 0 < below <= 0.02 * len(examples)


def test_too_few_examples_are_refused_with_the_number_needed() -> None:
    with pytest.raises(ValueError, match="at least 20"):
        fit_calibration(votes(0.9, 0.9, n=5), "generated")


def test_round_trips_through_json() -> None:
    calibration = fit_calibration(votes(0.9, 0.8), "generated")
    assert Calibration.from_json(calibration.to_json()) == calibration
    assert Calibration.from_json({}) == Calibration()
