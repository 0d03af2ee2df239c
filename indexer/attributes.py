"""Attributes: labels a reference carries besides its category (`kids=true`, `colour=red`),
answered for an image from its nearest references.

Each attribute is voted on like the category (indexer.vote), by the neighbours that carry
it: each weighs exp(similarity / temperature), a value's share is its weight over theirs.
Categories and attributes cut across each other (a kids' shirt and kids' shorts), so every
neighbour votes, whatever its category. The shares become probabilities with one
temperature per attribute, fitted like the category's (least log-loss) on examples the
catalogue has not seen: each sampled reference that carries attributes, asked of the others
outside its shoot and group (indexer.holdout), never of its own burst.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.calibration import ece, least_log_loss, temper
from indexer.index import Hit
from indexer.vote import CategoryScore, VoteConfig

Attributes = Mapping[str, str]  # name -> value
MAX_ATTRIBUTES = 16  # per reference
MIN_ATTRIBUTE_EXAMPLES = 30  # fewer honest examples of an attribute: its shares go untempered


@dataclass(frozen=True)
class AttributeScore:
    """One attribute of an image: each value's probability, best first, summing to 1, and
    how many of the nearest references carry it (the evidence)."""

    name: str
    values: list[tuple[str, float]]
    voters: int


@dataclass(frozen=True)
class AttributeExample:
    """A held-out reference's shares for one attribute it carries, and its own value."""

    name: str
    shares: list[CategoryScore]
    truth: str

    @property
    def correct(self) -> bool:
        return bool(self.shares) and self.shares[0].category == self.truth


def attribute_shares(
    hits: Sequence[Hit], attributes_of: Mapping[str, Attributes], vote: VoteConfig
) -> dict[str, tuple[list[CategoryScore], int]]:
    """Each attribute the `hits` carry: its values' shares, best first, and its voters."""
    if not hits:
        return {}
    best = max(h.similarity for h in hits)
    weights: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    voters: dict[str, int] = defaultdict(int)
    for hit in hits:
        weight = math.exp((hit.similarity - best) / vote.temperature)
        for name, value in attributes_of.get(hit.reference_id, {}).items():
            weights[name][value] += weight
            voters[name] += 1
    out = {}
    for name, by_value in weights.items():
        total = sum(by_value.values())
        ranked = sorted(by_value.items(), key=lambda item: (-item[1], item[0]))
        out[name] = ([CategoryScore(v, w / total) for v, w in ranked], voters[name])
    return out


def attribute_scores(
    hits: Sequence[Hit],
    attributes_of: Mapping[str, Attributes],
    vote: VoteConfig,
    fitted: Mapping[str, Mapping[str, Any]],
) -> list[AttributeScore]:
    """The calibrated attributes of one image, by name (`fitted`: `fit_attributes`'s
    result; an attribute it lacks keeps its raw shares); none when no neighbour carries
    any."""
    out = []
    for name, (shares, voters) in sorted(attribute_shares(hits, attributes_of, vote).items()):
        tempered = temper(shares, fitted.get(name, {}).get("temperature", 1.0))
        out.append(AttributeScore(name, [(s.category, s.score) for s in tempered], voters))
    return out


def fit_attributes(
    examples: Sequence[AttributeExample], source: str = ""
) -> dict[str, dict[str, Any]]:
    """Per attribute with enough examples: the temperature of least log-loss, and what it was
    fitted on (`source`, examples, top-1 accuracy, ECE before and after)."""
    by_name: dict[str, list[AttributeExample]] = defaultdict(list)
    for example in examples:
        by_name[example.name].append(example)
    fitted = {}
    for name, group in sorted(by_name.items()):
        if len(group) < MIN_ATTRIBUTE_EXAMPLES:
            continue
        correct = np.array([e.correct for e in group], dtype=np.float64)

        def top(t: float, group: list[AttributeExample] = group) -> np.ndarray:
            return np.array([temper(e.shares, t)[0].score for e in group])

        temperature, _ = least_log_loss(top, correct)
        right = correct.astype(bool).tolist()
        fitted[name] = {
            "source": source,
            "temperature": temperature,
            "examples": len(group),
            "accuracy": float(correct.mean()),
            "ece_before": ece(top(1.0).tolist(), right),
            "ece_after": ece(top(temperature).tolist(), right),
        }
    return fitted
