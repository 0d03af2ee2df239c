"""The head: a linear model of the references that sharpens the kNN answer.

A vote's shares say how the nearest references split; they saturate where a wrong
category's references crowd around an image (the small look-alike categories). A logistic
regression over the reference vectors weighs the whole catalogue at once. Its probabilities
are blended into the vote's shares (half and half, `BLEND_WEIGHT`: on the clothing val parts
of five splits, top-1 70.0% -> 75.6% and macro top-1 51% -> 61%; docs/benchmarks.md,
"Evaluation"). It changes the answer; how sure the answer is, is the calibration's one
temperature over the blended shares (indexer.calibration).

The head is refitted with every calibration, so it may lag the catalogue: a category added
since (or too thin to fit) keeps its share of the vote untouched, so it competes at once
through its nearest neighbours; a deleted one gets nothing.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from indexer.vote import CategoryScore

# The head's share of the blended answer. Chosen on the clothing val parts of five splits
# (test not looked at): 0.4 / 0.5 / 0.6 gave top-1 75.3 / 75.6 / 75.7% against the vote's
# 70.0% and the head's own 74.7%; the round middle was kept.
BLEND_WEIGHT = 0.5
# The share of the blend its least likely categories may hold and still be left out of it,
# and the most of the head's categories a blend keeps (beyond those the vote named): a head
# unsure among hundreds of categories would otherwise cost hundreds of scores per image.
TAIL = 1e-3
MAX_BLENDED = 64
# Regularisation of the logistic regression, and balanced class weights (a small category's
# references count as much as a big one's): the best of 16 settings by clothing val coverage.
HEAD_C = 10.0
FOLDS = 5  # out-of-fold probabilities for the calibration, grouped where groups are known
MIN_PER_CATEGORY = 2


@dataclass(frozen=True)
class ConfidenceHead:
    """softmax(W @ unit(v - centre) + b) over `categories`, blended into a vote with `weight`.

    It changes the answer (`blend`), not how sure the answer says it is: the calibration's
    one temperature over the blended shares does that (indexer.calibration).
    """

    categories: tuple[str, ...]
    centre: np.ndarray  # (dim,)
    weights: np.ndarray  # (categories, dim)
    bias: np.ndarray  # (categories,)
    weight: float = BLEND_WEIGHT

    @cached_property
    def column(self) -> dict[str, int]:
        """Each category's column in the logits."""
        return {c: i for i, c in enumerate(self.categories)}

    def covers(self, categories: Collection[str]) -> bool:
        """True while the catalogue has exactly the categories the head was fitted on."""
        return set(categories) == self.column.keys()

    def held(self, present: Collection[str]) -> np.ndarray:
        """Which of its categories are still `present`, as `blend` takes it (once per call)."""
        return np.array([c in present for c in self.categories], dtype=bool)

    def blend(
        self,
        scores: Sequence[CategoryScore],
        probabilities: np.ndarray,
        held: np.ndarray | None = None,
    ) -> list[CategoryScore]:
        """A vote's shares with this head's `probabilities` (one row) mixed in, best first.

        Only the share the vote gave categories the head knows (and that are still `held`,
        see `held()`; None: all) is redistributed, `weight` of it by the head: a category the
        head has not seen keeps its vote, so a new category competes at once, and one deleted
        since the fit gets nothing. The head's long tail (the categories holding its last
        `TAIL` of the blend, and any beyond the `MAX_BLENDED` likeliest, except those the vote
        named) is left out, so a catalogue of hundreds of categories does not cost hundreds
        of scores per image; the scores are then renormalised to sum to 1. Calibration fits
        on blends made the same way."""
        head = np.asarray(
            probabilities if held is None else np.where(held, probabilities, 0.0), float
        )
        total = float(head.sum())
        if total <= 0.0:  # the head is sure of categories that are gone: it has no say
            return list(scores)
        vote = np.zeros(len(self.categories))
        others: list[CategoryScore] = []  # categories the head does not know (or are gone)
        for score in scores:
            j = self.column.get(score.category)
            if j is None or (held is not None and not held[j]):
                others.append(score)
            else:
                vote[j] = score.score
        known = float(vote.sum())
        if known <= 0.0:
            return list(scores)
        mixed = (1 - self.weight) * vote + self.weight * known * head / total
        order = np.argsort(-mixed, kind="stable")
        cut = min(
            int(np.searchsorted(np.cumsum(mixed[order]), (1 - TAIL) * known)) + 1, MAX_BLENDED
        )
        kept = set(order[:cut].tolist()) | set(np.flatnonzero(vote).tolist())
        ranked = [CategoryScore(self.categories[j], float(mixed[j])) for j in kept]
        ranked += others
        norm = sum(c.score for c in ranked)
        ranked.sort(key=lambda c: (-c.score, c.category))
        return [CategoryScore(c.category, c.score / norm) for c in ranked if c.score > 0.0]

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Every category's probability, (n, categories)."""
        return _softmax(self.logits(vectors))

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The linear scores, (n, categories)."""
        scores: np.ndarray = _centred(vectors, self.centre) @ self.weights.T + self.bias
        return scores

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "dim": int(self.centre.shape[0]),
            "centre": _encode(self.centre),
            "weights": _encode(self.weights),
            "bias": _encode(self.bias),
            "weight": self.weight,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfidenceHead:
        categories = tuple(data["categories"])
        dim = int(data["dim"])
        return cls(
            categories,
            _decode(data["centre"]),
            _decode(data["weights"]).reshape(len(categories), dim),
            _decode(data["bias"]),
            float(data["weight"]),
        )


def fit_head(vectors: np.ndarray, labels: Sequence[str]) -> ConfidenceHead:
    """The head on these labelled vectors, temperature 1. ValueError below two categories."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        raise ValueError("a head needs references of at least two categories")
    centre = np.asarray(vectors, dtype=np.float64).mean(axis=0)
    model = LogisticRegression(C=HEAD_C, max_iter=2000, class_weight="balanced")
    model.fit(_centred(vectors, centre), list(labels))
    classes = tuple(str(c) for c in model.classes_)
    weights, bias = model.coef_, model.intercept_
    if len(classes) == 2:  # sklearn keeps one row for two classes: class 1 against class 0
        weights, bias = np.vstack([-weights / 2, weights / 2]), np.array([-bias[0], bias[0]]) / 2
    return ConfidenceHead(
        classes,
        centre.astype(np.float32),
        np.asarray(weights, dtype=np.float32),
        np.asarray(bias, dtype=np.float32),
    )


@dataclass(frozen=True)
class CrossFit:
    """A head fitted on every labelled vector, and for each row the head of the fold that
    had not seen it with that head's probabilities for it (None: no fold head could judge
    it, e.g. a category too thin to fit: it is judged by the full head, as served)."""

    head: ConfidenceHead
    out_of_fold: list[tuple[ConfidenceHead, np.ndarray]]


def cross_fitted_head(
    vectors: np.ndarray, labels: Sequence[str], groups: Sequence[str | None] | None = None
) -> CrossFit | None:
    """A head on all the labelled vectors, and out-of-fold heads (5 folds, a group kept in
    one fold) so that each row can be blended by a head that never saw it or its group: the
    calibration must see the head as new traffic meets it.

    A category with too few references for a fit to mean anything (a new one with its first
    photo) is left out: the head does not speak for it, but still does for the others.
    None when fewer than two categories are left, or the rows are all one group."""
    from sklearn.model_selection import GroupKFold

    rows = fittable(labels)
    group_of = [
        groups[i] if groups is not None and groups[i] is not None else f"row-{i}" for i in rows
    ]
    if len({labels[i] for i in rows}) < 2 or len(set(group_of)) < 2:
        return None  # nothing to tell apart, or no image the head could be judged on
    vectors = np.asarray(vectors)
    kept = vectors[rows]
    kept_labels = [labels[i] for i in rows]
    head = fit_head(kept, kept_labels)
    # Rows no fold judges (too thin to fit) are blended by the full head, as served.
    out: list[tuple[ConfidenceHead, np.ndarray]] = [
        (head, row) for row in head.probabilities(vectors)
    ]
    splits = GroupKFold(n_splits=min(FOLDS, len(set(group_of)))).split(kept, kept_labels, group_of)
    for train, test in splits:
        if len({kept_labels[i] for i in train}) < 2:
            continue
        fold = fit_head(kept[train], [kept_labels[i] for i in train])
        for probabilities, i in zip(fold.probabilities(kept[test]), test, strict=True):
            out[rows[i]] = (fold, probabilities)
    return CrossFit(head, out)


def fittable(labels: Sequence[str]) -> list[int]:
    """The rows whose category has enough references for a head to learn anything from."""
    counts = Counter(labels)
    return [i for i, label in enumerate(labels) if counts[label] >= MIN_PER_CATEGORY]


def _centred(vectors: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Unit vectors after removing the references' mean: the shared component of every
    embedding says nothing about the category."""
    shifted = np.asarray(vectors, dtype=np.float32) - centre
    norms = np.linalg.norm(shifted, axis=1, keepdims=True)
    out: np.ndarray = shifted / np.maximum(norms, 1e-12)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    out: np.ndarray = exp / exp.sum(axis=1, keepdims=True)
    return out


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode("ascii")


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").copy()
