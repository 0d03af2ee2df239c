"""The audit arithmetic and the guard's switch, by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from indexer.calibration import Calibration
from indexer.decision import Decision, DecisionPolicy, Thresholds
from server.review import audit_precision


def test_needed_is_the_smallest_all_right_sample_that_clears_the_target() -> None:
    # 0.1 ** (1 / n) >= 0.98  <=>  n >= ln 0.1 / ln 0.98 = 113.97
    assert audit_precision(0, 0, 0.98, 0.9, guard=False).needed == 114
    clear = audit_precision(114, 114, 0.98, 0.9, guard=True)
    assert clear.lower == pytest.approx(0.1 ** (1 / 114)) and not clear.below_target
    assert audit_precision(113, 113, 0.98, 0.9, guard=True).below_target is False  # too few


def test_below_target_once_enough_audits_say_so() -> None:
    bad = audit_precision(200, 190, 0.98, 0.9, guard=False)
    assert bad.precision == pytest.approx(0.95) and bad.lower < 0.95 < bad.upper
    assert bad.below_target and not bad.guard_active
    assert audit_precision(200, 190, 0.98, 0.9, guard=True).guard_active


def test_a_suspended_policy_auto_accepts_nothing() -> None:
    policy = DecisionPolicy(Thresholds(auto_accept=0.9, flag=0.5), auto_accept_uncalibrated=True)
    calibration = Calibration()
    assert policy.decide("Shoes", 0.99, 1.0, calibration) is Decision.AUTO_ACCEPT
    suspended = replace(policy, auto_accept_suspended=True)
    assert suspended.auto_accept_at("Shoes", calibration) is None
    assert suspended.decide("Shoes", 0.99, 1.0, calibration) is Decision.FLAG
