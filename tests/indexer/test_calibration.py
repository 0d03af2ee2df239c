"""Calibration: the temperature fixes known over- and under-confidence; ECE by hand; the
auto-accept threshold is earned by a lower bound, and refused on too little evidence."""

from __future__ import annotations

import random

import pytest

from indexer.calibration import (
    FORMAT,
    REFIT_DUE,
    Bound,
    Calibration,
    LabelledExample,
    earned_threshold,
    ece,
    expected_calibration_error,
    fit_calibration,
    precision_lower_bound,
    reliability_bins,
    temper,
)
from indexer.vote import CategoryScore


def votes(confidence: float, accuracy: float, n: int = 400, seed: int = 0) -> list[LabelledExample]:
    """n two-category votes of the given top share, right `accuracy` of the time."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        scores = [CategoryScore("a", confidence), CategoryScore("b", 1 - confidence)]
        truth = "a" if rng.random() < accuracy else "b"
        out.append(LabelledExample(scores, truth, nearest_similarity=0.5 + i / (2 * n)))
    return out


def top_ece(examples: list[LabelledExample], calibration: Calibration) -> float:
    confidences = [calibration.apply(v.shares)[0].score for v in examples]
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
    assert calibration.apply(examples[0].shares)[0].score == pytest.approx(0.7, abs=0.05)
    assert top_ece(examples, calibration) < 0.05 < top_ece(examples, Calibration())
    assert calibration.ece_before == pytest.approx(top_ece(examples, Calibration()))
    assert calibration.ece_after == pytest.approx(top_ece(examples, calibration))


def test_fit_sharpens_known_under_confidence() -> None:
    examples = votes(confidence=0.6, accuracy=0.95)
    calibration = fit_calibration(examples, "generated")
    assert calibration.temperature < 1
    assert calibration.apply(examples[0].shares)[0].score == pytest.approx(0.95, abs=0.03)


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


def test_a_stored_calibration_of_another_format_is_due_a_refit() -> None:
    old = {"temperature": 0.7, "examples": 500, "extra": {"group_by": "group"}}
    restored = Calibration.from_json(old)
    assert not restored.fitted and restored.auto_accept_at is None
    assert restored.extra[REFIT_DUE] and restored.extra["group_by"] == "group"
    assert fit_calibration(votes(0.9, 0.8), "generated").to_json()["format"] == FORMAT


def test_the_lower_bound_matches_clopper_pearson_by_hand() -> None:
    # No error in n: the bound solves p ** n = 1 - level.
    assert precision_lower_bound(114, 114, 0.9) == pytest.approx(0.1 ** (1 / 114))
    assert precision_lower_bound(0, 10, 0.9) == 0.0
    assert Bound(0.98, 0.9).needed_run() == 114
    assert Bound(0.98, 0.95).needed_run() == 149


def ranked(right: list[bool]) -> tuple[list[float], list[bool], list[bool]]:
    """Answers at falling confidences, right or wrong as given, none open-set."""
    n = len(right)
    return [1.0 - i / (2 * n) for i in range(n)], right, [False] * n


def test_too_little_evidence_earns_no_auto_accept_and_says_how_much_would() -> None:
    # 60 answers all right prove only 0.1 ** (1/60) = 96.2% at 90% confidence.
    earned = earned_threshold(*ranked([True] * 60), Bound(0.98, 0.9))
    assert earned.threshold is None and earned.accepted_share == 0.0
    assert "at least 114 answers in a row" in earned.reason
    assert earned.labelled_needed >= 114


def test_enough_evidence_earns_the_lowest_threshold_whose_bound_reaches_the_target() -> None:
    # 200 right, then errors: the band stops where the bound falls under 98%.
    right = [True] * 200 + [False] * 5 + [True] * 100
    confidences, correct, outside = ranked(right)
    earned = earned_threshold(confidences, correct, outside, Bound(0.98, 0.9))
    assert earned.threshold is not None
    accepted = [c for c in confidences if c >= earned.threshold]
    hits = sum(r for c, r in zip(confidences, right, strict=True) if c >= earned.threshold)
    assert precision_lower_bound(hits, len(accepted), 0.9) >= 0.98
    assert earned.precision_bound == pytest.approx(precision_lower_bound(hits, len(accepted), 0.9))
    # one more answer down, the bound fails
    below = max(c for c in confidences if c < earned.threshold)
    more = [r for c, r in zip(confidences, right, strict=True) if c >= below]
    assert precision_lower_bound(sum(more), len(more), 0.9) < 0.98
    assert earned.accepted_share == pytest.approx(len(accepted) / len(right))


def test_open_set_look_alikes_above_a_threshold_count_against_it() -> None:
    confidences, correct, outside = ranked([True] * 400)
    plain = earned_threshold(confidences, correct, outside, Bound(0.98, 0.9, 0.05))
    # the same answers with sure look-alikes of a missing category among the top ones
    sure_wrong = [0.999] * 40
    mixed = earned_threshold(
        confidences + sure_wrong,
        correct + [False] * 40,
        outside + [True] * 40,
        Bound(0.98, 0.9, 0.05),
    )
    assert plain.threshold is not None
    assert mixed.threshold is None or mixed.threshold > plain.threshold
    without_weight = earned_threshold(
        confidences + sure_wrong,
        correct + [False] * 40,
        outside + [True] * 40,
        Bound(0.98, 0.9, 0.0),
    )
    assert without_weight.threshold == plain.threshold


def test_open_set_examples_do_not_move_the_temperature() -> None:
    inside = votes(confidence=0.9, accuracy=0.9)
    outside = [LabelledExample(v.shares, "c", v.nearest_similarity, open_set=True) for v in inside]
    assert (
        fit_calibration(inside + outside, "generated").temperature
        == fit_calibration(inside, "generated").temperature
    )
    assert fit_calibration(inside + outside, "generated").examples == len(inside)
