"""Issue 6, must show 3: a minute of concurrent AddReferences and Classify from several
clients: zero errors, and afterwards every category holds exactly the references that were
acknowledged, in the store and in the index.

The adders share one category and add overlapping images to it, so concurrent transactions
on the same keys are serialised by the store (WATCH) and duplicates are reported, not stored
twice. NEARCAT_SOAK_SECONDS changes the duration (default 60).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

SECONDS = float(os.environ.get("NEARCAT_SOAK_SECONDS", "60"))
ADDERS = 3
CLASSIFIERS = 3
SHARED = "shared"
IMAGES_PER_CALL = 2


def test_a_minute_of_concurrent_adds_and_classifies(tmp_path: Path, model_artifact: Path) -> None:
    process = ServerProcess(tmp_path / "data", model_artifact).start()
    try:
        setup = process.stub()
        for kind in KINDS:
            refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(3)]
            setup.AddCategory(pb.AddCategoryRequest(name=kind, references=refs), timeout=60)
        setup.AddCategory(pb.AddCategoryRequest(name=SHARED))
        for adder in range(ADDERS):
            setup.AddCategory(pb.AddCategoryRequest(name=f"own-{adder}"))

        stop_at = time.monotonic() + SECONDS
        errors: list[str] = []
        acknowledged: dict[str, set[str]] = {SHARED: set()}
        counts = {"adds": 0, "classifies": 0, "duplicates": 0}
        lock = threading.Lock()

        def client() -> pb_grpc.NearcatStub:
            return pb_grpc.NearcatStub(grpc.insecure_channel(process.address))

        def adder(number: int) -> None:
            stub, own = client(), f"own-{number}"
            with lock:
                acknowledged[own] = set()
            call = 0
            while time.monotonic() < stop_at:
                # Own category: images no one else sends. Shared: seeds every adder walks
                # through in the same order, so they collide.
                category = own if call % 2 == 0 else SHARED
                seed = 10_000 * (number + 1) + call if category == own else 1000 + call // 2
                kind = KINDS[call % len(KINDS)]
                images = [
                    make_image(kind, seed * IMAGES_PER_CALL + i) for i in range(IMAGES_PER_CALL)
                ]
                request = pb.AddReferencesRequest(
                    category=category, references=[pb.ReferenceImage(image=i) for i in images]
                )
                try:
                    response = stub.AddReferences(request, timeout=60)
                except grpc.RpcError as exc:
                    with lock:
                        errors.append(f"AddReferences {category}: {exc.code()} {exc.details()}")
                    return
                with lock:
                    acknowledged[category].update(r.reference_id for r in response.references)
                    counts["adds"] += 1
                    counts["duplicates"] += response.duplicates
                call += 1

        def classifier(number: int) -> None:
            stub = client()
            seed = 0
            while time.monotonic() < stop_at:
                images = [make_image(KINDS[(seed + i) % 3], 50_000 + seed + i) for i in range(3)]
                seed += 3
                try:
                    if number % 2:
                        stub.Classify(pb.ClassifyRequest(image=images[0]), timeout=60)
                    else:
                        answer = stub.ClassifyBatch(
                            pb.ClassifyBatchRequest(images=images), timeout=60
                        )
                        bad = [r.error for r in answer.results if r.HasField("error")]
                        assert not bad, bad
                except (grpc.RpcError, AssertionError) as exc:
                    with lock:
                        errors.append(f"classify: {exc}")
                    return
                with lock:
                    counts["classifies"] += 1

        threads = [threading.Thread(target=adder, args=(n,)) for n in range(ADDERS)]
        threads += [threading.Thread(target=classifier, args=(n,)) for n in range(CLASSIFIERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=SECONDS + 120)
        assert not any(t.is_alive() for t in threads), "a client hung"
        assert errors == []
        assert counts["adds"] >= ADDERS and counts["classifies"] >= CLASSIFIERS, counts
        assert counts["duplicates"] > 0, "the adders never collided: the test proves less"

        seeded = 3 * len(KINDS)
        status = setup.GetStatus(pb.GetStatusRequest())
        assert status.index_size == seeded + sum(len(ids) for ids in acknowledged.values())
        for category, ids in acknowledged.items():
            got = setup.GetCategory(pb.GetCategoryRequest(name=category, include_references=True))
            assert got.category.reference_count == len(ids), category
            assert {r.id for r in got.references} == ids, category
        # The index has them too: an image added to the shared category finds itself.
        probe = make_image(KINDS[1], 1000 * IMAGES_PER_CALL)  # the shared category's call 1
        nearest = setup.Classify(pb.ClassifyRequest(image=probe), timeout=60)
        assert nearest.classification.neighbors[0].similarity == pytest.approx(1.0, abs=1e-3)
        assert nearest.classification.neighbors[0].reference_id in acknowledged[SHARED]
    finally:
        assert process.stop() == 0, process.log()
