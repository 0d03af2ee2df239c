"""The Ray engine's rules and its talk with the driver process, without Ray: the options a
job runs with, the refusals, and a stand-in driver (the real one, on a real cluster, is in
tests/integration/test_reindex_ray.py)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from embedder.images import DecodeLimits
from indexer.blobs import DirBlobs
from indexer.errors import FailedPrecondition, InvalidArgument
from server import ray_engine
from server.ray_engine import INSTALL_HINT, RayEngine, RayOptions
from server.reindex import ReindexConfig, Reindexer, ReindexJob

# Answers as the driver does (see server.ray_engine._read_frames), as argv[1] says.
FAKE_DRIVER = r"""
import pickle, sys
import numpy as np
job = pickle.load(sys.stdin.buffer)
out, mode, marker = sys.stdout.buffer, sys.argv[1], sys.argv[2]
if mode == "crash":
    sys.exit(3)
if mode == "error":
    pickle.dump(("error", "stored reference r1: cannot decode the image"), out)
    out.flush()
    sys.exit(0)
ids = [row["id"] for row in job["rows"]]
pickle.dump(("batch", ids, np.ones((len(ids), 4), np.float32)), out)
out.flush()
if mode == "done":
    pickle.dump(("done",), out)
    out.flush()
else:  # "wait": until the server closes stdin
    sys.stdin.buffer.read()
    open(marker, "w").write("told to stop")
"""


class Store:
    """Where the references' images are: a blob store and the keys of those still stored."""

    def __init__(self, blobs: DirBlobs, keys: dict[str, str]) -> None:
        self.blobs, self.keys = blobs, keys

    def image_keys(self, reference_ids: list[str]) -> dict[str, str]:
        return {i: self.keys[i] for i in reference_ids if i in self.keys}


def engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str, stop: threading.Event
) -> tuple[RayEngine, Any]:
    marker = tmp_path / "marker"
    monkeypatch.setattr(
        ray_engine, "DRIVER_COMMAND", [sys.executable, "-c", FAKE_DRIVER, mode, str(marker)]
    )
    store = Store(DirBlobs(tmp_path / "blobs"), {"r1": "r1.a", "r2": "r2.b"})  # r3: removed
    options = RayOptions().resolved("cpu")
    ray = RayEngine(options, tmp_path, "auto", store, stop)  # type: ignore[arg-type]
    serving = SimpleNamespace(embedder=SimpleNamespace(limits=DecodeLimits()))
    return ray, serving


REFERENCES = [("r1", "shoes"), ("r2", "shoes"), ("r3", "shirts")]


def test_the_vectors_come_back_and_a_stop_tells_the_driver(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stop = threading.Event()
    ray, serving = engine(monkeypatch, tmp_path, "wait", stop)
    batches = ray(serving, REFERENCES, 2)
    ids, vectors = next(batches)
    assert ids == ["r1", "r2"]  # the removed r3 is not sent
    assert vectors.shape == (2, 4) and vectors.dtype == np.float32
    stop.set()
    assert next(batches, None) is None  # within a poll, however long the driver would wait
    assert (tmp_path / "marker").read_text() == "told to stop"  # stdin closed, then reaped


def test_a_finished_driver_ends_the_batches(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ray, serving = engine(monkeypatch, tmp_path, "done", threading.Event())
    assert [ids for ids, _ in ray(serving, REFERENCES, 2)] == [["r1", "r2"]]


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("error", "the Ray engine failed: stored reference r1: cannot decode the image"),
        ("crash", "the Ray engine failed: its driver process exited with 3"),
    ],
)
def test_a_failing_driver_fails_the_reindex_with_its_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str, reason: str
) -> None:
    ray, serving = engine(monkeypatch, tmp_path, mode, threading.Event())
    with pytest.raises(FailedPrecondition, match=reason):
        list(ray(serving, REFERENCES, 2))


def test_nothing_to_embed_starts_no_driver(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ray, serving = engine(monkeypatch, tmp_path, "crash", threading.Event())
    assert list(ray(serving, [], 2)) == []


def test_options_resolve_to_what_the_job_runs_with() -> None:
    assert RayOptions().resolved("cpu") == RayOptions("", 2, 1.0, 0.0)
    on_gpu = RayOptions("ray://head:10001", 4).resolved("cuda")
    assert on_gpu == RayOptions("ray://head:10001", 4, 1.0, 1.0) and on_gpu.device == "cuda"
    assert RayOptions(gpus_per_worker=0).resolved("cuda").device == "cpu"
    for bad in (
        RayOptions(workers=-1),
        RayOptions(cpus_per_worker=0),
        RayOptions(gpus_per_worker=-1),
    ):
        with pytest.raises(InvalidArgument):
            bad.resolved("cpu")


def reindexer(device: str = "cpu") -> Reindexer:
    """Enough of a reindexer for the checks `start` makes before anything else."""
    catalog = SimpleNamespace(store=None)
    return Reindexer(catalog, None, Path(), None, ReindexConfig(device=device))  # type: ignore[arg-type]


def test_an_unknown_engine_and_ray_options_without_ray_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="unknown reindex engine 'spark'.*'ray'"):
        reindexer().start("v2", engine="spark")
    with pytest.raises(InvalidArgument, match="add --engine ray"):
        reindexer().start("v2", ray=RayOptions(workers=4))


def test_the_ray_engine_without_ray_installed_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails
    with pytest.raises(FailedPrecondition, match="needs Ray on the server") as refused:
        reindexer().start("v2", engine="ray")
    assert INSTALL_HINT in str(refused.value)


def test_a_job_records_its_engine_so_that_a_resumed_one_keeps_it() -> None:
    options = RayOptions("auto", 3, 2.0, 0.5)
    job = ReindexJob("v2", "v1", ray=options)
    again = ReindexJob.from_json(job.to_json())
    assert again.ray == options and again.engine == "ray"
    assert ReindexJob.from_json(ReindexJob("v2", "v1").to_json()).engine == "in-process"


@pytest.mark.parametrize(
    ("raised", "reason"),
    [
        (
            "The actor died because of an error raised in its creation task\n"
            "indexer.errors.FailedPrecondition: Ray worker on node-3 does not see the blob store",
            "Ray worker on node-3 does not see the blob store",
        ),
        ("Traceback ...\nOSError: [Errno 5] Input/output error", "[Errno 5] Input/output error"),
        ("stored reference r1: cannot decode", "stored reference r1: cannot decode"),
    ],
)
def test_a_workers_error_is_reported_without_rays_wrapping(raised: str, reason: str) -> None:
    assert ray_engine._reason(RuntimeError(raised)) == reason


def test_the_status_line_names_the_ray_engine() -> None:
    from server.commands.operate import describe_reindex
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    status = pb.ReindexStatus(
        state=pb.REINDEX_RUNNING, target_version="v2", done=3, total=9, engine="ray"
    )
    assert "(3 of 9 references, embedded on ray)" in describe_reindex(status)
    status.engine = "in-process"
    assert "(3 of 9 references)" in describe_reindex(status)


def test_the_reindex_bench_targets_the_same_model_under_a_fresh_version(
    model_artifact: Path, tmp_path: Path
) -> None:
    from embedder.artifact import artifact_version, verify_artifact
    from server.bench.reindex import renamed_artifact

    copy = renamed_artifact(model_artifact, tmp_path / "copy", "lite0-bench1")
    assert verify_artifact(copy) == artifact_version(copy) != artifact_version(model_artifact)
    assert artifact_version(copy).startswith("lite0-bench1-")
