"""The head: fit, its blend into the vote, out-of-fold heads, storage."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from indexer.calibration import Calibration
from indexer.head import MAX_BLENDED, ConfidenceHead, cross_fitted_head, fit_head
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


def test_a_category_too_thin_to_fit_is_left_out_and_the_rest_keep_their_head() -> None:
    vectors, labels = clusters(5, noise=0.3, flip=0.0, seed=5)
    labels[0] = "alone"  # a new category with its first photo
    votes = centre_votes(vectors, labels, vectors)
    fit = cross_fitted_head(vectors, labels)
    assert fit is not None and fit.head.covers(set(labels) - {"alone"})
    # Its own vote is blended as a served photo would be: by the full head, which never saw
    # "alone" and leaves that category's share as it was.
    head, row = fit.out_of_fold[0]
    assert head is fit.head
    np.testing.assert_allclose(row, fit.head.probabilities(vectors[:1])[0])
    share = {c.category: c.score for c in votes[0]}["alone"]
    assert as_dict(head.blend(votes[0], row))["alone"] == pytest.approx(share)
    assert cross_fitted_head(vectors[:4], ["a"] * 4) is None  # one category: none


def test_each_row_is_judged_by_a_head_that_never_saw_its_group() -> None:
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=20)
    groups = [f"g{i % 5}" for i in range(len(labels))]
    fit = cross_fitted_head(vectors, labels, groups)
    assert fit is not None
    folds = {id(head) for head, _ in fit.out_of_fold}
    assert id(fit.head) not in folds and len(folds) == 5
    for group in set(groups):
        members = {id(fit.out_of_fold[i][0]) for i, g in enumerate(groups) if g == group}
        assert len(members) == 1  # one fold head judges a whole group


def test_a_head_survives_storage_exactly() -> None:
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=21)
    head = fit_head(vectors, labels)
    calibration = Calibration(examples=50, head=head)
    restored = Calibration.from_json(calibration.to_json()).head
    assert restored is not None and restored.categories == head.categories
    np.testing.assert_array_equal(restored.probabilities(vectors), head.probabilities(vectors))


def test_it_speaks_only_for_exactly_its_categories() -> None:
    vectors, labels = clusters(10, noise=0.3, flip=0.0, seed=6)
    head = fit_head(vectors, labels)
    assert head.covers({"a", "b", "c", "d"})
    assert not head.covers({"a", "b", "c", "d", "new"})
    assert not head.covers({"a", "b", "c"})


def test_one_group_alone_gives_no_head() -> None:
    """Every reference from one sender: no image the head could be judged on out of fold."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=19)
    assert cross_fitted_head(vectors, labels, ["one sender"] * len(labels)) is None
    assert cross_fitted_head(vectors, labels, [None] * len(labels)) is not None


def test_a_category_that_one_fold_lacks_does_not_break_the_fit() -> None:
    """Both references of a small category in one group: the fold that tests on that group
    is fitted without the category."""
    vectors, labels = clusters(10, noise=0.5, flip=0.0, seed=8)
    groups: list[str | None] = [f"g{i % 5}" for i in range(len(labels))]
    vectors = np.vstack([vectors, vectors[:2] * -1])
    labels += ["small", "small"]
    groups += ["g-small", "g-small"]
    fit = cross_fitted_head(vectors, labels, groups)
    assert fit is not None and "small" in fit.head.categories


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
