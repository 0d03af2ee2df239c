"""Metrics of one server, prediction extraction from answers, JSON log lines."""

from __future__ import annotations

import json
import logging

from prometheus_client import generate_latest

from server.drift import DriftMonitor
from server.logging_setup import JsonFormatter, TextFormatter
from server.metrics import Metrics, decision_of, predictions_in
from server.proto.nearcat.v1 import nearcat_pb2 as pb


def _classification(category: str, score: float) -> pb.Classification:
    return pb.Classification(categories=[pb.CategoryScore(category=category, score=score)])


def test_predictions_are_read_from_classify_answers() -> None:
    single = pb.ClassifyResponse(classification=_classification("Shoes", 0.9))
    batch = pb.ClassifyBatchResponse(
        results=[
            pb.ClassifyBatchItem(classification=_classification("Hats", 0.4)),
            pb.ClassifyBatchItem(error=pb.ItemError(code="INVALID_ARGUMENT", message="x")),
        ]
    )
    assert predictions_in(single) == [("Shoes", single.classification.categories[0].score, None)]
    assert [p[0] for p in predictions_in(batch)] == ["Hats"]
    assert predictions_in(pb.GetStatusResponse()) == []
    assert decision_of(single.classification) is None  # unspecified
    review = pb.Classification(decision=pb.REVIEW)
    assert decision_of(review) == "review"


def test_each_metrics_object_has_its_own_registry() -> None:
    first, second = Metrics(DriftMonitor(2)), Metrics()
    first.record_prediction("Shoes", 0.97, "auto_accept")
    first.observe_call("Classify", "OK", 0.01)
    first.observe_batch(8)
    text = generate_latest(first.registry).decode()
    assert 'nearcat_predictions_total{category="Shoes"} 1.0' in text
    assert 'nearcat_decisions_total{decision="auto_accept"} 1.0' in text
    assert 'nearcat_rpc_calls_total{code="OK",method="Classify"} 1.0' in text
    assert "nearcat_model_batch_size_sum 8.0" in text
    assert "nearcat_drift_ready 0.0" in text
    assert "Shoes" not in generate_latest(second.registry).decode()


def test_json_log_lines_carry_extra_fields_and_exceptions() -> None:
    record = logging.makeLogRecord(
        {"name": "nearcat.access", "levelname": "INFO", "msg": "rpc %s", "args": ("Classify",)}
    )
    record.request_id = "abc"
    line = json.loads(JsonFormatter().format(record))
    assert line["msg"] == "rpc Classify" and line["request_id"] == "abc"
    assert line["level"] == "info" and line["logger"] == "nearcat.access" and "ts" in line
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    assert "ValueError: boom" in json.loads(JsonFormatter().format(record))["exc"]


def test_text_log_lines_carry_extra_fields_too() -> None:
    record = logging.makeLogRecord(
        {"name": "nearcat.access", "levelname": "INFO", "msg": "rpc %s", "args": ("Classify",)}
    )
    record.request_id, record.duration_ms = "abc", 12.5
    line = TextFormatter().format(record)
    assert line.endswith("nearcat.access: rpc Classify  request_id=abc duration_ms=12.5")
