"""Decision bands: auto-accept from the threshold the calibration earned (or a category's
own), flag and review from the configured thresholds, unknown when far from everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.calibration import Bound, Calibration
from indexer.decision import Decision, DecisionPolicy, Thresholds

EARNED = Calibration(examples=500, auto_accept_at=0.95, unknown_below=-1.0)


@pytest.mark.parametrize(
    ("probability", "expected"),
    [
        (0.99, Decision.AUTO_ACCEPT),
        (0.95, Decision.AUTO_ACCEPT),
        (0.94, Decision.FLAG),
        (0.80, Decision.FLAG),
        (0.79, Decision.REVIEW),
        (0.10, Decision.REVIEW),
    ],
)
def test_default_bands(probability: float, expected: Decision) -> None:
    assert DecisionPolicy().decide("any", probability, 0.9, EARNED) == expected


def test_no_earned_threshold_auto_accepts_nothing() -> None:
    unearned = Calibration(examples=500, auto_accept_at=None)
    assert DecisionPolicy().decide("any", 1.0, 0.9, unearned) == Decision.FLAG
    assert DecisionPolicy().auto_accept_at("any", unearned) is None


def test_far_from_every_reference_is_unknown_however_sure() -> None:
    policy = DecisionPolicy()
    far = Calibration(examples=500, auto_accept_at=0.95, unknown_below=0.3)
    assert policy.decide("any", 0.99, 0.2, far) == Decision.UNKNOWN
    assert policy.decide("any", 0.99, 0.3, far) == Decision.AUTO_ACCEPT


def test_before_a_calibration_nothing_is_auto_accepted_unless_told_to() -> None:
    uncalibrated = Calibration(bound=Bound(precision=0.98))
    assert DecisionPolicy().decide("any", 1.0, 0.9, uncalibrated) == Decision.FLAG
    assert DecisionPolicy().decide("any", 0.5, 0.9, uncalibrated) == Decision.REVIEW
    trusting = DecisionPolicy(auto_accept_uncalibrated=True)
    assert trusting.decide("any", 1.0, 0.9, uncalibrated) == Decision.AUTO_ACCEPT
    assert trusting.decide("any", 0.97, 0.9, uncalibrated) == Decision.FLAG  # under 0.98
    # a category's own threshold is still capped at flag without a calibration
    own = DecisionPolicy(per_category={"Shoes": Thresholds(0.7, 0.6)})
    assert own.decide("Shoes", 0.9, 0.9, uncalibrated) == Decision.FLAG


def test_per_category_thresholds_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"Shoes": {"auto_accept": 0.7}, "Hats": {"flag": 0.5}}))
    policy = DecisionPolicy.load(Thresholds(flag=0.6), path)
    assert policy.decide("Shoes", 0.75, 1, EARNED) == Decision.AUTO_ACCEPT  # its own
    assert policy.decide("Other", 0.75, 1, EARNED) == Decision.FLAG
    assert policy.decide("Other", 0.96, 1, EARNED) == Decision.AUTO_ACCEPT  # earned
    assert policy.decide("Hats", 0.55, 1, EARNED) == Decision.FLAG
    assert policy.decide("Other", 0.55, 1, EARNED) == Decision.REVIEW
    assert policy.thresholds("Shoes") == Thresholds(0.7, 0.6)


def test_a_thresholds_file_names_categories_as_the_catalogue_does(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"Cafe\u0301": {"flag": 0.5}}))  # decomposed
    policy = DecisionPolicy.load(Thresholds(flag=0.6), path)
    assert policy.thresholds("Caf\u00e9") == Thresholds(flag=0.5)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "cannot read"),
        ("[1, 2]", "expected an object"),
        ('{"Shoes": {"auto": 0.9}}', "unknown keys"),
        ('{"Shoes": {"auto_accept": 0.5, "flag": 0.9}}', "flag <= auto_accept"),
    ],
)
def test_a_bad_thresholds_file_says_what_is_wrong(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        DecisionPolicy.load(Thresholds(), path)
