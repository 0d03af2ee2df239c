"""The Calibration message says what the fit earned: the threshold and its bound, or why none."""

from __future__ import annotations

import pytest

from indexer.calibration import Bound, Calibration
from server.servicer import calibration_message


def test_an_earned_threshold_is_reported_with_its_bound() -> None:
    fitted = Calibration(
        examples=400,
        auto_accept_at=0.93,
        bound=Bound(0.98, 0.9),
        precision_bound=0.981,
        accepted_share=0.36,
        source="400 labelled photos",
        extra={"accuracy": 0.8},
    )
    message = calibration_message(fitted, head_current=True)
    assert message.has_auto_accept and message.auto_accept_threshold == pytest.approx(0.93)
    assert message.target_precision == pytest.approx(0.98)
    assert message.bound_level == pytest.approx(0.9)
    assert message.precision_bound == pytest.approx(0.981)
    assert message.accepted_share == pytest.approx(0.36)
    assert message.accuracy == pytest.approx(0.8) and message.source == "400 labelled photos"


def test_no_threshold_says_why_and_how_many_photos_would_help() -> None:
    fitted = Calibration(examples=60, reason="too few", labelled_needed=420)
    message = calibration_message(fitted, head_current=False)
    assert not message.has_auto_accept
    assert message.no_auto_accept_reason == "too few" and message.labelled_needed == 420
