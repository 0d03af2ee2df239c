"""Reindex against real `nearcat serve` processes, real Valkey, over gRPC (issue 6).

- Must show 1: `kill -9` of the server during `nearcat import` and during a reindex: after a
  restart everything acknowledged is there, and the reindex resumes and completes.
- The switch under concurrent Classify: zero errors, and every answer from one version
  (the versions have different dimensions, so a mix could not even search).
- `nearcat reindex` and `nearcat rollback` from the command line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import redis

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ROOT, ServerProcess, make_image, projected_artifact

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def second_model(model_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return projected_artifact(model_artifact, tmp_path_factory.mktemp("v2") / "projected")


def nearcat(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(stub, states: tuple[int, ...], timeout: float = 240.0) -> pb.ReindexStatus:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = stub.GetReindexStatus(pb.GetReindexStatusRequest(), timeout=10)
        if status.state in states:
            return status
        time.sleep(0.02)
    raise TimeoutError(f"reindex still {status}")


def test_switch_and_rollback_under_concurrent_classify(
    tmp_path: Path, model_artifact: Path, second_model: Path
) -> None:
    server = ServerProcess(tmp_path / "data", model_artifact, ["--reindex-batch", "4"]).start()
    try:
        stub = server.stub()
        for kind in KINDS:
            refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(12)]
            stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
        old = stub.GetStatus(pb.GetStatusRequest()).model_version
        errors: list[str] = []
        seen: dict[int, list[str]] = {}
        stop = threading.Event()

        def classify(worker: int) -> None:
            versions = seen.setdefault(worker, [])
            seed = 0
            while not stop.is_set():
                kind = KINDS[seed % len(KINDS)]
                try:
                    answer = stub.Classify(
                        pb.ClassifyRequest(image=make_image(kind, 1000 + seed)), timeout=60
                    )
                except grpc.RpcError as exc:
                    errors.append(f"{exc.code().name}: {exc.details()}")
                    continue
                versions.append(answer.model_version)
                seed += 1

        workers = [threading.Thread(target=classify, args=(i,)) for i in range(3)]
        for w in workers:
            w.start()
        try:
            done = nearcat("reindex", "--model", str(second_model), "--server", server.address)
            rolled = None
            status = stub.GetReindexStatus(pb.GetReindexStatusRequest())
            new = status.target_version
            if done.returncode == 0:
                rolled = nearcat("rollback", "--server", server.address)
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert done.returncode == 0, done.stdout + done.stderr + server.log()
        assert "done" in done.stdout and "leave-one-shoot-out" in done.stdout
        assert status.state == pb.REINDEX_DONE and status.validated
        assert (status.done, status.total) == (36, 36)
        assert rolled is not None and rolled.returncode == 0, rolled.stdout + rolled.stderr
        assert errors == []
        for versions in seen.values():
            assert versions, "a worker never got an answer"
            assert set(versions) <= {old, new}
            # One caller's calls are sequential: once it is answered by a version, its later
            # calls are never answered by an earlier one (old -> new -> old after rollback).
            changes = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
            assert changes in ([old], [old, new], [old, new, old], [new], [new, old]), changes
        assert any(new in versions for versions in seen.values())
        after = stub.GetStatus(pb.GetStatusRequest())
        assert after.model_version == old and after.index_size == 36
        shown = nearcat("reindex", "--status", "--server", server.address)
        assert "rollback to " + old in shown.stdout and "done" in shown.stdout
    finally:
        assert server.stop() == 0, server.log()


def test_kill_9_during_import_and_during_reindex(
    tmp_path: Path, model_artifact: Path, second_model: Path
) -> None:
    """Must show 1: nothing acknowledged is lost; an interrupted reindex resumes and ends."""
    photos = tmp_path / "photos"
    for kind in KINDS:
        (photos / kind).mkdir(parents=True)
        for seed in range(30):
            (photos / kind / f"{seed}.jpg").write_bytes(make_image(kind, seed))
    data_dir = tmp_path / "data"
    server = ServerProcess(data_dir, model_artifact, ["--reindex-batch", "3"]).start()
    stub = server.stub()
    importer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "import",
            str(photos),
            "--batch-size",
            "2",
            "--no-calibrate",
            "--server",
            server.address,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    acknowledged = 0
    while acknowledged < 20 and importer.poll() is None:  # the index holds what was acknowledged
        acknowledged = stub.GetStatus(pb.GetStatusRequest()).index_size
        time.sleep(0.01)
    server.kill()
    importer.wait(timeout=60)
    assert 0 < acknowledged < 90, "the import was not caught in the middle"

    server = ServerProcess(data_dir, model_artifact, ["--reindex-batch", "3"]).start()
    stub = server.stub()
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.index_size >= acknowledged
    assert status.images_embedded == 0  # every stored reference had its vector
    rerun = nearcat("import", str(photos), "--no-calibrate", "--server", server.address)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{status.index_size} already there" in rerun.stdout
    assert stub.GetStatus(pb.GetStatusRequest()).index_size == 90
    old = status.model_version

    started = stub.Reindex(pb.ReindexRequest(model=str(second_model)))
    new = started.target_version
    progress = wait_for(stub, (pb.REINDEX_RUNNING,))
    while progress.done < 12 and progress.state == pb.REINDEX_RUNNING:
        progress = stub.GetReindexStatus(pb.GetReindexStatusRequest())
        time.sleep(0.01)
    server.kill()
    assert progress.state == pb.REINDEX_RUNNING and 0 < progress.done < 90, progress
    store = redis.Redis(unix_socket_path=str(data_dir / "valkey" / "valkey.sock"))

    # Restarted with --model of the old version: the store's active version (still the old
    # one, the switch never happened) is served, and the reindex carries on by itself.
    server = ServerProcess(data_dir, model_artifact).start()
    try:
        stub = server.stub()
        assert stub.GetStatus(pb.GetStatusRequest()).index_size == 90
        final = wait_for(stub, (pb.REINDEX_DONE, pb.REINDEX_FAILED, pb.REINDEX_REFUSED))
        assert final.state == pb.REINDEX_DONE, final.message + server.log()
        assert final.target_version == new and final.previous_version == old
        assert progress.done <= final.resumed_from < 90  # resumed, not restarted
        assert (final.done, final.total) == (90, 90)
        status = stub.GetStatus(pb.GetStatusRequest())
        assert status.model_version == new and status.index_size == 90
        assert store.hlen(f"nearcat:vec:{new}") == store.hlen(f"nearcat:vec:{old}") == 90
        answer = stub.Classify(pb.ClassifyRequest(image=make_image("dots", 5)), timeout=60)
        assert answer.model_version == new
        assert answer.classification.neighbors[0].similarity == pytest.approx(1.0, abs=1e-3)
    finally:
        assert server.stop() == 0, server.log()
    # And a plain restart keeps serving the new version, whatever --model says.
    server = ServerProcess(data_dir, model_artifact).start()
    try:
        assert server.stub().GetStatus(pb.GetStatusRequest()).model_version == new
        assert "used only on a first start" in server.log()
    finally:
        assert server.stop() == 0, server.log()
