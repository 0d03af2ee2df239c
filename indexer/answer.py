"""The served answer: from an image's neighbours to categories, confidence and decision.

`answer` is the one place that computes it. The server (`server.catalog`), `nearcat eval`,
the calibration fit and the reindex check all call it (the fit and the check through
`evidence`, its first half), so they cannot disagree about what is served:

    evidence   the kNN vote (indexer.vote), half of the share it gives the categories the head
               knows redistributed by the head (indexer.head), then the text claims of
               categories with prompts
    calibrate  shares ** (1 / T), renormalised: probabilities; the answer's is its confidence
    decide     unknown when far from every reference; auto-accept from the threshold the
               labelled evidence earned; flag; else review with the top 3 (indexer.decision)
    levels     probabilities summed up the taxonomy, and the confident ancestor
    attributes each attribute the neighbours carry, voted and tempered (indexer.attributes)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from indexer.attributes import Attributes, AttributeScore, attribute_scores
from indexer.calibration import Calibration
from indexer.decision import Decision, DecisionPolicy
from indexer.head import ConfidenceHead
from indexer.index import Hit
from indexer.taxonomy import LevelScore, level_scores, path_of
from indexer.vote import CategoryScore, VoteConfig, knn_vote

REVIEW_CANDIDATES = 3  # a person reviewing an uncertain image picks from this many


@dataclass(frozen=True)
class ScoredCategory:
    category: str
    score: float
    path: list[str]


@dataclass(frozen=True)
class Prediction:
    """One image's answer: calibrated category probabilities, best first, what to do with it,
    the most probable node at each taxonomy level, and the nearest references as evidence."""

    categories: list[ScoredCategory]
    neighbors: list[Hit]
    decision: Decision = Decision.REVIEW
    levels: list[LevelScore] = field(default_factory=list)
    # The deepest ancestor of the answer that is sure enough to auto-accept when the answer
    # itself is not: "certainly Shoes, maybe Sneakers".
    confident_ancestor: LevelScore | None = None
    model_version: str = ""  # the version that answered: one per call, never a mix
    # The answer's calibrated probability: what the bands read.
    confidence: float = 0.0
    # Each attribute the nearest references carry, with its values' probabilities.
    attributes: list[AttributeScore] = field(default_factory=list)

    @property
    def category(self) -> str | None:
        return self.categories[0].category if self.categories else None


@dataclass(frozen=True)
class TextEvidence:
    """The text tower's say on one image: each category's share of its text softmax, and the
    weight of that share for the categories with prompts, m / (m + references)."""

    shares: Mapping[str, float]
    weights: Mapping[str, float]

    @classmethod
    def weighed(
        cls,
        names: Sequence[str],
        shares: Sequence[float],
        prompted: Mapping[str, int],
        prompt_weight: float,
    ) -> TextEvidence:
        """`shares` of the text softmax over `names`; `prompted`: the categories with prompts
        and their reference counts, each weighted m / (m + references), m `prompt_weight`."""
        weights = {
            name: prompt_weight / (prompt_weight + prompted[name])
            for name in names
            if name in prompted
        }
        return cls(dict(zip(names, shares, strict=True)), weights)


@dataclass(frozen=True)
class HeadInput:
    """A head with its probabilities for one image, and which of its categories still exist
    (`ConfidenceHead.held`; None: all)."""

    head: ConfidenceHead
    probabilities: np.ndarray
    held: np.ndarray | None = None


def evidence(
    hits: Sequence[Hit],
    vote: VoteConfig,
    head: HeadInput | None = None,
    text: TextEvidence | None = None,
) -> list[CategoryScore]:
    """Every category's share of the evidence, best first, summing to 1: the vote, the head
    blended in, then the text claims. What the calibration fits its temperature on."""
    shares = knn_vote(hits, vote, len(hits) or 1)
    if head is not None:
        shares = head.head.blend(shares, head.probabilities, head.held)
    if text is not None and text.weights:
        shares = with_text(shares, text)
    return shares


def with_text(image: Sequence[CategoryScore], text: TextEvidence) -> list[CategoryScore]:
    """Text claims mixed into the image evidence, for categories with prompts.

    A category with prompts claims w_c * text(c) of the probability; the rest, 1 - sum of
    the claims, is shared out by the image evidence, each category's share weighted by
    1 - w_c. So a category known from text alone can win outright when the text is sure,
    its claim fades as reference images arrive, and without prompts nothing changes.
    """
    claimed = {name: text.weights[name] * text.shares.get(name, 0.0) for name in text.weights}
    weighted = {c.category: (1 - text.weights.get(c.category, 0.0)) * c.score for c in image}
    image_total = sum(weighted.values())
    left = 1.0 - sum(claimed.values())
    mixed = dict(claimed)  # with no image evidence at all, the claims are all there is
    if image_total > 0:
        for name, value in weighted.items():
            mixed[name] = mixed.get(name, 0.0) + left * value / image_total
    total = sum(mixed.values())
    if total <= 0:
        return list(image)
    ranked = sorted(mixed.items(), key=lambda item: (-item[1], item[0]))
    return [CategoryScore(name, value / total) for name, value in ranked if value > 0]


def answer(
    hits: Sequence[Hit],
    *,
    vote: VoteConfig,
    calibration: Calibration,
    policy: DecisionPolicy,
    indexed: Collection[str],
    parents: Mapping[str, str | None] | None = None,
    head: HeadInput | None = None,
    text: TextEvidence | None = None,
    top_n: int = 5,
    model_version: str = "",
    attributes_of: Mapping[str, Attributes] | None = None,
) -> Prediction:
    """The served answer for one image from its nearest references `hits` (best first).

    `indexed`: the categories that have reference images (one known from its prompts alone
    is never auto-accepted: zero-shot scores are not calibrated, a person confirms).
    `attributes_of`: reference id -> its attributes, for those that carry any."""
    parents = parents or {}
    scores = calibration.apply(evidence(hits, vote, head, text))
    attributes = attribute_scores(hits, attributes_of or {}, vote, calibration.attributes)
    if not scores:
        return Prediction(
            [], list(hits), Decision.UNKNOWN, model_version=model_version, attributes=attributes
        )
    top = scores[0]
    if top.category in indexed:
        decision = policy.decide(
            top.category, top.score, hits[0].similarity if hits else -1.0, calibration
        )
    else:
        decision = Decision.REVIEW
    levels = level_scores(scores, parents)
    if decision in (Decision.REVIEW, Decision.UNKNOWN):
        top_n = max(top_n, REVIEW_CANDIDATES)
    return Prediction(
        categories=[
            ScoredCategory(c.category, c.score, path_of(c.category, parents))
            for c in scores[:top_n]
        ],
        neighbors=list(hits),
        decision=decision,
        levels=levels,
        confident_ancestor=_confident_ancestor(decision, top.category, levels, policy, calibration),
        model_version=model_version,
        confidence=top.score,
        attributes=attributes,
    )


def _confident_ancestor(
    decision: Decision,
    answer: str,
    levels: Sequence[LevelScore],
    policy: DecisionPolicy,
    calibration: Calibration,
) -> LevelScore | None:
    """The deepest ancestor whose summed probability clears its auto-accept threshold, when
    the answer itself is not auto-accepted."""
    if decision in (Decision.AUTO_ACCEPT, Decision.UNKNOWN):
        return None
    sure = []
    for level in levels:
        threshold = policy.auto_accept_at(level.category, calibration)
        if level.category != answer and threshold is not None and level.score >= threshold:
            sure.append(level)
    return sure[-1] if sure else None
