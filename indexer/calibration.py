"""Calibrated confidence: vote shares become probabilities that mean what they say.

A kNN vote's shares are sharper or flatter than the real odds of being right, depending on the
model, the catalogue and the vote temperature. One temperature T, fitted on labelled images
the index has not seen, fixes that: p_c is proportional to share_c ** (1 / T). The
temperature never changes the ranking (the head's blend, below, may); only how sure the
answer says it is.

The same fit also chooses the open-set threshold: an image whose nearest reference is less
similar than almost every labelled image's nearest reference was (the `UNKNOWN_QUANTILE`
lowest share) is called unknown rather than forced into a category. And when the labelled
images carry their vectors (the stored references), it first fits the head (indexer.head),
which is blended into every vote; the temperature is then fitted on the blended shares, as
they are served, and the head's curve of the blend's answer is the confidence.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from indexer.head import ConfidenceHead, CrossFit, cross_fitted_head, least_log_loss
from indexer.vote import CategoryScore

ECE_BINS = 15
# Share of in-catalogue images allowed to fall under the open-set threshold.
UNKNOWN_QUANTILE = 0.01
MIN_EXAMPLES = 20

log = logging.getLogger(__name__)

# Set in `extra` when a stored head could not be used and is due a refit.
HEAD_DROPPED = "head_dropped"


@dataclass(frozen=True)
class ReliabilityBin:
    """Predictions whose confidence falls in (lower, upper]: how many, how often right, how sure."""

    lower: float
    upper: float
    count: int
    accuracy: float | None
    confidence: float | None


def reliability_bins(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-width confidence bins over [0, 1]; a bin holds confidences in (lower, upper]."""
    conf = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    which = np.clip(np.ceil(conf * bins).astype(int) - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        out.append(
            ReliabilityBin(
                lower=b / bins,
                upper=(b + 1) / bins,
                count=count,
                accuracy=float(right[members].mean()) if count else None,
                confidence=float(conf[members].mean()) if count else None,
            )
        )
    return out


def expected_calibration_error(bins: Sequence[ReliabilityBin]) -> float:
    """Sum over bins of (share of predictions) x |accuracy - mean confidence|."""
    total = sum(b.count for b in bins)
    if not total:
        raise ValueError("no answers to score")
    return sum(
        b.count / total * abs(b.accuracy - b.confidence)
        for b in bins
        if b.accuracy is not None and b.confidence is not None
    )


def ece(confidences: Sequence[float], correct: Sequence[bool]) -> float:
    return expected_calibration_error(reliability_bins(confidences, correct))


@dataclass(frozen=True)
class LabelledVote:
    """One labelled image as the catalogue saw it: its full vote, truth and nearest similarity."""

    scores: Sequence[CategoryScore]  # every category that got a vote, best first
    truth: str
    nearest_similarity: float
    vector: np.ndarray | None = None  # the image's embedding, for the confidence head
    group: str | None = None  # e.g. its sender: the head's folds keep a group together

    @property
    def correct(self) -> bool:
        return bool(self.scores) and self.scores[0].category == self.truth


@dataclass(frozen=True)
class Calibration:
    """How (blended) vote shares become probabilities, and when an image is too far to
    classify.

    The identity (temperature 1, no open-set threshold) until fitted.
    """

    temperature: float = 1.0
    # Nearest-reference cosine similarity below which the answer is `unknown`; -1: never.
    unknown_below: float = -1.0
    examples: int = 0
    ece_before: float | None = None
    ece_after: float | None = None
    source: str = "not fitted"
    fitted_at_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    head: ConfidenceHead | None = None

    @property
    def fitted(self) -> bool:
        """Whether its probabilities were fitted on labelled images, rather than raw shares."""
        return self.examples > 0

    def apply(self, scores: Sequence[CategoryScore]) -> list[CategoryScore]:
        """The (blended) shares as calibrated probabilities, same order, summing to 1."""
        return temper(scores, self.temperature)

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, head=None))
        data["head"] = self.head.to_json() if self.head is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        if known.get("head") is not None:
            try:
                known["head"] = ConfidenceHead.from_json(known["head"])
            except ValueError as exc:
                log.warning("stored calibration: %s (the server does so by itself)", exc)
                known["head"] = None
                # server.recalibrate refits a dropped head once the categories are settled.
                known["extra"] = {**known.get("extra", {}), HEAD_DROPPED: True}
        return cls(**known)


def temper(scores: Sequence[CategoryScore], temperature: float) -> list[CategoryScore]:
    """share ** (1 / temperature), renormalised; T > 1 flattens, T < 1 sharpens."""
    if not scores:
        return []
    logs = np.log(np.maximum([s.score for s in scores], 1e-300)) / temperature
    weights = np.exp(logs - logs.max())
    weights /= weights.sum()
    return [CategoryScore(s.category, float(w)) for s, w in zip(scores, weights, strict=True)]


def _top_confidences(votes: Sequence[LabelledVote], temperature: float) -> np.ndarray:
    return np.array([temper(v.scores, temperature)[0].score if v.scores else 0.0 for v in votes])


def fit_calibration(votes: Sequence[LabelledVote], source: str) -> Calibration:
    """The head (when the images carry vectors), then the temperature that best predicts
    whether the top category of the blended vote is right (least log-loss), and the open-set
    threshold from the nearest similarities of these in-catalogue images."""
    if len(votes) < MIN_EXAMPLES:
        raise ValueError(
            f"{len(votes)} labelled images are too few to calibrate on; "
            f"at least {MIN_EXAMPLES} are needed"
        )
    vote_accuracy = float(np.mean([v.correct for v in votes]))
    fit = _head(votes)
    if fit is not None:  # served shares are blended: fit the temperature on those
        votes = [replace(v, scores=blended) for v, blended in zip(votes, fit.blended, strict=True)]
    correct = np.array([v.correct for v in votes], dtype=np.float64)
    best_t, best_loss = least_log_loss(lambda t: _top_confidences(votes, t), correct)
    nearest = np.array([v.nearest_similarity for v in votes])
    return Calibration(
        temperature=best_t,
        unknown_below=float(np.quantile(nearest, UNKNOWN_QUANTILE)),
        examples=len(votes),
        ece_before=ece(_top_confidences(votes, 1.0).tolist(), correct.astype(bool).tolist()),
        ece_after=ece(_top_confidences(votes, best_t).tolist(), correct.astype(bool).tolist()),
        source=source,
        fitted_at_ms=int(time.time() * 1000),
        extra={
            "log_loss": best_loss,
            "accuracy": float(correct.mean()),
            "vote_accuracy": vote_accuracy,
        },
        head=fit.head if fit is not None else None,
    )


def _head(votes: Sequence[LabelledVote]) -> CrossFit | None:
    """The head, cross-fitted, when every labelled image came with its vector."""
    if not votes or any(v.vector is None for v in votes):
        return None
    return cross_fitted_head(
        np.stack([v.vector for v in votes if v.vector is not None]),
        [v.truth for v in votes],
        [v.scores for v in votes],
        [v.group for v in votes],
    )
