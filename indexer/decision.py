"""What to do with a prediction: accept it, accept and flag it, or send it to a person.

Bands on the answer's calibrated probability: auto-accept from the threshold the labelled
evidence earned (indexer.calibration; none earned, none accepted), flag from `flag` (0.80),
else review; per-category overrides from a file; `unknown` when the image is farther from
every reference than the catalogue's own images are (the open-set threshold fitted with the
calibration).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.names import normalise_name

if TYPE_CHECKING:
    from indexer.calibration import Calibration


class Decision(StrEnum):
    AUTO_ACCEPT = "auto_accept"
    FLAG = "flag"  # accept, but show it to someone later
    REVIEW = "review"  # a person decides, from the top-3
    UNKNOWN = "unknown"  # like nothing in the catalogue


@dataclass(frozen=True)
class Thresholds:
    """A category's own bands: the probability from which it is auto-accepted (None: the
    calibration's earned threshold) and from which it is accepted and flagged."""

    auto_accept: float | None = None
    flag: float = 0.80

    def __post_init__(self) -> None:
        top = 1.0 if self.auto_accept is None else self.auto_accept
        if not 0.0 <= self.flag <= top <= 1.0:
            raise ValueError(
                f"thresholds must satisfy 0 <= flag <= auto_accept <= 1; "
                f"got flag={self.flag}, auto_accept={self.auto_accept}"
            )


@dataclass(frozen=True)
class DecisionPolicy:
    """The default bands with per-category overrides.

    Before a calibration is fitted, scores are raw vote shares, not probabilities (in a
    catalogue of one category every image scores 1.0), so nothing is auto-accepted: such an
    answer is at most flagged, unless `auto_accept_uncalibrated` says to trust shares at or
    above the calibration's target precision. While `auto_accept_suspended` (the audit
    guard: reviewed audits say the band is not holding), nothing is auto-accepted at all.
    """

    default: Thresholds = field(default_factory=Thresholds)
    per_category: Mapping[str, Thresholds] = field(default_factory=dict)
    auto_accept_uncalibrated: bool = False
    auto_accept_suspended: bool = False

    def thresholds(self, category: str) -> Thresholds:
        return self.per_category.get(category, self.default)

    def auto_accept_at(self, category: str, calibration: Calibration) -> float | None:
        """The probability from which `category` is auto-accepted; None: never."""
        if self.auto_accept_suspended:
            return None
        own = self.thresholds(category).auto_accept
        if own is not None:
            return own
        if not calibration.fitted:
            return calibration.bound.precision if self.auto_accept_uncalibrated else None
        return calibration.auto_accept_at

    def decide(
        self, category: str, probability: float, nearest_similarity: float, calibration: Calibration
    ) -> Decision:
        if nearest_similarity < calibration.unknown_below:
            return Decision.UNKNOWN
        auto = self.auto_accept_at(category, calibration)
        if auto is not None and probability >= auto:
            if calibration.fitted or self.auto_accept_uncalibrated:
                return Decision.AUTO_ACCEPT
            return Decision.FLAG
        if probability >= self.thresholds(category).flag:
            return Decision.FLAG
        return Decision.REVIEW

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
            auto = values.get("auto_accept", default.auto_accept)
            per_category[normalise_name(name)] = Thresholds(
                auto_accept=None if auto is None else float(auto),
                flag=float(values.get("flag", default.flag)),
            )
        return cls(default, per_category, auto_accept_uncalibrated)
