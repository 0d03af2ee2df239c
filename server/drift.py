"""Drift signal: has what the service predicts moved away from what it predicted before?

The population stability index (PSI) compares two distributions of the same quantity:
``sum((recent - baseline) * ln(recent / baseline))`` over the bins. nearcat compares the
predicted top category and the top score of the most recent predictions against a baseline:
the first `window` predictions this process made. Common reading: below 0.1 stable, 0.1-0.25
a moderate shift worth a look, above 0.25 a large shift (new kinds of photos, a broken
upstream resize, a category that swallows others).
"""

from __future__ import annotations

import math
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Share given to a bin that is empty on one side, so the logarithm stays finite.
EMPTY_BIN_SHARE = 1e-4
CONFIDENCE_BINS = 10


def psi(baseline: Mapping[str, int], recent: Mapping[str, int]) -> float:
    """Population stability index of two histograms over the same (union of) bins."""
    base_total = sum(baseline.values())
    recent_total = sum(recent.values())
    if base_total == 0 or recent_total == 0:
        return 0.0
    total = 0.0
    for key in set(baseline) | set(recent):
        b = max(baseline.get(key, 0) / base_total, EMPTY_BIN_SHARE)
        r = max(recent.get(key, 0) / recent_total, EMPTY_BIN_SHARE)
        total += (r - b) * math.log(r / b)
    return total


def confidence_bin(confidence: float) -> str:
    """Ten equal bins over [0, 1], named by their lower edge."""
    index = min(max(int(confidence * CONFIDENCE_BINS), 0), CONFIDENCE_BINS - 1)
    return f"{index / CONFIDENCE_BINS:.1f}"


@dataclass(frozen=True)
class DriftReport:
    baseline_size: int
    recent_size: int
    window: int
    category_psi: float
    confidence_psi: float

    @property
    def ready(self) -> bool:
        """Both windows are full, so the indexes mean something."""
        return self.baseline_size >= self.window and self.recent_size >= self.window


class DriftMonitor:
    """Keeps the baseline window and a sliding recent window of predictions; thread-safe."""

    def __init__(self, window: int = 1000) -> None:
        if window < 1:
            raise ValueError("the drift window needs at least one prediction")
        self.window = window
        self._lock = threading.Lock()
        self._baseline_categories: Counter[str] = Counter()
        self._baseline_confidence: Counter[str] = Counter()
        self._baseline_size = 0
        self._recent: deque[tuple[str, str]] = deque(maxlen=window)

    def observe(self, category: str, confidence: float) -> None:
        item = (category, confidence_bin(confidence))
        with self._lock:
            if self._baseline_size < self.window:
                self._baseline_categories[item[0]] += 1
                self._baseline_confidence[item[1]] += 1
                self._baseline_size += 1
            else:
                self._recent.append(item)

    def observe_many(self, predictions: Iterable[tuple[str, float]]) -> None:
        for category, confidence in predictions:
            self.observe(category, confidence)

    def report(self) -> DriftReport:
        with self._lock:
            recent = list(self._recent)
            baseline_categories = Counter(self._baseline_categories)
            baseline_confidence = Counter(self._baseline_confidence)
            baseline_size = self._baseline_size
        return DriftReport(
            baseline_size=baseline_size,
            recent_size=len(recent),
            window=self.window,
            category_psi=psi(baseline_categories, Counter(c for c, _ in recent)),
            confidence_psi=psi(baseline_confidence, Counter(b for _, b in recent)),
        )
