"""The store stops answering (a paused Valkey: connections accepted, nothing answered).

Unlike a store that is down, a hung one refuses nothing; without timeouts every call held
a server thread until the caller's deadline, and enough of them starved Classify. Now calls
that need the store fail with UNAVAILABLE within about a second and then at once (circuit
breaker), Classify keeps answering from memory meanwhile, and the health service's write
name says NOT_SERVING until the store answers again.
"""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import SERVICE_NAME, WRITE_SERVICE_NAME
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ExternalValkey, ServerProcess, make_image

pytestmark = pytest.mark.integration

UNAVAILABLE_WITHIN_S = 2.0  # the promise: about a second, 2 s with this machine's noise
CONCURRENT_CALLS = 40  # more than the server's 8 threads: a pile-up would starve Classify


def health_of(process: ServerProcess, service: str) -> Any:
    with grpc.insecure_channel(process.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def refused_in(call: Any) -> float:
    """Seconds until call() failed with UNAVAILABLE (it must fail)."""
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as caught:
        call()
    elapsed = time.monotonic() - started
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
    assert "store" in caught.value.details() and "retry" in caught.value.details()
    return elapsed


def test_paused_store_fails_fast_and_classify_goes_on(
    tmp_path: Path, model_artifact: Path, external: ExternalValkey
) -> None:
    process = ServerProcess(
        tmp_path / "data",
        model_artifact,
        ["--redis-url", external.url, "--review-flagged", "true", "--workers", "8"],
    ).start()
    pid = int(redis.Redis(port=external.port).info("server")["process_id"])
    try:
        stub = process.stub()
        for kind in KINDS:
            refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(4)]
            stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs), timeout=60)
        assert health_of(process, WRITE_SERVICE_NAME) == health_pb2.HealthCheckResponse.SERVING

        os.kill(pid, signal.SIGSTOP)
        adding = pb.AddReferencesRequest(
            category="dots", references=[pb.ReferenceImage(image=make_image("dots", 100))]
        )
        calls = {
            "ListCategories": lambda: stub.ListCategories(pb.ListCategoriesRequest(), timeout=30),
            "AddReferences": lambda: stub.AddReferences(adding, timeout=30),
            "GetStatus": lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=30),
        }
        first = {name: refused_in(call) for name, call in calls.items()}
        assert max(first.values()) <= UNAVAILABLE_WITHIN_S, first

        # Many at once, with Classify among them: none waits on the store.
        with ThreadPoolExecutor(CONCURRENT_CALLS) as pool:
            storm = [
                pool.submit(refused_in, calls[name])
                for name in list(calls) * (CONCURRENT_CALLS // len(calls))
            ]
            started = time.monotonic()
            answer = stub.Classify(pb.ClassifyRequest(image=make_image("stripes", 1)), timeout=30)
            classify_s = time.monotonic() - started
            waits = [f.result() for f in storm]
        assert max(waits) <= UNAVAILABLE_WITHIN_S, max(waits)
        assert classify_s <= UNAVAILABLE_WITHIN_S, classify_s
        assert answer.classification.categories[0].category == "stripes"
        # Meant for a person, but the queue is in the store: the caller is told so.
        assert answer.review_id == "" and "store is unreachable" in answer.review_unqueued

        assert health_of(process, WRITE_SERVICE_NAME) == health_pb2.HealthCheckResponse.NOT_SERVING
        for service in ("", SERVICE_NAME):  # it still classifies
            assert health_of(process, service) == health_pb2.HealthCheckResponse.SERVING

        os.kill(pid, signal.SIGCONT)
        deadline = time.monotonic() + 10
        while health_of(process, WRITE_SERVICE_NAME) != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "write health did not come back"
            time.sleep(0.1)
        assert stub.AddReferences(adding, timeout=30).added == 1
        queued = stub.Classify(pb.ClassifyRequest(image=make_image("stripes", 2)), timeout=30)
        assert queued.review_id and not queued.review_unqueued
    finally:
        os.kill(pid, signal.SIGCONT)
        assert process.stop() == 0, process.log()
