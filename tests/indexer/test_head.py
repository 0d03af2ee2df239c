"""The confidence head: fit, its curve from unseen images, storage, and when it may speak."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexer.calibration import Calibration, LabelledVote, ece, fit_calibration
from indexer.head import ConfidenceHead, cross_fitted_head, fit_curve, fit_head
from indexer.vote import CategoryScore


def clusters(
    n_per: int, noise: float, flip: float, seed: int, dim: int = 16
) -> tuple[np.ndarray, list[str]]:
    """Four categories around fixed centres; `flip` of the labels replaced at random, which
    no model can predict: a head fitted with T=1 is then surer than it should be."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 1, (4, dim))
    names = ["a", "b", "c", "d"]
    labels = [names[i % 4] for i in range(4 * n_per)]
    vectors = np.stack([centres[names.index(c)] for c in labels]) + rng.normal(
        0, noise, (len(labels), dim)
    )
    flipped = rng.random(len(labels)) < flip
    labels = [names[rng.integers(4)] if f else c for c, f in zip(labels, flipped, strict=True)]
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), labels


def test_the_head_is_sure_where_categories_are_apart() -> None:
    vectors, labels = clusters(30, noise=0.3, flip=0.0, seed=0)
    head = fit_head(vectors, labels)
    assert head.categories == ("a", "b", "c", "d")
    fresh, truth = clusters(10, noise=0.3, flip=0.0, seed=1)
    confidence = head.confidence(fresh, truth)
    assert confidence.min() > 0.9
    assert head.confidence(fresh[:1], ["unheard of"])[0] == 0.0  # it cannot vouch for it


def test_two_categories_give_the_same_probabilities_as_sklearn() -> None:
    from sklearn.linear_model import LogisticRegression

    vectors, labels = clusters(20, noise=0.8, flip=0.1, seed=2)
    keep = [i for i, c in enumerate(labels) if c in ("a", "b")]
    vectors, labels = vectors[keep], [labels[i] for i in keep]
    head = fit_head(vectors, labels)
    centred = vectors - head.centre
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    model = LogisticRegression(C=10.0, max_iter=2000, class_weight="balanced")
    expected = model.fit(centred, labels).predict_proba(centred)
    np.testing.assert_allclose(head.probabilities(vectors), expected, atol=1e-4)


def nearest_centre(vectors: np.ndarray, labels: list[str], queries: np.ndarray) -> list[str]:
    """A stand-in for the kNN vote: the category whose mean vector is closest."""
    names = sorted(set(labels))
    means = np.stack([vectors[[c == n for c in labels]].mean(axis=0) for n in names])
    return [names[i] for i in (queries @ means.T).argmax(axis=1)]


def ece_raw_and_served(
    head: ConfidenceHead,
    references: tuple[np.ndarray, list[str]],
    fresh: np.ndarray,
    truth: list[str],
) -> tuple[float, float]:
    """ECE on fresh images of the head's raw probability and of its served confidence, for
    the answers a nearest-centre vote gives them."""
    answers = nearest_centre(*references, fresh)
    right = [a == t for a, t in zip(answers, truth, strict=True)]
    raw = head.raw_confidence(fresh, answers)
    return ece(raw.tolist(), right), ece(head.confidence(fresh, answers).tolist(), right)


def test_with_few_references_the_cross_fitted_temperature_calibrates() -> None:
    """Sixty references in 64 dimensions: the regularised head is far less sure than it may be
    of the vote's (nearly always right) answers. Too few for a curve, so the temperature,
    fitted out of fold, learns that from images the head was not fitted on."""
    vectors, labels = clusters(15, noise=1.5, flip=0.0, seed=3, dim=64)
    head = cross_fitted_head(vectors, labels, nearest_centre(vectors, labels, vectors))
    assert head is not None and head.curve is None and head.temperature < 1.0
    raw, served = ece_raw_and_served(
        head, (vectors, labels), *clusters(300, noise=1.5, flip=0.0, seed=4, dim=64)
    )
    assert served < raw - 0.05


def test_with_enough_references_the_cross_fitted_curve_calibrates() -> None:
    """Labels flipped at random: the head cannot know which, so its raw probabilities are too
    sure; the curve, fitted out of fold on 400 answers, brings them down to the odds."""
    vectors, labels = clusters(100, noise=1.0, flip=0.2, seed=12, dim=32)
    head = cross_fitted_head(vectors, labels, nearest_centre(vectors, labels, vectors))
    assert head is not None and head.curve is not None
    raw, served = ece_raw_and_served(
        head, (vectors, labels), *clusters(300, noise=1.0, flip=0.2, seed=13, dim=32)
    )
    assert served < raw - 0.02


def test_the_curve_is_monotone_and_never_certain() -> None:
    raw = np.linspace(0.0, 1.0, 200)
    right = [bool(r > 0.3) for r in raw]  # every answer above 0.3 was right
    head = fit_head(*clusters(10, noise=0.3, flip=0.0, seed=9))
    head = replace(head, curve=fit_curve(raw, right))
    assert head.curve is not None
    _, y = head.curve
    assert np.all(np.diff(y) >= 0) and y.max() < 1.0 and y.min() == 0.0
    vectors, labels = clusters(3, noise=0.3, flip=0.0, seed=10)
    assert head.confidence(vectors[:1], ["unheard of"])[0] == 0.0  # not the curve's floor


def test_a_category_too_thin_to_fit_is_left_out_and_the_rest_keep_their_head() -> None:
    vectors, labels = clusters(5, noise=0.3, flip=0.0, seed=5)
    labels[0] = "alone"  # a new category with its first photo
    head = cross_fitted_head(vectors, labels, labels)
    assert head is not None and head.covers(set(labels) - {"alone"})
    assert head.confidence(vectors[:1], ["alone"])[0] == 0.0
    assert cross_fitted_head(vectors[:4], ["a"] * 4, ["a"] * 4) is None  # one category: none


def test_it_speaks_only_for_exactly_its_categories() -> None:
    vectors, labels = clusters(10, noise=0.3, flip=0.0, seed=6)
    head = fit_head(vectors, labels)
    assert head.covers({"a", "b", "c", "d"})
    assert not head.covers({"a", "b", "c", "d", "new"})
    assert not head.covers({"a", "b", "c"})


def test_calibration_fits_a_head_when_votes_carry_vectors_and_stores_it() -> None:
    vectors, labels = clusters(15, noise=0.5, flip=0.1, seed=7)
    votes = [
        LabelledVote([CategoryScore(c, 0.9), CategoryScore("x", 0.1)], c, 0.8, v, f"g{i % 9}")
        for i, (v, c) in enumerate(zip(vectors, labels, strict=True))
    ]
    calibration = fit_calibration(votes, "test")
    assert calibration.head is not None and calibration.head.categories == ("a", "b", "c", "d")
    restored = Calibration.from_json(calibration.to_json())
    assert restored.head is not None
    assert restored.head.temperature == calibration.head.temperature
    np.testing.assert_array_equal(
        restored.head.confidence(vectors, labels), calibration.head.confidence(vectors, labels)
    )
    without = fit_calibration([LabelledVote(v.scores, v.truth, 0.8) for v in votes], "test")
    assert without.head is None and Calibration.from_json(without.to_json()).head is None


@pytest.mark.parametrize("stored", [{}, {"temperature": 0.5}])
def test_calibrations_stored_before_the_head_load_without_one(stored: dict[str, float]) -> None:
    assert Calibration.from_json(stored).head is None


def test_a_category_that_one_fold_lacks_does_not_break_the_fit() -> None:
    """Both references of a small category in one group: the fold that tests on that group
    is fitted without the category."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=8)
    groups: list[str | None] = [f"g{i % 5}" for i in range(len(labels))]
    vectors = np.vstack([vectors, vectors[:2] * -1])
    labels += ["small", "small"]
    groups += ["g-small", "g-small"]
    head = cross_fitted_head(vectors, labels, labels, groups)
    assert head is not None and "small" in head.categories


def test_a_head_stored_with_a_temperature_alone_still_serves() -> None:
    """Calibrations stored before the curve: their head has a temperature and no curve."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=11)
    stored = replace(fit_head(vectors, labels), temperature=0.5).to_json()
    assert "curve" not in stored
    head = ConfidenceHead.from_json(stored)
    assert head.curve is None and head.temperature == 0.5
    np.testing.assert_allclose(
        head.confidence(vectors, labels), head.raw_confidence(vectors, labels, 0.5)
    )


def test_a_curve_survives_storage_exactly() -> None:
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=14)
    raw = np.linspace(0.0, 1.0, 200)
    head = replace(fit_head(vectors, labels), curve=fit_curve(raw, [bool(r > 0.5) for r in raw]))
    restored = ConfidenceHead.from_json(head.to_json())
    assert restored.curve is not None and head.curve is not None
    for stored, fitted in zip(restored.curve, head.curve, strict=True):
        np.testing.assert_array_equal(stored, fitted)


def test_too_few_labelled_answers_or_errors_keep_the_temperature() -> None:
    vectors, labels = clusters(30, noise=0.3, flip=0.0, seed=15)
    head = fit_head(vectors, labels)
    assert head.calibrated(vectors[:40], labels[:40], [True] * 40).curve is None  # 40 answers
    all_right = head.calibrated(vectors, labels, [True] * len(labels))  # 120, no error
    assert all_right.curve is None and all_right.temperature > 0
