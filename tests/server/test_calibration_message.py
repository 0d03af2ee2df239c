"""The Calibration message operators read in `nearcat status` and `nearcat calibrate`."""

from __future__ import annotations

from indexer.calibration import Calibration
from server.servicer import _calibration


def test_the_served_and_the_vote_accuracy_are_both_reported() -> None:
    fitted = Calibration(examples=100, extra={"accuracy": 0.8, "vote_accuracy": 0.7})
    message = _calibration(fitted, head_current=True)
    assert (round(message.accuracy, 4), round(message.vote_accuracy, 4)) == (0.8, 0.7)


def test_a_calibration_from_before_the_blend_measured_the_vote_alone() -> None:
    message = _calibration(Calibration(examples=100, extra={"accuracy": 0.7}), head_current=False)
    assert round(message.vote_accuracy, 4) == round(message.accuracy, 4) == 0.7
