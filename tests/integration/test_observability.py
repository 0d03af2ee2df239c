"""Observability end to end: /metrics, request ids, JSON access log, drift in GetStatus."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

DRIFT_WINDOW = 6


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("observed") / "data",
        model_artifact,
        ["--metrics-port", "0", "--drift-window", str(DRIFT_WINDOW)],
    ).start()
    stub = process.stub()
    for kind in KINDS:
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(4)]
        stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs), timeout=60)
    yield process
    assert process.stop() == 0, process.log()


def scrape(server: ServerProcess) -> str:
    match = re.search(r"metrics on (http://\S+)", server.log())
    assert match, server.log()
    with urllib.request.urlopen(match.group(1), timeout=10) as answer:
        return str(answer.read().decode())


def value(metrics: str, sample: str) -> float:
    """A sample's value; 0 when absent (a labelled counter appears at its first count)."""
    match = re.search(rf"^{re.escape(sample)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def access_lines(server: ServerProcess) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line["logger"] == "nearcat.access"]


def test_request_ids_come_back_and_are_logged(server: ServerProcess) -> None:
    stub = server.stub()
    _, call = stub.GetStatus.with_call(
        pb.GetStatusRequest(), metadata=[("x-request-id", "order-42.a")]
    )
    assert ("x-request-id", "order-42.a") in call.initial_metadata()
    _, call = stub.GetStatus.with_call(pb.GetStatusRequest())
    generated = dict(call.initial_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    with pytest.raises(grpc.RpcError) as caught:
        stub.Classify(pb.ClassifyRequest(image=b"junk"), metadata=[("x-request-id", "bad one!")])
    failed_id = dict(caught.value.initial_metadata())["x-request-id"]
    assert failed_id != "bad one!"  # not a sane id: replaced
    by_id = {line["request_id"]: line for line in access_lines(server)}
    assert by_id["order-42.a"]["method"] == "GetStatus" and by_id["order-42.a"]["code"] == "OK"
    assert isinstance(by_id[generated]["duration_ms"], float)
    failed = by_id[failed_id]
    assert failed["code"] == "INVALID_ARGUMENT" and "image 0" in str(failed["error"])


def test_metrics_count_calls_batches_predictions_and_the_index(server: ServerProcess) -> None:
    stub = server.stub()
    before = scrape(server)
    for seed in range(3):
        stub.Classify(pb.ClassifyRequest(image=make_image("dots", 100 + seed)), timeout=30)
    with pytest.raises(grpc.RpcError):
        stub.Classify(pb.ClassifyRequest(image=b"junk"))
    after = scrape(server)
    calls = 'nearcat_rpc_calls_total{code="OK",method="Classify"}'
    assert value(after, calls) - value(before, calls) == 3
    assert value(after, 'nearcat_rpc_calls_total{code="INVALID_ARGUMENT",method="Classify"}') >= 1
    assert value(after, 'nearcat_rpc_duration_seconds_count{method="Classify"}') >= 4
    assert value(after, "nearcat_model_batch_size_count") > value(
        before, "nearcat_model_batch_size_count"
    )
    assert (
        value(after, "nearcat_prediction_confidence_count")
        - value(before, "nearcat_prediction_confidence_count")
        == 3
    )
    predicted = sum(
        value(after, f'nearcat_predictions_total{{category="{k}"}}')
        for k in KINDS
        if f'category="{k}"' in after
    )
    assert predicted >= 3
    status = stub.GetStatus(pb.GetStatusRequest())
    assert value(after, f'nearcat_index_size{{model_version="{status.model_version}"}}') == (
        status.index_size
    )
    assert "\nnearcat_model_queue_depth 0.0\n" in after


def test_drift_shows_in_status_and_metrics(server: ServerProcess) -> None:
    stub: pb_grpc.NearcatStub = server.stub()
    status = stub.GetStatus(pb.GetStatusRequest())
    baseline_left = DRIFT_WINDOW - status.drift.baseline_size
    for seed in range(max(baseline_left, 0)):  # the baseline: mixed kinds
        kind = KINDS[seed % len(KINDS)]
        stub.Classify(pb.ClassifyRequest(image=make_image(kind, 200 + seed)), timeout=30)
    for seed in range(DRIFT_WINDOW):  # then only stripes
        stub.Classify(pb.ClassifyRequest(image=make_image("stripes", 300 + seed)), timeout=30)
    drift = stub.GetStatus(pb.GetStatusRequest()).drift
    assert drift.window == DRIFT_WINDOW and drift.ready
    assert drift.category_psi > 0.25, drift  # a large shift: one kind took over
    metrics = scrape(server)
    assert value(metrics, "nearcat_drift_ready") == 1
    assert value(metrics, 'nearcat_drift_psi{distribution="category"}') == pytest.approx(
        drift.category_psi
    )
