"""kill -9 while references are being added: no reference without its image, and no image
that nothing will ever delete (every file is recorded by a reference or listed for the
sweep, which the next start runs)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from indexer.blobs import MARKER, DirBlobs
from indexer.embedded import SOCKET_NAME
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import ServerProcess, make_image

pytestmark = pytest.mark.integration

KILL_AFTER_S = (0.8, 1.5, 2.3)  # a few moments, so that some kill lands mid-add


def keep_adding(stub: object, acknowledged: list[str], stop: threading.Event) -> None:
    seed = 1000 * len(acknowledged)
    while not stop.is_set():
        refs = [pb.ReferenceImage(image=make_image("dots", seed + i)) for i in range(3)]
        seed += 3
        try:
            reply = stub.AddReferences(  # type: ignore[attr-defined]
                pb.AddReferencesRequest(category="dots", references=refs), timeout=30
            )
        except grpc.RpcError:
            return  # killed
        acknowledged.extend(r.reference_id for r in reply.references)


def test_kill_9_during_adds_leaves_no_dangling_reference_and_no_lost_bytes(
    tmp_path: Path, model_artifact: Path
) -> None:
    data_dir = tmp_path / "data"
    blobs = DirBlobs(data_dir / "blobs")
    acknowledged: list[str] = []
    process = ServerProcess(data_dir, model_artifact).start()
    process.stub().AddCategory(pb.AddCategoryRequest(name="dots"))
    for delay in KILL_AFTER_S:
        stop = threading.Event()
        adder = threading.Thread(target=keep_adding, args=(process.stub(), acknowledged, stop))
        adder.start()
        time.sleep(delay)
        process.kill()
        stop.set()
        adder.join(timeout=60)
        process = ServerProcess(data_dir, model_artifact).start()
    try:
        stub = process.stub()
        got = stub.GetCategory(pb.GetCategoryRequest(name="dots", include_references=True))
        stored = {r.id for r in got.references}
        assert set(acknowledged) <= stored  # nothing acknowledged was lost
        client = redis.Redis(unix_socket_path=str(data_dir / "valkey" / SOCKET_NAME))
        recorded = {
            i: client.hget(f"nearcat:ref:{i}", "blob").decode()  # type: ignore[union-attr]
            for i in stored
        }
        for reference_id in stored:  # every reference has its image
            image = stub.GetReferenceImage(pb.GetReferenceImageRequest(reference_id=reference_id))
            assert image.image == blobs.get(recorded[reference_id])
        unsure = {k.decode() for k in client.zrange("nearcat:blobs:unsure", 0, -1)}
        on_disk = set(blobs.stored_keys()) - {MARKER}
        untracked = on_disk - set(recorded.values()) - unsure
        assert not untracked, f"orphaned image files nothing will delete: {untracked}"
        client.close()
    finally:
        assert process.stop() == 0, process.log()
