"""Issue 6, must show 2: the store (an external Valkey) stops while nearcat serves.

Calls that need the store fail fast with UNAVAILABLE and a message saying so; classification
keeps answering from the in-memory index; when Valkey is back nearcat recovers by itself (no
restart) and every acknowledged write is there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import WRITE_SERVICE_NAME
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ExternalValkey, ServerProcess, make_image

pytestmark = pytest.mark.integration

# "Fast": far from redis-py's default of ten retries with back-off (tens of seconds).
FAIL_FAST_SECONDS = 2.0
RECOVERY_SECONDS = 30.0


def refused_fast(call: Callable[[], Any]) -> grpc.RpcError:
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < FAIL_FAST_SECONDS, f"took {elapsed:.1f}s to fail"
    return caught.value


def test_valkey_stopped_while_serving(
    tmp_path: Path, model_artifact: Path, external: ExternalValkey
) -> None:
    process = ServerProcess(
        tmp_path / "data",
        model_artifact,
        ["--redis-url", external.url, "--review-flagged", "true"],
    ).start()
    try:
        stub = process.stub()
        acknowledged: dict[str, set[str]] = {}
        for kind in KINDS:
            refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(4)]
            made = stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs), timeout=60)
            acknowledged[kind] = {r.reference_id for r in made.references}

        external.stop()

        new_refs = [pb.ReferenceImage(image=make_image("dots", 100))]
        adding = pb.AddReferencesRequest(category="dots", references=new_refs)
        for name, call in {
            "AddReferences": lambda: stub.AddReferences(adding, timeout=30),
            "ListCategories": lambda: stub.ListCategories(pb.ListCategoriesRequest(), timeout=30),
            "GetStatus": lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=30),
            "DeleteCategory": lambda: stub.DeleteCategory(
                pb.DeleteCategoryRequest(name="dots"), timeout=30
            ),
        }.items():
            error = refused_fast(call)
            assert error.code() == grpc.StatusCode.UNAVAILABLE, (name, error.details())
            assert "store is unreachable" in error.details(), (name, error.details())
            assert "retry" in error.details(), (name, error.details())
        # Classification needs no store: it keeps answering from the index in memory.
        answer = stub.Classify(pb.ClassifyRequest(image=make_image("stripes", 1)), timeout=30)
        assert answer.classification.categories[0].category == "stripes"
        # It would go to review (nothing is auto-accepted uncalibrated), but the queue is in
        # the store: the answer stands, unqueued (logged and counted).
        assert answer.classification.decision != pb.AUTO_ACCEPT and answer.review_id == ""
        assert "store is unreachable" in answer.review_unqueued  # the caller is told
        with grpc.insecure_channel(process.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            writes = check(health_pb2.HealthCheckRequest(service=WRITE_SERVICE_NAME))
            reads = check(health_pb2.HealthCheckRequest(service=""))
        assert writes.status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert reads.status == health_pb2.HealthCheckResponse.SERVING

        external.start()  # same port, same data dir: the append-only file is loaded

        deadline = time.monotonic() + RECOVERY_SECONDS
        while True:
            try:
                listed = stub.ListCategories(pb.ListCategoriesRequest(), timeout=10)
                break
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
                assert time.monotonic() < deadline, "nearcat did not recover by itself"
                time.sleep(0.2)
        assert {c.name: c.reference_count for c in listed.categories} == {
            kind: len(ids) for kind, ids in acknowledged.items()
        }
        for kind, ids in acknowledged.items():
            got = stub.GetCategory(pb.GetCategoryRequest(name=kind, include_references=True))
            assert {r.id for r in got.references} == ids
        added = stub.AddReferences(adding, timeout=60)
        assert added.added == 1
        status = stub.GetStatus(pb.GetStatusRequest())
        assert status.index_size == sum(len(ids) for ids in acknowledged.values()) + 1
        top = stub.Classify(pb.ClassifyRequest(image=make_image("dots", 100)), timeout=30)
        assert top.classification.neighbors[0].reference_id == added.references[0].reference_id
        assert top.review_id  # queued again now that the store is back
    finally:
        assert process.stop() == 0, process.log()
