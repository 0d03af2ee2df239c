"""The head: fit, its blend into the vote, its curve from unseen images, storage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexer.calibration import HEAD_DROPPED, Calibration, LabelledVote, ece, fit_calibration
from indexer.head import MAX_BLENDED, ConfidenceHead, cross_fitted_head, fit_curve, fit_head
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
    probabilities = head.probabilities(fresh)
    assert min(row[head.column[t]] for row, t in zip(probabilities, truth, strict=True)) > 0.9


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


def centre_votes(
    vectors: np.ndarray, labels: list[str], queries: np.ndarray
) -> list[list[CategoryScore]]:
    """A stand-in for the kNN vote: shares by closeness to each category's mean vector."""
    names = sorted(set(labels))
    means = np.stack([vectors[[c == n for c in labels]].mean(axis=0) for n in names])
    logits = queries @ means.T / 0.1
    shares = np.exp(logits - logits.max(axis=1, keepdims=True))
    shares /= shares.sum(axis=1, keepdims=True)
    return [
        sorted((CategoryScore(n, float(p)) for n, p in zip(names, row, strict=True)),
               key=lambda c: -c.score)
        for row in shares
    ]  # fmt: skip


def ece_raw_and_served(
    head: ConfidenceHead,
    references: tuple[np.ndarray, list[str]],
    fresh: np.ndarray,
    truth: list[str],
) -> tuple[float, float]:
    """ECE on fresh images of the blend's probability of its answer and of the served
    confidence (the head's curve or temperature of it)."""
    blended = [
        head.blend(votes, row)
        for votes, row in zip(
            centre_votes(*references, fresh), head.probabilities(fresh), strict=True
        )
    ]
    raw = np.array([b[0].score for b in blended])
    right = [b[0].category == t for b, t in zip(blended, truth, strict=True)]
    return ece(raw.tolist(), right), ece(head.confidence(raw).tolist(), right)


def test_with_few_references_the_cross_fitted_temperature_calibrates() -> None:
    """Sixty references in 64 dimensions: the blend is far less sure than it may be of its
    (nearly always right) answers. Too few for a curve, so the temperature, fitted out of
    fold, learns that from images the head was not fitted on."""
    vectors, labels = clusters(15, noise=1.5, flip=0.0, seed=3, dim=64)
    fit = cross_fitted_head(vectors, labels, centre_votes(vectors, labels, vectors))
    assert fit is not None and fit.head.curve is None and fit.head.temperature < 1.0
    raw, served = ece_raw_and_served(
        fit.head, (vectors, labels), *clusters(300, noise=1.5, flip=0.0, seed=4, dim=64)
    )
    assert served < raw - 0.05


def test_with_enough_references_the_cross_fitted_curve_calibrates() -> None:
    """Labels flipped at random: no model can know which, so the blend is too sure; the
    curve, fitted out of fold on 400 answers, brings it down to the odds."""
    vectors, labels = clusters(100, noise=1.0, flip=0.2, seed=12, dim=32)
    fit = cross_fitted_head(vectors, labels, centre_votes(vectors, labels, vectors))
    assert fit is not None and fit.head.curve is not None
    raw, served = ece_raw_and_served(
        fit.head, (vectors, labels), *clusters(300, noise=1.0, flip=0.2, seed=13, dim=32)
    )
    assert served < raw - 0.02


def scores(**shares: float) -> list[CategoryScore]:
    return [CategoryScore(c, p) for c, p in shares.items()]


def as_dict(ranked: list[CategoryScore]) -> dict[str, float]:
    return {s.category: s.score for s in ranked}


def two_category_head(p_a: float) -> tuple[ConfidenceHead, np.ndarray]:
    """A head over a and b, and a probability row giving a `p_a`."""
    head = fit_head(*clusters(10, noise=0.3, flip=0.0, seed=16))
    head = replace(head, categories=("a", "b"), weights=head.weights[:2], bias=head.bias[:2])
    return head, np.array([p_a, 1 - p_a])


def test_the_blend_is_half_vote_half_head_and_can_change_the_answer() -> None:
    head, row = two_category_head(0.9)
    blended = head.blend(scores(a=0.3, b=0.7), row)
    assert [s.category for s in blended] == ["a", "b"]  # the head outweighs a weak vote
    assert as_dict(blended) == pytest.approx({"a": 0.5 * 0.3 + 0.5 * 0.9, "b": 0.5 * 0.7 + 0.05})


def test_a_category_the_head_never_saw_keeps_its_vote_and_a_deleted_one_gets_nothing() -> None:
    head, row = two_category_head(0.9)
    blended = as_dict(head.blend(scores(new=0.4, a=0.3, b=0.3), row))
    assert blended["new"] == pytest.approx(0.4)  # added since the fit: its vote, untouched
    assert blended["a"] == pytest.approx(0.5 * 0.3 + 0.5 * 0.6 * 0.9)  # the 0.6 a and b hold
    assert sum(blended.values()) == pytest.approx(1.0)
    # b deleted since the fit: the head's say goes to a alone, b gets nothing.
    assert as_dict(head.blend(scores(a=0.6, new=0.4), row, head.held({"a", "new"}))) == (
        pytest.approx({"a": 0.6, "new": 0.4})
    )
    # Every vote on categories the head does not know: the vote as it was.
    assert head.blend(scores(new=1.0), row) == scores(new=1.0)


def test_a_head_sure_of_a_deleted_category_leaves_the_vote_alone() -> None:
    head, _ = two_category_head(0.5)
    gone = np.array([1e-300, 1.0])  # all but certain of b, which is gone
    blended = head.blend(scores(a=0.7, new=0.3), gone, head.held({"a", "new"}))
    assert sum(s.score for s in blended) == pytest.approx(1.0)
    assert as_dict(blended) == pytest.approx({"a": 0.7, "new": 0.3})
    underflow = np.array([0.0, 1.0])
    assert head.blend(scores(a=0.7, new=0.3), underflow, head.held({"a", "new"})) == scores(
        a=0.7, new=0.3
    )


def test_the_curve_is_monotone_and_never_certain() -> None:
    raw = np.linspace(0.0, 1.0, 200)
    right = [bool(r > 0.3) for r in raw]  # every answer above 0.3 was right
    head = fit_head(*clusters(10, noise=0.3, flip=0.0, seed=9))
    head = replace(head, curve=fit_curve(raw, right))
    assert head.curve is not None
    _, y = head.curve
    assert np.all(np.diff(y) >= 0) and y.max() < 1.0 and y.min() == 0.0
    assert head.confidence(np.array([0.2, 0.9])).tolist() == [0.0, pytest.approx(y.max())]


def test_a_category_too_thin_to_fit_is_left_out_and_the_rest_keep_their_head() -> None:
    vectors, labels = clusters(5, noise=0.3, flip=0.0, seed=5)
    labels[0] = "alone"  # a new category with its first photo
    votes = centre_votes(vectors, labels, vectors)
    fit = cross_fitted_head(vectors, labels, votes)
    assert fit is not None and fit.head.covers(set(labels) - {"alone"})
    # Its own vote is blended as a served photo would be: the head, which never saw "alone",
    # leaves that category's share as it was.
    assert fit.blended[0] == fit.head.blend(votes[0], fit.head.probabilities(vectors[:1])[0])
    share = {c.category: c.score for c in votes[0]}["alone"]
    assert {c.category: c.score for c in fit.blended[0]}["alone"] == pytest.approx(share)
    assert cross_fitted_head(vectors[:4], ["a"] * 4, votes[:4]) is None  # one category: none


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
    assert restored.head.weight == calibration.head.weight
    raw = np.linspace(0.0, 1.0, 11)
    np.testing.assert_array_equal(restored.head.confidence(raw), calibration.head.confidence(raw))
    without = fit_calibration([LabelledVote(v.scores, v.truth, 0.8) for v in votes], "test")
    assert without.head is None and Calibration.from_json(without.to_json()).head is None


def test_the_temperature_is_fitted_on_the_blended_votes_it_will_temper() -> None:
    """A vote that often leans the wrong way, a head that knows better: the calibration is
    fitted on what is served, the blend, whose answers are right more often."""
    vectors, labels = clusters(40, noise=0.5, flip=0.0, seed=17)
    rng = np.random.default_rng(0)
    wrong = {"a": "b", "b": "c", "c": "d", "d": "a"}
    votes = [
        LabelledVote(
            scores(**{wrong[c]: 0.55, c: 0.45}) if rng.random() < 0.4 else scores(**{c: 1.0}),
            c,
            0.8,
            v,
            f"g{i % 10}",
        )
        for i, (v, c) in enumerate(zip(vectors, labels, strict=True))
    ]
    vote_accuracy = np.mean([v.correct for v in votes])
    calibration = fit_calibration(votes, "test")
    assert vote_accuracy < 0.7 and calibration.extra["accuracy"] > vote_accuracy + 0.2
    assert calibration.extra["vote_accuracy"] == pytest.approx(vote_accuracy)
    # The temperature is the one for the blended shares: fitted on the votes alone it differs.
    plain = fit_calibration([LabelledVote(v.scores, v.truth, 0.8) for v in votes], "test")
    assert plain.temperature != calibration.temperature


@pytest.mark.parametrize("stored", [{}, {"temperature": 0.5}])
def test_calibrations_stored_before_the_head_load_without_one(stored: dict[str, float]) -> None:
    calibration = Calibration.from_json(stored)
    assert calibration.head is None and HEAD_DROPPED not in calibration.extra


def test_a_head_stored_before_the_blend_is_dropped_until_refitted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its curve read the head's own probability, not the blend's: it would mislead."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=18)
    stored = fit_head(vectors, labels).to_json()
    del stored["weight"]
    restored = Calibration.from_json({"temperature": 0.5, "examples": 100, "head": stored})
    assert restored.head is None and restored.temperature == 0.5
    assert restored.extra[HEAD_DROPPED]  # server.recalibrate refits it
    assert "refit it" in caplog.text


def test_one_group_alone_gives_no_head() -> None:
    """Every reference from one sender: no image the head could be judged on out of fold."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=19)
    votes = centre_votes(vectors, labels, vectors)
    assert cross_fitted_head(vectors, labels, votes, ["one sender"] * len(labels)) is None
    assert cross_fitted_head(vectors, labels, votes, [None] * len(labels)) is not None


def test_a_category_that_one_fold_lacks_does_not_break_the_fit() -> None:
    """Both references of a small category in one group: the fold that tests on that group
    is fitted without the category."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=8)
    groups: list[str | None] = [f"g{i % 5}" for i in range(len(labels))]
    vectors = np.vstack([vectors, vectors[:2] * -1])
    labels += ["small", "small"]
    groups += ["g-small", "g-small"]
    fit = cross_fitted_head(vectors, labels, centre_votes(vectors, labels, vectors), groups)
    assert fit is not None and "small" in fit.head.categories


def test_a_head_with_a_temperature_alone_softens_the_odds() -> None:
    """Too few answers for a curve: the blend's probability p is tempered as the odds
    p : 1 - p are, p^(1/T) / (p^(1/T) + (1 - p)^(1/T))."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=11)
    head = ConfidenceHead.from_json(replace(fit_head(vectors, labels), temperature=2.0).to_json())
    assert head.curve is None and head.temperature == 2.0
    np.testing.assert_allclose(
        head.confidence(np.array([0.5, 0.8])), [0.5, 0.8**0.5 / (0.8**0.5 + 0.2**0.5)]
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
    head = fit_head(*clusters(30, noise=0.3, flip=0.0, seed=15))
    raw = np.linspace(0.3, 1.0, 120)
    assert head.calibrated(raw[:40], [True] * 40).curve is None  # 40 answers
    all_right = head.calibrated(raw, [True] * len(raw))  # 120, no error
    assert all_right.curve is None and all_right.temperature > 0
    some_wrong = head.calibrated(raw, [bool(r > 0.4) for r in raw])
    assert some_wrong.curve is not None


def test_the_heads_long_tail_is_left_out_but_never_a_category_the_vote_named() -> None:
    """Hundreds of categories must not cost hundreds of scores per image: those holding the
    blend's last TAIL are dropped, unless the vote named them."""
    names = [f"c{i:03}" for i in range(300)]
    head = ConfidenceHead(
        tuple(names), np.zeros(2, np.float32), np.zeros((300, 2), np.float32),
        np.zeros(300, np.float32),
    )  # fmt: skip
    row = np.full(300, 1e-7)
    row[:3] = [0.6, 0.3, (1 - 0.9) - 297e-7]  # three likely categories, a long flat tail
    blended = head.blend(scores(c299=0.8, c001=0.2), row)
    assert {c.category for c in blended} == {"c000", "c001", "c002", "c299"}
    assert sum(c.score for c in blended) == pytest.approx(1.0)
    assert blended[0].category == "c299"  # 0.4 from the vote, against c000's 0.3


def test_a_head_unsure_among_hundreds_keeps_only_its_likeliest() -> None:
    names = [f"c{i:03}" for i in range(300)]
    head = ConfidenceHead(
        tuple(names), np.zeros(2, np.float32), np.zeros((300, 2), np.float32),
        np.zeros(300, np.float32),
    )  # fmt: skip
    flat = np.full(300, 1 / 300)
    blended = head.blend(scores(c299=1.0), flat)
    assert len(blended) == MAX_BLENDED and blended[0].category == "c299"
    assert sum(c.score for c in blended) == pytest.approx(1.0)


def test_the_curve_reads_the_answers_share_among_the_categories_the_head_knows() -> None:
    head, _ = two_category_head(0.5)
    assert head.answer_share(scores(a=0.6, new=0.2, b=0.2)) == pytest.approx(0.75)
    assert head.answer_share(scores(new=0.6, a=0.4)) is None  # not the head's to judge
    assert head.answer_share([]) is None
