"""Drift: the population stability index, recomputed by hand on small histograms."""

from __future__ import annotations

import math

import pytest

from server.drift import EMPTY_BIN_SHARE, DriftMonitor, confidence_bin, psi


def test_psi_matches_a_hand_computation() -> None:
    baseline = {"a": 50, "b": 50}
    recent = {"a": 80, "b": 20}
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(baseline, recent) == pytest.approx(expected)
    assert psi(baseline, baseline) == 0.0


def test_psi_of_a_category_missing_on_one_side_stays_finite() -> None:
    value = psi({"a": 10}, {"a": 5, "new": 5})
    r, b = 0.5, EMPTY_BIN_SHARE
    assert value == pytest.approx((0.5 - 1.0) * math.log(0.5 / 1.0) + (r - b) * math.log(r / b))
    assert value > 0.25  # half the traffic in a never-seen category is a large shift


def test_confidence_bins_cover_zero_to_one() -> None:
    assert [confidence_bin(c) for c in (0.0, 0.05, 0.5, 0.999, 1.0)] == [
        "0.0",
        "0.0",
        "0.5",
        "0.9",
        "0.9",
    ]


def test_monitor_fills_the_baseline_first_then_slides_the_recent_window() -> None:
    monitor = DriftMonitor(window=4)
    monitor.observe_many([("a", 0.9)] * 4)
    report = monitor.report()
    assert (report.baseline_size, report.recent_size, report.ready) == (4, 0, False)
    monitor.observe_many([("a", 0.9)] * 4)
    report = monitor.report()
    assert report.ready and report.category_psi == 0.0 and report.confidence_psi == 0.0
    monitor.observe_many([("b", 0.3)] * 4)  # the recent window now holds only these
    report = monitor.report()
    assert report.recent_size == 4
    assert report.category_psi == pytest.approx(psi({"a": 4}, {"b": 4}))
    assert report.confidence_psi == pytest.approx(psi({"0.9": 4}, {"0.3": 4}))
