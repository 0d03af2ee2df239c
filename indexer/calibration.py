"""Calibrated confidence, and an auto-accept threshold the evidence has earned.

One quantity is calibrated: the answer's probability. The evidence (the kNN vote, blended
with the head, with text claims; `indexer.answer.evidence`) gives every category a share;
one temperature T, fitted on labelled images the index has not seen, turns shares into
probabilities: p_c proportional to share_c ** (1 / T). The answer's probability is its
confidence, and the bands read it. T never changes the ranking.

The same labelled images choose the auto-accept threshold: the lowest confidence at which
the one-sided lower confidence bound (Clopper-Pearson, `level`) on the precision of every
answer at or above it still reaches the target precision. A threshold is only as good as
the evidence above it: 40 right answers out of 40 do not prove 98%, so with too little
evidence nothing is auto-accepted, and the calibration says why and about how many labelled
photos would be needed. Open set: each labelled image is also asked again with its own
category left out (`open_set` examples, always wrong); they count as errors above the
threshold, weighted as if `open_set_share` of the traffic belonged to no category, so a
look-alike of a missing category does not get auto-accepted. They do not move T: the
catalogue's own queries are in-catalogue.

The open-set threshold for `unknown` comes from the same fit: an image whose nearest
reference is less similar than almost every labelled image's was (the `UNKNOWN_QUANTILE`
lowest share) is called unknown rather than forced into a category.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from indexer.head import ConfidenceHead
from indexer.vote import CategoryScore

ECE_BINS = 15
# Share of in-catalogue images allowed to fall under the open-set threshold.
UNKNOWN_QUANTILE = 0.01
MIN_EXAMPLES = 20
# The stored calibration's format; another one is refitted, not read (see `from_json`).
FORMAT = 2
# Temperatures tried by the fit (log-spaced); beyond this range nothing useful happens.
_TEMPERATURES = np.exp(np.linspace(math.log(0.05), math.log(20.0), 241))
_EPSILON = 1e-6

log = logging.getLogger(__name__)

# Set in `extra` when a stored calibration could not be used and is due a refit.
REFIT_DUE = "refit_due"


@dataclass(frozen=True)
class Bound:
    """How the auto-accept threshold is earned: answers at or above it must be right at least
    `precision` of the time, at one-sided confidence `level`; `open_set_share` is the share
    of traffic assumed to belong to no category (the left-out-category examples' weight)."""

    precision: float = 0.98
    level: float = 0.9
    open_set_share: float = 0.01

    def __post_init__(self) -> None:
        if not 0.5 <= self.precision < 1.0:
            raise ValueError(f"target precision must be in [0.5, 1), got {self.precision}")
        if not 0.5 <= self.level < 1.0:
            raise ValueError(f"bound confidence level must be in [0.5, 1), got {self.level}")
        if not 0.0 <= self.open_set_share < 0.5:
            raise ValueError(f"open-set share must be in [0, 0.5), got {self.open_set_share}")

    def needed_run(self) -> int:
        """Answers in a row, all right, that prove `precision` at `level`: the fewest a band
        can have (0.98 at 0.9: 114)."""
        return math.ceil(math.log(1 - self.level) / math.log(self.precision))


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


def precision_lower_bound(right: float, total: float, level: float) -> float:
    """One-sided Clopper-Pearson lower bound on a proportion `right` / `total` at confidence
    `level`; counts may be weighted (fractional)."""
    from scipy.stats import beta

    if total <= 0 or right <= 0:
        return 0.0
    return float(beta.ppf(1 - level, right, total - right + 1))


@dataclass(frozen=True)
class LabelledExample:
    """One labelled image as the catalogue saw it: the evidence's shares (every category that
    got any, best first), the truth, and its nearest reference's similarity. `open_set`:
    asked with its own category left out of the catalogue, so no answer is right."""

    shares: Sequence[CategoryScore]
    truth: str
    nearest_similarity: float
    open_set: bool = False

    @property
    def correct(self) -> bool:
        return not self.open_set and bool(self.shares) and self.shares[0].category == self.truth


@dataclass(frozen=True)
class Calibration:
    """How shares become probabilities, from which confidence an answer is auto-accepted,
    and when an image is too far from everything to classify.

    The identity (temperature 1, no open-set threshold, nothing auto-accepted) until fitted.
    """

    temperature: float = 1.0
    # Nearest-reference cosine similarity below which the answer is `unknown`; -1: never.
    unknown_below: float = -1.0
    # Confidence from which answers are auto-accepted; None: the evidence earned none.
    auto_accept_at: float | None = None
    bound: Bound = field(default_factory=Bound)
    # The lower bound reached at the threshold, and the share of the labelled images above it.
    precision_bound: float | None = None
    accepted_share: float = 0.0
    # Why nothing is auto-accepted and about how many labelled photos would change that.
    reason: str = ""
    labelled_needed: int = 0
    examples: int = 0  # in-catalogue labelled images (open-set copies not counted)
    ece_before: float | None = None
    ece_after: float | None = None
    source: str = "not fitted"
    fitted_at_ms: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    head: ConfidenceHead | None = None
    # Per attribute: its temperature and what it was fitted on (indexer.attributes).
    attributes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        """Whether its probabilities were fitted on labelled images, rather than raw shares."""
        return self.examples > 0

    def apply(self, shares: Sequence[CategoryScore]) -> list[CategoryScore]:
        """The shares as calibrated probabilities, same order, summing to 1."""
        return temper(shares, self.temperature)

    def to_json(self) -> dict[str, Any]:
        data = asdict(replace(self, head=None))
        data["head"] = self.head.to_json() if self.head is not None else None
        data["format"] = FORMAT
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        """The stored calibration; one of another format (or none) gives the identity, marked
        `REFIT_DUE` when there was one, so the server refits it (server.recalibrate)."""
        if not data:
            return cls()
        if data.get("format") != FORMAT:
            log.warning(
                "the stored calibration is of an older format (its confidence read another "
                "quantity); serving uncalibrated until it is refitted, which the server does "
                "by itself once the categories are quiet (or run `nearcat calibrate`)"
            )
            return cls(extra={REFIT_DUE: True, "group_by": data.get("extra", {}).get("group_by")})
        known = {f: data[f] for f in cls.__dataclass_fields__ if f in data}
        known["bound"] = Bound(**known.get("bound", {}))
        if known.get("head") is not None:
            known["head"] = ConfidenceHead.from_json(known["head"])
        return cls(**known)


def temper(scores: Sequence[CategoryScore], temperature: float) -> list[CategoryScore]:
    """share ** (1 / temperature), renormalised; T > 1 flattens, T < 1 sharpens."""
    if not scores:
        return []
    logs = np.log(np.maximum([s.score for s in scores], 1e-300)) / temperature
    weights = np.exp(logs - logs.max())
    weights /= weights.sum()
    return [CategoryScore(s.category, float(w)) for s, w in zip(scores, weights, strict=True)]


def least_log_loss(
    confidences_at: Callable[[float], np.ndarray], correct: np.ndarray
) -> tuple[float, float]:
    """(temperature, log-loss): the temperature whose confidences best predict whether each
    answer is right."""
    best_t, best_loss = 1.0, math.inf
    for t in _TEMPERATURES:
        p = np.clip(confidences_at(float(t)), _EPSILON, 1 - _EPSILON)
        loss = -float(np.mean(correct * np.log(p) + (1 - correct) * np.log(1 - p)))
        if loss < best_loss:
            best_t, best_loss = float(t), loss
    return best_t, best_loss


def _top(examples: Sequence[LabelledExample], temperature: float) -> np.ndarray:
    return np.array([temper(e.shares, temperature)[0].score if e.shares else 0.0 for e in examples])


@dataclass(frozen=True)
class Earned:
    """The auto-accept threshold the evidence supports (None: none), with the bound reached,
    the share of in-catalogue examples above it, and otherwise why not."""

    threshold: float | None
    precision_bound: float | None
    accepted_share: float
    reason: str = ""
    labelled_needed: int = 0


def earned_threshold(
    confidences: Sequence[float],
    correct: Sequence[bool],
    open_set: Sequence[bool],
    bound: Bound,
) -> Earned:
    """The lowest confidence whose accepted answers (at or above it) have a precision lower
    bound of at least `bound.precision`; open-set examples count as errors, weighted so they
    make up `bound.open_set_share` of the traffic."""
    conf = np.asarray(confidences, dtype=np.float64)
    right = np.asarray(correct, dtype=np.float64)
    outside = np.asarray(open_set, dtype=bool)
    inside = int((~outside).sum())
    open_weight = 0.0
    if outside.any() and bound.open_set_share > 0:
        open_weight = bound.open_set_share / (1 - bound.open_set_share) * inside / outside.sum()
    weight = np.where(outside, open_weight, 1.0)
    order = np.argsort(-conf, kind="stable")
    total = np.cumsum(weight[order])
    hits = np.cumsum((weight * right)[order])
    accepted = np.cumsum((~outside)[order])
    best: tuple[float, float, float] | None = None
    for i in range(len(order)):
        if i + 1 < len(order) and conf[order[i + 1]] == conf[order[i]]:
            continue  # ties: a threshold takes all of them or none
        lower = precision_lower_bound(hits[i], total[i], bound.level)
        if lower >= bound.precision:
            best = (float(conf[order[i]]), lower, float(accepted[i]) / max(inside, 1))
    if best is not None:
        return Earned(*best)
    run = bound.needed_run()
    likely = float(np.mean(conf[~outside] >= bound.precision)) if inside else 0.0
    needed = math.ceil(run / likely) if likely > 0 else 0
    reason = (
        f"{inside} held-out examples do not prove {bound.precision:.0%} precision at "
        f"{bound.level:.0%} confidence for any band: at least {run} answers in a row, all "
        "right, are needed"
        + (
            f"; at the {likely:.0%} of answers that look that sure, about {needed} labelled photos"
            if needed
            else ""
        )
    )
    return Earned(None, None, 0.0, reason, needed)


def fit_calibration(
    examples: Sequence[LabelledExample],
    source: str,
    bound: Bound | None = None,
    head: ConfidenceHead | None = None,
) -> Calibration:
    """The temperature that best predicts whether the answer is right (least log-loss, on the
    in-catalogue examples), the threshold those and the open-set examples earn, and the
    unknown threshold from the in-catalogue examples' nearest similarities."""
    bound = bound or Bound()
    inside = [e for e in examples if not e.open_set]
    if len(inside) < MIN_EXAMPLES:
        raise ValueError(
            f"{len(inside)} held-out examples are too few to calibrate on; "
            f"at least {MIN_EXAMPLES} are needed"
        )
    correct = np.array([e.correct for e in inside], dtype=np.float64)
    best_t, best_loss = least_log_loss(lambda t: _top(inside, t), correct)
    earned = earned_threshold(
        _top(examples, best_t).tolist(),
        [e.correct for e in examples],
        [e.open_set for e in examples],
        bound,
    )
    nearest = np.array([e.nearest_similarity for e in inside])
    right = correct.astype(bool).tolist()
    return Calibration(
        temperature=best_t,
        unknown_below=float(np.quantile(nearest, UNKNOWN_QUANTILE)),
        auto_accept_at=earned.threshold,
        bound=bound,
        precision_bound=earned.precision_bound,
        accepted_share=earned.accepted_share,
        reason=earned.reason,
        labelled_needed=earned.labelled_needed,
        examples=len(inside),
        ece_before=ece(_top(inside, 1.0).tolist(), right),
        ece_after=ece(_top(inside, best_t).tolist(), right),
        source=source,
        fitted_at_ms=int(time.time() * 1000),
        extra={"log_loss": best_loss, "accuracy": float(correct.mean())},
        head=head,
    )
