"""Reindex on Ray (`--engine ray`) against a real `nearcat serve`, a real Valkey and a real
local Ray cluster (the test's own, which the server joins by its address, as a server joins
a cluster in production).

- The vectors the Ray workers store are those the model gives in process.
- A server killed (-9) during a Ray reindex resumes it on Ray at its next start, embedding
  only the references still without a vector, then validates and switches; and it still
  stops gracefully after a Ray job (a Ray driver in the server's process would not).

The engine's stop and failure paths are in tests/server/test_ray_engine.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import redis

from embedder import load_artifact
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ServerProcess, make_image, projected_artifact

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'nearcat[ray]'")

pytestmark = pytest.mark.integration

FINISHED = (pb.REINDEX_DONE, pb.REINDEX_FAILED, pb.REINDEX_REFUSED)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A two-CPU Ray cluster on this machine; its address, for the server to join."""
    context = ray.init(
        num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False
    )
    yield context.address_info["gcs_address"]
    ray.shutdown()


@pytest.fixture(scope="module")
def second_model(model_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return projected_artifact(model_artifact, tmp_path_factory.mktemp("v2") / "projected")


def wait_until(stub, done: int, states: tuple[int, ...]) -> pb.ReindexStatus:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = stub.GetReindexStatus(pb.GetReindexStatusRequest(), timeout=10)
        if status.state in states or (status.state == pb.REINDEX_RUNNING and status.done >= done):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"reindex still {status}")


def test_a_reindex_on_ray_resumes_after_a_stop_and_stores_the_in_process_vectors(
    tmp_path: Path, model_artifact: Path, second_model: Path, cluster: str
) -> None:
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, model_artifact, ["--reindex-batch", "3"]).start()
    try:
        stub = server.stub()
        for kind in KINDS:
            refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(12)]
            stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
        old = stub.GetStatus(pb.GetStatusRequest()).model_version
        started = stub.Reindex(
            pb.ReindexRequest(
                model=str(second_model), engine="ray", ray_address=cluster, ray_workers=2
            )
        )
        assert started.engine == "ray"
        progress = wait_until(stub, 6, FINISHED)
    finally:
        server.kill()
    assert progress.state == pb.REINDEX_RUNNING and 6 <= progress.done < 36, progress

    server = ServerProcess(data_dir, model_artifact).start()  # resumes by itself
    try:
        stub = server.stub()
        final = wait_until(stub, 37, FINISHED)
        assert final.state == pb.REINDEX_DONE, final.message + server.log()
        assert final.engine == "ray" and final.validated
        assert progress.done <= final.resumed_from < 36  # resumed, not restarted
        assert (final.done, final.total) == (36, 36)
        # ... embedding on Ray only what the first run had not stored
        runs = [int(n) for n in re.findall(r"embedding (\d+) references on Ray", server.log())]
        assert runs == [36, 36 - final.resumed_from], runs
        status = stub.GetStatus(pb.GetStatusRequest())
        assert status.model_version == final.target_version != old
        assert status.index_size == 36

        store = redis.Redis(unix_socket_path=str(data_dir / "valkey" / "valkey.sock"))
        stored = cast(dict[bytes, bytes], store.hgetall(f"nearcat:vec:{final.target_version}"))
        ids = sorted(key.decode() for key in stored)
        images = [
            stub.GetReferenceImage(pb.GetReferenceImageRequest(reference_id=i)).image for i in ids
        ]
        expected = load_artifact(second_model).embed_images(images)
        got = np.stack([np.frombuffer(stored[i.encode()], dtype="<f4") for i in ids])
        np.testing.assert_allclose(got, expected, atol=1e-5)
    finally:
        assert server.stop() == 0, server.log()
