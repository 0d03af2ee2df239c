"""The head: a linear model of the references that sharpens the kNN answer and its confidence.

A vote's shares say how the nearest references split. They saturate where a wrong category's
references crowd around an image (the small look-alike categories, or any ArcFace model), so
a confident vote is not always a right one. A logistic regression over the reference vectors
weighs the whole catalogue at once. Its probabilities are blended into the vote's shares
(half and half, `BLEND_WEIGHT`: on the clothing val parts of five splits, top-1 70.0% ->
75.6% and macro top-1 51% -> 61%; docs/benchmarks.md, "Evaluation"), and the blend's
probability of its answer, mapped through a monotone (isotonic) curve fitted on images the
head never saw, is the confidence.

The head is refitted with every calibration, so it may lag the catalogue: a category added
since (or too thin to fit) keeps its share of the vote untouched, so it competes at once
through its nearest neighbours; a deleted one gets nothing.
"""

from __future__ import annotations

import base64
import math
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
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
# The curve needs this many labelled answers, and this many right and wrong ones; with fewer
# the temperature serves (40 answers all right would make the curve a constant 0.98).
MIN_CURVE_EXAMPLES = 100
MIN_CURVE_ERRORS = 5
# Temperatures tried by the fits (log-spaced); beyond this range nothing useful happens.
_TEMPERATURES = np.exp(np.linspace(math.log(0.05), math.log(20.0), 241))
_EPSILON = 1e-6


@dataclass(frozen=True)
class ConfidenceHead:
    """softmax(W @ unit(v - centre) + b) over `categories`, blended into a vote with `weight`;
    the blend's probability of its answer then goes through `curve`, or without one is
    softened by `temperature`.

    The curve is an isotonic map (knots: blended probability -> how often such answers are
    right) fitted on images the head was not fitted on. It was chosen over a temperature by
    cross-validation on the clothing val parts of five splits, before the blend, on the
    head's own probability (ECE 0.052 against 0.080; docs/benchmarks.md, "Confidence"): the
    head's errors bunch in the middle of its range. On the blend, the test parts gave the
    curve ECE 0.038 ± 0.005 and the blend's tempered share 0.037 ± 0.013 (auto-accepting
    37.6% and 36.6%): the curve was kept for its steadier calibration.
    With too few labelled images or errors (see `MIN_CURVE_EXAMPLES`) a step curve would say
    little, so the temperature, fitted on the same images, serves.
    """

    categories: tuple[str, ...]
    centre: np.ndarray  # (dim,)
    weights: np.ndarray  # (categories, dim)
    bias: np.ndarray  # (categories,)
    temperature: float = 1.0
    curve: tuple[np.ndarray, np.ndarray] | None = None
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

    def served_confidence(
        self, blended: Sequence[CategoryScore], calibrated: Sequence[CategoryScore]
    ) -> float | None:
        """How likely the answer (the top of both lists, one before and one after the
        calibration's temperature) is right; None when the head was not fitted on it.

        The curve reads the answer's share of the blend among the categories the head knows,
        as it was fitted; categories it does not know (added since, or too thin to fit) then
        take their calibrated share out of its say: where a new category holds 30% of the
        evidence, the confidence shrinks by 30%."""
        share = self.answer_share(blended)
        if share is None:
            return None
        known = sum(c.score for c in calibrated if c.category in self.column)
        return known * float(self.confidence(np.array([share]))[0])

    def answer_share(self, blended: Sequence[CategoryScore]) -> float | None:
        """The answer's share of the blend among the categories this head knows: what its
        curve reads. None when the answer is not one of them."""
        if not blended or blended[0].category not in self.column:
            return None
        return blended[0].score / sum(c.score for c in blended if c.category in self.column)

    def confidence(self, blended: np.ndarray) -> np.ndarray:
        """How likely answers are right whose blended probabilities are `blended`."""
        raw = np.asarray(blended, dtype=np.float64)
        if self.curve is not None:
            return np.interp(raw, *self.curve)
        return _tempered(raw, self.temperature)

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Every category's probability, (n, categories)."""
        return _softmax(self.logits(vectors))

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The linear scores, (n, categories)."""
        scores: np.ndarray = _centred(vectors, self.centre) @ self.weights.T + self.bias
        return scores

    def calibrated(self, blended: Sequence[float], correct: Sequence[bool]) -> ConfidenceHead:
        """This head calibrated on the blended probabilities of the answers to labelled
        images it was not fitted on, and whether each was right."""
        right = np.asarray(correct, dtype=np.float64)
        raw = np.asarray(blended, dtype=np.float64)
        if not len(raw):
            return self
        temperature = least_log_loss(lambda t: _tempered(raw, t), right)[0]
        errors = int(len(right) - right.sum())
        enough = len(right) >= MIN_CURVE_EXAMPLES
        curve = None
        if enough and min(errors, len(right) - errors) >= MIN_CURVE_ERRORS:
            curve = fit_curve(raw, correct)
        return replace(self, temperature=temperature, curve=curve)

    def to_json(self) -> dict[str, Any]:
        curve = {"curve": [k.tolist() for k in self.curve]} if self.curve is not None else {}
        return {
            "categories": list(self.categories),
            "dim": int(self.centre.shape[0]),
            "centre": _encode(self.centre),
            "weights": _encode(self.weights),
            "bias": _encode(self.bias),
            "temperature": self.temperature,
            "weight": self.weight,
            **curve,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfidenceHead:
        """The stored head; ValueError for one stored before heads were blended (no
        `weight`), whose curve reads another quantity: it must be refitted."""
        if "weight" not in data:
            raise ValueError("a head stored before heads were blended into the answer; refit it")
        categories = tuple(data["categories"])
        dim = int(data["dim"])
        curve = data.get("curve")
        return cls(
            categories,
            _decode(data["centre"]),
            _decode(data["weights"]).reshape(len(categories), dim),
            _decode(data["bias"]),
            float(data["temperature"]),
            (np.asarray(curve[0], dtype=np.float64), np.asarray(curve[1], dtype=np.float64))
            if curve
            else None,
            float(data["weight"]),
        )


def fit_curve(raw: np.ndarray, correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the isotonic map from raw probability to how often such answers are right.
    Its top stays below 1 by one example's worth: a finite sample proves nothing certain."""
    from sklearn.isotonic import IsotonicRegression

    right = np.asarray(correct, dtype=np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0 - 1.0 / (len(right) + 1), out_of_bounds="clip")
    iso.fit(np.asarray(raw, dtype=np.float64), right)
    return np.asarray(iso.X_thresholds_, np.float64), np.asarray(iso.y_thresholds_, np.float64)


def least_log_loss(
    confidences_at: Callable[[float], np.ndarray], correct: np.ndarray
) -> tuple[float, float]:
    """(temperature, log-loss): the temperature whose confidences best predict whether each
    answer is right. Shared by the vote's calibration and the head's."""
    best_t, best_loss = 1.0, math.inf
    for t in _TEMPERATURES:
        p = np.clip(confidences_at(float(t)), _EPSILON, 1 - _EPSILON)
        loss = -float(np.mean(correct * np.log(p) + (1 - correct) * np.log(1 - p)))
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t, best_loss


def fit_head(vectors: np.ndarray, labels: Sequence[str]) -> ConfidenceHead:
    """The head on these labelled vectors, temperature 1. ValueError below two categories."""
    from sklearn.linear_model import LogisticRegression

    if len(set(labels)) < 2:
        raise ValueError("a confidence head needs references of at least two categories")
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
    """A head fitted on every labelled vector, and each one's vote as a head that had not
    seen it blends it (the vote itself where no such head could: a category too thin)."""

    head: ConfidenceHead
    blended: list[list[CategoryScore]]


def cross_fitted_head(
    vectors: np.ndarray,
    labels: Sequence[str],
    votes: Sequence[Sequence[CategoryScore]],
    groups: Sequence[str | None] | None = None,
) -> CrossFit | None:
    """A head on all the labelled vectors, calibrated on out-of-fold blends of `votes` (each
    vector's kNN vote by the others), so it is judged only on images it was not fitted on.
    Folds keep a group (e.g. one sender's photos) together.

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
    kept = np.asarray(vectors)[rows]
    kept_labels = [labels[i] for i in rows]
    blended = [list(v) for v in votes]
    answers: list[float] = []
    correct: list[bool] = []
    splits = GroupKFold(n_splits=min(FOLDS, len(set(group_of)))).split(kept, kept_labels, group_of)
    for train, test in splits:
        if len({kept_labels[i] for i in train}) < 2:
            continue
        fold = fit_head(kept[train], [kept_labels[i] for i in train])
        for probabilities, i in zip(fold.probabilities(kept[test]), test, strict=True):
            row = rows[i]
            blended[row] = fold.blend(votes[row], probabilities)
            share = fold.answer_share(blended[row])  # None: this fold's head cannot vouch
            if share is not None:
                answers.append(share)
                correct.append(blended[row][0].category == labels[row])
    head = fit_head(kept, kept_labels)
    # The rows too thin to fit are blended as the served head will blend such a photo.
    thin = sorted(set(range(len(labels))) - set(rows))
    if thin:
        thin_rows = head.probabilities(np.asarray(vectors)[thin])
        for row, probabilities in zip(thin, thin_rows, strict=True):
            blended[row] = head.blend(votes[row], probabilities)
    return CrossFit(head.calibrated(answers, correct), blended)


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


def _tempered(p: np.ndarray, temperature: float) -> np.ndarray:
    """A probability softened (T > 1) or sharpened (T < 1) as the odds p : 1 - p are."""
    p = np.clip(p, _EPSILON, 1 - _EPSILON)
    a, b = p ** (1 / temperature), (1 - p) ** (1 / temperature)
    out: np.ndarray = a / (a + b)
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
