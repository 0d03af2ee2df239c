"""The confidence head: how sure a kNN answer is, judged by a linear model of the references.

A vote's shares say how the nearest references split. They saturate where a wrong category's
references crowd around an image (the small look-alike categories, or any ArcFace model), so
a confident vote is not always a right one. A logistic regression over the reference vectors
weighs the whole catalogue at once; its probability of the vote's answer, mapped through a
monotone (isotonic) curve fitted on images the head never saw, is the confidence. On the
clothing benchmark it gives ECE 0.040 and auto-accepts more than the vote's share
(docs/benchmarks.md, "Confidence").

The head never changes the answer: the kNN vote stays the classifier. It only speaks while
the categories an answer can name are exactly those it was fitted on; once one comes or goes,
the catalogue goes back to the vote's share until the next calibration refits it.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

import numpy as np

# Regularisation of the logistic regression, and balanced class weights (a small category's
# references count as much as a big one's): the best of 16 settings by clothing val coverage.
HEAD_C = 10.0
FOLDS = 5  # out-of-fold probabilities for the curve, grouped where groups are known
MIN_PER_CATEGORY = 2


@dataclass(frozen=True)
class ConfidenceHead:
    """softmax((W @ unit(v - centre) + b) / temperature) over `categories`; the probability of
    an answer then goes through `curve`.

    The curve is an isotonic map (knots: raw probability -> calibrated), fitted on images the
    head was not fitted on. Chosen over one temperature by cross-validation on the clothing
    val parts of five splits (ECE 0.052 against 0.080; docs/benchmarks.md, "Confidence"): a
    temperature only scales the logits, while the head's errors bunch in the middle of its
    range. Heads stored before the curve existed have a temperature and no curve.
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
        raw = self.raw_confidence(vectors, answers)
        if self.curve is None:
            return raw
        known = np.array([a in self.column for a in answers], dtype=bool)
        return np.where(known, np.interp(raw, *self.curve), 0.0)

    def raw_confidence(self, vectors: np.ndarray, answers: Sequence[str | None]) -> np.ndarray:
        """The head's probability of each answer, before the curve; 0 for an unknown one."""
        probabilities = self.probabilities(vectors)
        column = self.column
        return np.array(
            [probabilities[row, column[a]] if a in column else 0.0 for row, a in enumerate(answers)]
        )

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        return _softmax(self.logits(vectors) / self.temperature)

    def logits(self, vectors: np.ndarray) -> np.ndarray:
        """The linear scores before the temperature, (n, categories)."""
        scores: np.ndarray = _centred(vectors, self.centre) @ self.weights.T + self.bias
        return scores

    def calibrated(
        self, vectors: np.ndarray, answers: Sequence[str | None], correct: Sequence[bool]
    ) -> ConfidenceHead:
        """This head with the curve fitted on these labelled images, which it was not fitted
        on: how often an answer of each raw probability is right."""
        known = [i for i, a in enumerate(answers) if a in self.column]
        if not known:
            return self
        raw = self.raw_confidence(vectors[known], [answers[i] for i in known])
        return replace(self, curve=fit_curve(raw, [correct[i] for i in known]))

    def to_json(self) -> dict[str, Any]:
        return {
            "categories": list(self.categories),
            "dim": int(self.centre.shape[0]),
            "centre": _encode(self.centre),
            "weights": _encode(self.weights),
            "bias": _encode(self.bias),
            "temperature": self.temperature,
            **({"curve": [_encode(k) for k in self.curve]} if self.curve is not None else {}),
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
            (_decode(curve[0]), _decode(curve[1])) if curve else None,
        )


def fit_curve(raw: np.ndarray, correct: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    """Knots of the isotonic map from raw probability to how often such answers are right.
    Its top stays below 1 by one example's worth: a finite sample proves nothing certain."""
    from sklearn.isotonic import IsotonicRegression

    right = np.asarray(correct, dtype=np.float64)
    iso = IsotonicRegression(y_min=0.0, y_max=1.0 - 1.0 / (len(right) + 1), out_of_bounds="clip")
    iso.fit(np.asarray(raw, dtype=np.float64), right)
    return (
        np.asarray(iso.X_thresholds_, dtype=np.float32),
        np.asarray(iso.y_thresholds_, dtype=np.float32),
    )


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
    None when a category has too few references for a fit to mean anything."""
    from sklearn.model_selection import GroupKFold

    labels = list(labels)
    counts = Counter(labels)
    if len(counts) < 2 or min(counts.values()) < MIN_PER_CATEGORY:
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
    raw = _softmax(padded)[np.arange(len(columns)), columns]
    return replace(head, curve=fit_curve(raw, correct))


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
