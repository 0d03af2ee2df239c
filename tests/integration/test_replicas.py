"""Two `nearcat serve` processes on one store: what one writes, the other answers within a
second (adds, removes, renames, deletes, calibrations, a model switch), and a replica that
fell behind the stream's retention reloads."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import ServerProcess, make_image, projected_artifact

pytestmark = pytest.mark.integration

IN_STEP_S = 1.0  # the promise
WAIT_S = 10.0  # how long a failing check waits before it says so


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    root = tmp_path_factory.mktemp("replicas")
    args = ["--recalibrate-after-s", "0"]
    first = ServerProcess(root / "a", model_artifact, args).start()
    socket = root / "a" / "valkey" / "valkey.sock"
    second = ServerProcess(
        root / "b", model_artifact, [*args, "--redis-url", f"unix://{socket}"]
    ).start()
    yield first, second
    assert second.stop() == 0, second.log()
    assert first.stop() == 0, first.log()


def eventually(check: Callable[[], Any]) -> float:
    """Seconds until check() holds (AssertionError after WAIT_S)."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 - e.g. NOT_FOUND until the replica catches up
            pass
        if time.monotonic() - started > WAIT_S:
            raise AssertionError(f"not in step after {WAIT_S}s")
        time.sleep(0.02)


def top(stub: Any, image: bytes) -> str:
    answer = stub.Classify(pb.ClassifyRequest(image=image, skip_review=True), timeout=30)
    return answer.classification.categories[0].category


def test_writes_on_one_server_are_answered_by_the_other(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = (s.stub() for s in pair)
    for kind in ("stripes", "checkers"):
        # Enough to calibrate on: several shoots per category.
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(16)]
        a.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
    waited = [eventually(lambda: b.GetStatus(pb.GetStatusRequest()).index_size == 32)]

    dots = [
        pb.ReferenceImage(image=make_image("dots", s), attributes={"round": "yes"}) for s in (1, 2)
    ]
    made = a.AddCategory(pb.AddCategoryRequest(name="dots", references=dots))
    waited.append(eventually(lambda: top(b, make_image("dots", 1)) == "dots"))
    # Their attributes follow too: B answers them.
    on_b = b.Classify(pb.ClassifyRequest(image=make_image("dots", 1), skip_review=True))
    assert [(x.name, x.values[0].value) for x in on_b.classification.attributes] == [
        ("round", "yes")
    ]

    # A reference removed through B is no longer evidence on A.
    gone = made.references[0].reference_id
    b.RemoveReferences(pb.RemoveReferencesRequest(reference_ids=[gone]))
    waited.append(
        eventually(
            lambda: (
                gone
                not in {
                    n.reference_id
                    for n in a.Classify(
                        pb.ClassifyRequest(image=make_image("dots", 1), skip_review=True)
                    ).classification.neighbors
                }
            )
        )
    )
    # A rename through A is the answer on B; a delete through B is gone from A.
    a.UpdateCategory(pb.UpdateCategoryRequest(name="dots", new_name="spots"))
    waited.append(eventually(lambda: top(b, make_image("dots", 2)) == "spots"))
    b.DeleteCategory(pb.DeleteCategoryRequest(name="spots"))
    waited.append(eventually(lambda: top(a, make_image("dots", 2)) != "spots"))

    # A calibration fitted through A serves on B.
    fitted = a.Calibrate(pb.CalibrateRequest()).calibration
    waited.append(
        eventually(
            lambda: (
                b.GetStatus(pb.GetStatusRequest()).calibration.fitted_at_ms == fitted.fitted_at_ms
            )
        )
    )
    # The promise holds for the typical write; a loaded machine (CI beside other jobs) has
    # been seen to take 1.09 s for the first bulk of 32 references, so one may take longer.
    assert sorted(waited)[len(waited) // 2] < IN_STEP_S, waited
    assert max(waited) < 3 * IN_STEP_S, waited
    status_a, status_b = a.GetStatus(pb.GetStatusRequest()), b.GetStatus(pb.GetStatusRequest())
    assert status_a.server_id != status_b.server_id
    assert status_b.change_lag == 0 and status_b.change_position == status_a.change_position


def test_a_replica_behind_the_streams_retention_reloads(
    pair: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = pair
    a, b = first.stub(), second.stub()
    assert second.process is not None
    os.kill(second.process.pid, signal.SIGSTOP)  # B hears nothing of what follows
    try:
        # The first write answers the read B had waiting; the second B never reads.
        first_refs = [pb.ReferenceImage(image=make_image("stripes", 90))]
        a.AddCategory(pb.AddCategoryRequest(name="early", references=first_refs))
        refs = [pb.ReferenceImage(image=make_image("dots", s)) for s in (5, 6)]
        a.AddCategory(pb.AddCategoryRequest(name="late", references=refs))
        client = redis.Redis(unix_socket_path=str(first.data_dir / "valkey" / "valkey.sock"))
        client.xtrim("nearcat:changes", maxlen=0)  # its entries are gone before B reads them
    finally:
        os.kill(second.process.pid, signal.SIGCONT)
    eventually(lambda: top(b, make_image("dots", 5)) == "late")
    assert "reloading the catalogue" in second.log()


def test_a_model_switch_on_one_server_switches_the_other(
    pair: tuple[ServerProcess, ServerProcess],
    model_artifact: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    a, b = (s.stub() for s in pair)
    v2 = projected_artifact(model_artifact, tmp_path_factory.mktemp("v2") / "projected")
    started = a.Reindex(pb.ReindexRequest(model=str(v2), skip_validation=True))
    eventually(lambda: a.GetReindexStatus(pb.GetReindexStatusRequest()).state == pb.REINDEX_DONE)
    eventually(lambda: b.GetStatus(pb.GetStatusRequest()).model_version == started.target_version)
    assert top(b, make_image("dots", 5)) == "late"
    assert b.GetStatus(pb.GetStatusRequest()).embedding_dim == 256
    # And back: a rollback through B is what A serves.
    b.Rollback(pb.RollbackRequest())
    eventually(lambda: a.GetStatus(pb.GetStatusRequest()).model_version != started.target_version)
    assert a.GetStatus(pb.GetStatusRequest()).embedding_dim != 256


def test_a_third_replica_answers_alike_and_a_killed_one_catches_up(
    pair: tuple[ServerProcess, ServerProcess], model_artifact: Path
) -> None:
    first, second = pair
    socket = first.data_dir / "valkey" / "valkey.sock"
    third = ServerProcess(
        first.data_dir.parent / "c", model_artifact, ["--redis-url", f"unix://{socket}"]
    ).start()
    try:
        a, c = first.stub(), third.stub()
        refs = [pb.ReferenceImage(image=make_image("checkers", s)) for s in (40, 41)]
        a.AddCategory(pb.AddCategoryRequest(name="grid", references=refs))
        assert eventually(lambda: top(c, make_image("checkers", 40)) == "grid") < IN_STEP_S
        third.kill()  # kill -9: it hears nothing of what follows
        refs = [pb.ReferenceImage(image=make_image("stripes", s)) for s in (50, 51)]
        a.AddCategory(pb.AddCategoryRequest(name="lines", references=refs))
        third = ServerProcess(third.data_dir, model_artifact, third.extra_args).start()
        c = third.stub()
        assert top(c, make_image("stripes", 50)) == "lines"
        # All three answer the same photos the same way.
        for seed in range(3):
            for kind in ("stripes", "checkers", "dots"):
                answers = {
                    (r.categories[0].category, r.decision, round(r.confidence, 4))
                    for r in (
                        s.Classify(
                            pb.ClassifyRequest(image=make_image(kind, 200 + seed), skip_review=True)
                        ).classification
                        for s in (a, second.stub(), c)
                    )
                }
                assert len(answers) == 1, (kind, seed, answers)
    finally:
        assert third.stop() == 0, third.log()
