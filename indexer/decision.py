"""What to do with a prediction: accept it, accept and flag it, or send it to a person.

Bands on the calibrated probability of the top category (defaults from the issue that asked
for them: auto-accept at 0.95, flag from 0.80), configurable globally and per category, plus
`unknown` when the image is farther from every reference than the catalogue's own images are
(the open-set threshold fitted with the calibration).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path


class Decision(StrEnum):
    AUTO_ACCEPT = "auto_accept"
    FLAG = "flag"  # accept, but show it to someone later
    REVIEW = "review"  # a person decides, from the top-3
    UNKNOWN = "unknown"  # like nothing in the catalogue


@dataclass(frozen=True)
class Thresholds:
    """Probability at or above which a prediction is auto-accepted, or accepted and flagged."""

    auto_accept: float = 0.95
    flag: float = 0.80

    def __post_init__(self) -> None:
        if not 0.0 <= self.flag <= self.auto_accept <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= flag <= auto_accept <= 1; "
                f"got flag={self.flag}, auto_accept={self.auto_accept}"
            )

    def band(self, probability: float) -> Decision:
        if probability >= self.auto_accept:
            return Decision.AUTO_ACCEPT
        if probability >= self.flag:
            return Decision.FLAG
        return Decision.REVIEW


@dataclass(frozen=True)
class DecisionPolicy:
    """Global thresholds with per-category overrides.

    Before a calibration is fitted, scores are raw vote shares, not probabilities (in a
    catalogue of one category every image scores 1.0), so nothing is auto-accepted: such an
    answer is at most flagged, unless `auto_accept_uncalibrated` says to trust them.
    """

    default: Thresholds = field(default_factory=Thresholds)
    per_category: Mapping[str, Thresholds] = field(default_factory=dict)
    auto_accept_uncalibrated: bool = False

    def thresholds(self, category: str) -> Thresholds:
        return self.per_category.get(category, self.default)

    def decide(
        self,
        category: str,
        probability: float,
        nearest_similarity: float,
        unknown_below: float,
        calibrated: bool = True,
    ) -> Decision:
        if nearest_similarity < unknown_below:
            return Decision.UNKNOWN
        decision = self.thresholds(category).band(probability)
        if decision == Decision.AUTO_ACCEPT and not (calibrated or self.auto_accept_uncalibrated):
            return Decision.FLAG
        return decision

    @classmethod
    def load(
        cls, default: Thresholds, path: Path | None, auto_accept_uncalibrated: bool = False
    ) -> DecisionPolicy:
        """`default`, overridden per category by a JSON file of the form
        {"Shoes": {"auto_accept": 0.9, "flag": 0.7}, ...} (a missing key keeps the default)."""
        if path is None:
            return cls(default, auto_accept_uncalibrated=auto_accept_uncalibrated)
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read the thresholds file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected an object mapping category names to thresholds")
        per_category = {}
        for name, values in data.items():
            unknown = set(values) - {"auto_accept", "flag"} if isinstance(values, dict) else None
            if unknown is None or unknown:
                raise ValueError(
                    f"{path}: {name!r} must map to {{'auto_accept': p, 'flag': p}}"
                    + (f"; unknown keys {sorted(unknown)}" if unknown else "")
                )
            per_category[name] = Thresholds(
                auto_accept=float(values.get("auto_accept", default.auto_accept)),
                flag=float(values.get("flag", default.flag)),
            )
        return cls(default, per_category, auto_accept_uncalibrated)
