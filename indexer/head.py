"""The confidence head: how sure a kNN answer is, judged by a linear model of the references.

A vote's shares say how the nearest references split. They saturate where a wrong category's
references crowd around an image (the small look-alike categories, or any ArcFace model), so
a confident vote is not always a right one. A logistic regression over the reference vectors
weighs the whole catalogue at once; its probability of the vote's answer, mapped through a
monotone (isotonic) curve fitted on images the head never saw, is the confidence. On the
clothing benchmark it gives ECE 0.039 and auto-accepts more than the vote's share
(docs/benchmarks.md, "Confidence").

The head never changes the answer: the kNN vote stays the classifier. It only speaks while
the categories an answer can name are exactly those it was fitted on; once one comes or goes,
the catalogue goes back to the vote's share until the next calibration refits it.
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
    """softmax(W @ unit(v - centre) + b) over `categories`; an answer's probability then goes
    through `curve`, or without one is softened by `temperature`.

    The curve is an isotonic map (knots: raw probability -> how often such answers are right)
    fitted on images the head was not fitted on. It was chosen over the temperature by
    cross-validation on the clothing val parts of five splits (ECE 0.052 against 0.080;
    docs/benchmarks.md, "Confidence"): a temperature only scales the logits, while the head's
    errors bunch in the middle of its range. With too few labelled images or errors (see
    `MIN_CURVE_EXAMPLES`) a step curve would say little, so the temperature, fitted on the
    same images, serves; it is always stored, which is also what versions before the curve
    read.
    """

    categories: tuple[str, ...]
    centre: np.ndarray  # (dim,)
    weights: np.ndarray  # (categories, dim)
    bias: np.ndarray  # (categories,)
    temperature: float = 1.0
    curve: tuple[np.ndarray, np.ndarray] | None = None

    @cached_property
    def column(self) -> dict[str, int]:
        """Each category's column in the logits."""
        return {c: i for i, c in enumerate(self.categories)}

    def covers(self, categories: Collection[str]) -> bool:
        """True while the catalogue has exactly the categories the head was fitted on."""
        return set(categories) == self.column.keys()

    def confidence(self, vectors: np.ndarray, answers: Sequence[str | None]) -> np.ndarray:
        """How likely each answer is right; 0 where the head does not know the category."""
        if self.curve is None:
            return self.raw_confidence(vectors, answers, self.temperature)
        known = np.array([a in self.column for a in answers], dtype=bool)
        raw = self.raw_confidence(vectors, answers)
        return np.where(known, np.interp(raw, *self.curve), 0.0)

    def raw_confidence(
        self, vectors: np.ndarray, answers: Sequence[str | None], temperature: float = 1.0
    ) -> np.ndarray:
        """The head's probability of each answer at `temperature`; 0 for an unknown one."""
        probabilities = self.probabilities(vectors, temperature)
        column = self.column
        return np.array(
            [probabilities[row, column[a]] if a in column else 0.0 for row, a in enumerate(answers)]
        )

    def probabilities(self, vectors: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Every category's probability, (n, categories)."""
        return _softmax(self.logits(vectors) / temperature)

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The linear scores, (n, categories)."""
        scores: np.ndarray = _centred(vectors, self.centre) @ self.weights.T + self.bias
        return scores

    def calibrated(
        self, vectors: np.ndarray, answers: Sequence[str | None], correct: Sequence[bool]
    ) -> ConfidenceHead:
        """This head calibrated on these labelled images, which it was not fitted on."""
        known = [i for i, a in enumerate(answers) if a in self.column]
        if not known:
            return self
        logits = self.logits(vectors[known])
        columns = np.array([self.column[str(answers[i])] for i in known])
        return with_calibration(self, logits, columns, [correct[i] for i in known])

    def to_json(self) -> dict[str, Any]:
        curve = {"curve": [k.tolist() for k in self.curve]} if self.curve is not None else {}
        return {
            "categories": list(self.categories),
            "dim": int(self.centre.shape[0]),
            "centre": _encode(self.centre),
            "weights": _encode(self.weights),
            "bias": _encode(self.bias),
            "temperature": self.temperature,
            **curve,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConfidenceHead:
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
        )


def with_calibration(
    head: ConfidenceHead, logits: np.ndarray, columns: np.ndarray, correct: Sequence[bool]
) -> ConfidenceHead:
    """`head` with a temperature, and with enough examples a curve, fitted to predict from
    these logits whether the answer in each row's column is right."""
    right = np.asarray(correct, dtype=np.float64)
    rows = np.arange(len(columns))
    temperature = least_log_loss(lambda t: _softmax(logits / t)[rows, columns], right)[0]
    errors = int(len(right) - right.sum())
    curve = None
    if len(right) >= MIN_CURVE_EXAMPLES and min(errors, len(right) - errors) >= MIN_CURVE_ERRORS:
        curve = fit_curve(_softmax(logits)[rows, columns], correct)
    return replace(head, temperature=temperature, curve=curve)


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


def cross_fitted_head(
    vectors: np.ndarray,
    labels: Sequence[str],
    answers: Sequence[str | None],
    groups: Sequence[str | None] | None = None,
) -> ConfidenceHead | None:
    """A head on all the labelled vectors, its curve fitted on out-of-fold probabilities of
    `answers` (the vote's answer for each vector), so it is judged only on images it was not
    fitted on. Folds keep a group (e.g. one sender's photos) together.

    A category with too few references for a fit to mean anything (a new one with its first
    photo) is left out: the head does not speak for it, but still does for the others.
    None when fewer than two categories are left."""
    from sklearn.model_selection import GroupKFold

    counts = Counter(labels)
    rows = [i for i, label in enumerate(labels) if counts[label] >= MIN_PER_CATEGORY]
    vectors = np.asarray(vectors)[rows]
    labels = [labels[i] for i in rows]
    answers = [answers[i] for i in rows]
    groups = [groups[i] for i in rows] if groups is not None else None
    counts = Counter(labels)
    if len(counts) < 2:
        return None
    group_of = [
        g if g is not None else f"row-{n}"
        for n, g in enumerate(groups if groups is not None else [None] * len(labels))
    ]
    logits: list[np.ndarray] = []
    columns: list[int] = []
    correct: list[bool] = []
    splits = GroupKFold(n_splits=min(FOLDS, len(set(group_of)))).split(vectors, labels, group_of)
    for train, test in splits:
        if len({labels[i] for i in train}) < 2:
            continue
        fold = fit_head(vectors[train], [labels[i] for i in train])
        for row, i in zip(fold.logits(vectors[test]), test, strict=True):
            answer = answers[i]
            if answer in fold.column:  # a category missing from this fold's head cannot vouch
                logits.append(row)
                columns.append(fold.column[answer])
                correct.append(answer == labels[i])
    head = fit_head(vectors, labels)
    if not correct:
        return head
    # A fold's head may lack a small category: pad its rows with -inf, which softmax ignores.
    padded = np.full((len(logits), len(counts)), -np.inf)
    for row, values in zip(padded, logits, strict=True):
        row[: len(values)] = values
    return with_calibration(head, padded, np.array(columns), correct)


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
