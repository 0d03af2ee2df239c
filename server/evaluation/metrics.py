"""Metrics of one method's answers: top-k, per category, macro, per taxonomy level, ECE;
pure functions over `Answer`s, the one type every classifier here returns."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from indexer.calibration import (
    ReliabilityBin,
    expected_calibration_error,
    reliability_bins,
)

TOP_N = 5  # categories kept per answer (top-3 accuracy needs 3)
WORST_COUNT = 5


# -- answers and metrics -------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One query: its true category and the predicted categories, best first, with scores."""

    truth: str
    categories: tuple[str, ...]
    scores: tuple[float, ...]
    # Cosine similarity of the nearest reference, for kNN answers (-1.0 when the search found
    # none); 1.0 where it does not apply (the probe, zero-shot).
    nearest: float = 1.0

    @property
    def predicted(self) -> str | None:
        return self.categories[0] if self.categories else None

    @property
    def confidence(self) -> float:
        """The top category's score: what calibration is measured on."""
        return self.scores[0] if self.scores else 0.0

    def hit(self, k: int) -> bool:
        return self.truth in self.categories[:k]


@dataclass(frozen=True)
class CategoryMetrics:
    n: int
    top1: float
    top3: float


def top_k_accuracy(answers: Sequence[Answer], k: int) -> float:
    if not answers:
        raise ValueError("no answers to score")
    return sum(a.hit(k) for a in answers) / len(answers)


def per_category(answers: Sequence[Answer]) -> dict[str, CategoryMetrics]:
    """Top-1 and top-3 accuracy of each true category, sorted by name."""
    grouped: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        grouped[answer.truth].append(answer)
    return {
        name: CategoryMetrics(len(group), top_k_accuracy(group, 1), top_k_accuracy(group, 3))
        for name, group in sorted(grouped.items())
    }


def macro_top1(categories: Mapping[str, CategoryMetrics]) -> float:
    """The mean of per-category top-1: every category counts the same, however many queries."""
    return sum(m.top1 for m in categories.values()) / len(categories)


def worst_categories(
    categories: Mapping[str, CategoryMetrics], count: int = WORST_COUNT
) -> list[str]:
    """The `count` categories with the lowest top-1 (more queries first among equals)."""
    ranked = sorted(categories.items(), key=lambda item: (item[1].top1, -item[1].n, item[0]))
    return [name for name, _ in ranked[:count]]


def ancestry(category: str, parents: Mapping[str, str | None]) -> tuple[str, ...]:
    """The taxonomy path from the top-level category down to `category`."""
    path = [category]
    while (parent := parents.get(path[-1])) and parent not in path:
        path.append(parent)
    return tuple(reversed(path))


def hierarchy_accuracy(
    answers: Sequence[Answer], parents: Mapping[str, str | None]
) -> dict[str, float]:
    """Top-1 accuracy at each taxonomy level, judged by the predicted category's path.

    `level_1` is the top-level category, `level_2` the one below it, ...; a level counts the
    queries whose true category is at that depth or deeper. `leaf` is plain top-1. A flat
    dataset has only `leaf`.
    """
    truths = [ancestry(a.truth, parents) for a in answers]
    predictions = [ancestry(a.predicted, parents) if a.predicted else () for a in answers]
    depth = max(len(path) for path in truths)
    levels: dict[str, float] = {}
    for level in range(1, depth):
        pairs = [(t, p) for t, p in zip(truths, predictions, strict=True) if len(t) >= level]
        right = sum(len(p) >= level and p[level - 1] == t[level - 1] for t, p in pairs)
        levels[f"level_{level}"] = right / len(pairs)
    levels["leaf"] = top_k_accuracy(answers, 1)
    return levels


@dataclass(frozen=True)
class SubsetMetrics:
    n: int
    top1: float
    top3: float
    macro_top1: float


def subset_metrics(answers: Sequence[Answer]) -> SubsetMetrics:
    return SubsetMetrics(
        len(answers),
        top_k_accuracy(answers, 1),
        top_k_accuracy(answers, 3),
        macro_top1(per_category(answers)),
    )


@dataclass(frozen=True)
class Metrics:
    """Everything measured on one method's answers."""

    queries: int
    top1: float
    top3: float
    macro_top1: float
    ece: float
    worst_categories: list[str]
    per_category: dict[str, CategoryMetrics]
    hierarchy: dict[str, float]
    reliability: list[ReliabilityBin]
    # Queries of categories held out of training vs the rest; None when nothing is held out.
    held_out: SubsetMetrics | None = None
    seen: SubsetMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "queries": self.queries,
            "top1": self.top1,
            "top3": self.top3,
            "macro_top1": self.macro_top1,
            "ece": self.ece,
            "worst_categories": [
                {"category": name, **vars(self.per_category[name])}
                for name in self.worst_categories
            ],
            "per_category": {name: vars(m) for name, m in self.per_category.items()},
            "hierarchy": self.hierarchy,
            "reliability": [vars(b) for b in self.reliability],
        }
        if self.held_out is not None or self.seen is not None:
            data["held_out"] = {
                "held_out": vars(self.held_out) if self.held_out else None,
                "seen": vars(self.seen) if self.seen else None,
            }
        return rounded(data)


def score(
    answers: Sequence[Answer],
    parents: Mapping[str, str | None] | None = None,
    held_out: Sequence[str] = (),
) -> Metrics:
    """All metrics of one method's answers; `held_out` categories are also scored apart."""
    categories = per_category(answers)
    bins = reliability_bins([a.confidence for a in answers], [a.hit(1) for a in answers])
    held = set(held_out)
    held_answers = [a for a in answers if a.truth in held]
    seen_answers = [a for a in answers if a.truth not in held]
    return Metrics(
        queries=len(answers),
        top1=top_k_accuracy(answers, 1),
        top3=top_k_accuracy(answers, 3),
        macro_top1=macro_top1(categories),
        ece=expected_calibration_error(bins),
        worst_categories=worst_categories(categories),
        per_category=categories,
        hierarchy=hierarchy_accuracy(answers, parents or {}),
        reliability=bins,
        held_out=subset_metrics(held_answers) if held and held_answers else None,
        seen=subset_metrics(seen_answers) if held and seen_answers else None,
    )


def rounded(value: Any, digits: int = 4) -> Any:
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [rounded(v, digits) for v in value]
    return value
