"""Decision bands follow the configured thresholds, globally and per category."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from indexer.decision import Decision, DecisionPolicy, Thresholds


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
    assert DecisionPolicy().decide("any", probability, 0.9, unknown_below=-1.0) == expected


def test_far_from_every_reference_is_unknown_however_sure() -> None:
    policy = DecisionPolicy()
    assert policy.decide("any", 0.99, 0.2, unknown_below=0.3) == Decision.UNKNOWN
    assert policy.decide("any", 0.99, 0.3, unknown_below=0.3) == Decision.AUTO_ACCEPT


def test_before_a_calibration_nothing_is_auto_accepted_unless_told_to() -> None:
    uncalibrated = {"nearest_similarity": 0.9, "unknown_below": -1.0, "calibrated": False}
    assert DecisionPolicy().decide("any", 1.0, **uncalibrated) == Decision.FLAG
    assert DecisionPolicy().decide("any", 0.5, **uncalibrated) == Decision.REVIEW
    trusting = DecisionPolicy(auto_accept_uncalibrated=True)
    assert trusting.decide("any", 1.0, **uncalibrated) == Decision.AUTO_ACCEPT


def test_per_category_thresholds_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "thresholds.json"
    path.write_text(json.dumps({"Shoes": {"auto_accept": 0.7}, "Hats": {"flag": 0.5}}))
    policy = DecisionPolicy.load(Thresholds(0.9, 0.6), path)
    assert policy.decide("Shoes", 0.75, 1, -1) == Decision.AUTO_ACCEPT
    assert policy.decide("Other", 0.75, 1, -1) == Decision.FLAG
    assert policy.decide("Hats", 0.55, 1, -1) == Decision.FLAG
    assert policy.decide("Other", 0.55, 1, -1) == Decision.REVIEW
    assert policy.thresholds("Shoes") == Thresholds(0.7, 0.6)


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
