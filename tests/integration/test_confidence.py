"""Confidence end to end: decisions, taxonomy levels, parent fallback, calibration, over gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import ServerProcess, make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("confidence") / "data"
    thresholds = data.parent / "thresholds.json"
    thresholds.write_text(json.dumps({"Dots A": {"auto_accept": 0.45, "flag": 0.3}}))
    # Its bands are tested on raw vote shares first, as if they were calibrated.
    trusting = ["--thresholds-file", str(thresholds), "--auto-accept-uncalibrated", "true"]
    process = ServerProcess(data, model_artifact, trusting).start()
    yield process
    assert process.stop() == 0, process.log()


def refs(kind: str, seeds: list[int]) -> list[pb.ReferenceImage]:
    return [pb.ReferenceImage(image=make_image(kind, s)) for s in seeds]


@pytest.fixture(scope="module")
def stub(server: ServerProcess):  # type: ignore[no-untyped-def]
    """Two parents whose two children share some images (so an image like those is split
    evenly between the children), and a top-level category apart."""
    stub = server.stub()
    for kind, parent in (("stripes", "Stripes"), ("dots", "Dots")):
        stub.AddCategory(pb.AddCategoryRequest(name=parent))
        for child, own in (("A", [0, 1, 2, 3, 4, 5]), ("B", [6, 7, 8, 9, 10, 11])):
            stub.AddCategory(
                pb.AddCategoryRequest(
                    name=f"{parent} {child}", parent=parent, references=refs(kind, own + [100])
                )
            )
    stub.AddCategory(
        pb.AddCategoryRequest(name="checkers", references=refs("checkers", list(range(24))))
    )
    return stub


def classify(stub, image: bytes, top_n: int = 1, k: int = 0) -> pb.Classification:  # type: ignore[no-untyped-def]
    options = pb.ClassifyOptions(top_n=top_n, k=k)
    return stub.Classify(pb.ClassifyRequest(image=image, options=options)).classification


def twin(kind: str, seed: int) -> bytes:
    """The very image of a reference (generated kinds alone are not told apart surely)."""
    return make_image(kind, seed)


def test_a_clear_image_is_auto_accepted_with_its_levels(stub) -> None:  # type: ignore[no-untyped-def]
    result = classify(stub, twin("checkers", 3))
    assert result.categories[0].category == "checkers"
    assert result.confidence == pytest.approx(result.categories[0].score)
    assert result.decision == pb.AUTO_ACCEPT
    assert [(lv.depth, lv.category) for lv in result.levels] == [(1, "checkers")]
    assert not result.HasField("confident_ancestor")


def test_ambiguous_leaves_fall_back_to_their_clear_parent(stub) -> None:  # type: ignore[no-untyped-def]
    result = classify(stub, twin("stripes", 100), top_n=5)
    leaves = {c.category: c.score for c in result.categories}
    assert leaves["Stripes A"] == pytest.approx(leaves["Stripes B"], abs=0.1)
    assert result.decision == pb.REVIEW  # about 0.5 each
    assert result.levels[0].category == "Stripes" and result.levels[0].score >= 0.95
    assert result.levels[1].category == result.categories[0].category
    assert result.confident_ancestor.category == "Stripes"
    assert result.confident_ancestor.score == pytest.approx(result.levels[0].score)
    assert list(result.categories[0].path) == ["Stripes", result.categories[0].category]


def test_review_returns_three_candidates_even_when_one_was_asked_for(stub) -> None:  # type: ignore[no-untyped-def]
    # k=20 reaches past the 14 stripes references, so more than two categories get a vote.
    result = classify(stub, twin("stripes", 100), top_n=1, k=20)
    assert result.decision == pb.REVIEW
    assert len(result.categories) == 3
    assert classify(stub, twin("checkers", 3), top_n=1, k=20).decision == pb.AUTO_ACCEPT
    assert len(classify(stub, twin("checkers", 3), top_n=1, k=20).categories) == 1


def test_per_category_thresholds_apply(stub) -> None:  # type: ignore[no-untyped-def]
    # Split evenly like the stripes, but "Dots A" auto-accepts from 0.45 (thresholds file).
    result = classify(stub, twin("dots", 100), top_n=2)
    assert [c.category for c in result.categories] == ["Dots A", "Dots B"]
    assert result.decision == pb.AUTO_ACCEPT
    assert not result.HasField("confident_ancestor")


def test_calibrate_is_stored_and_survives_a_restart(server: ServerProcess, stub) -> None:  # type: ignore[no-untyped-def]
    before = stub.GetStatus(pb.GetStatusRequest()).calibration
    assert before.examples == 0 and before.temperature == pytest.approx(1.0)
    fitted = stub.Calibrate(pb.CalibrateRequest()).calibration
    # the references with another shoot of their category to be judged by, by the others
    assert 0 < fitted.examples <= stub.GetStatus(pb.GetStatusRequest()).index_size
    assert fitted.temperature > 0 and -1 <= fitted.unknown_below <= 1
    assert fitted.source.startswith("leave-one-shoot-out")
    # a few dozen generated images earn no auto-accept band, and say so
    assert not fitted.has_auto_accept and "at least 114 answers" in fitted.no_auto_accept_reason
    # the confidence head: fitted on the five categories with references (not the parents)
    assert fitted.head_categories == 5 and fitted.head_current
    assert stub.GetStatus(pb.GetStatusRequest()).calibration == fitted
    answer = classify(stub, twin("checkers", 3))
    assert answer.categories[0].category == "checkers" and 0 < answer.confidence <= 1

    server.stop()
    server.start()
    restarted = server.stub().GetStatus(pb.GetStatusRequest()).calibration
    assert restarted == fitted


def test_a_newcomer_is_judged_by_the_one_rule_and_a_group_stays_apart(  # type: ignore[no-untyped-def]
    server: ServerProcess, stub
) -> None:
    """A category the head never saw competes at once through its vote, and the answer's
    confidence is still its calibrated probability; a grouped calibration says so."""
    stub = server.stub()  # a fresh channel: the server restarted in the test above
    assert stub.GetStatus(pb.GetStatusRequest()).calibration.head_current
    # A category known from text alone is one the head never saw: the head is due a refit.
    stub.AddCategory(pb.AddCategoryRequest(name="Zigzags", prompts=["zigzag pattern"]))
    assert not stub.GetStatus(pb.GetStatusRequest()).calibration.head_current
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Zigzags"))
    assert stub.GetStatus(pb.GetStatusRequest()).calibration.head_current
    shared = pb.ReferenceImage(image=make_image("checkers", 50), metadata={"group": "g"})
    near = pb.ReferenceImage(image=make_image("checkers", 50, size=176), metadata={"group": "h"})
    stub.AddCategory(pb.AddCategoryRequest(name="Left", references=[shared, near]))
    assert not stub.GetStatus(pb.GetStatusRequest()).calibration.head_current
    answer = classify(stub, twin("checkers", 3), top_n=20, k=60)
    assert answer.categories[0].category == "checkers"
    assert "Left" in {c.category for c in answer.categories}  # it competes at once
    assert answer.confidence == pytest.approx(answer.categories[0].score)  # one rule
    stub.AddCategory(pb.AddCategoryRequest(name="Right", references=[shared, *refs("dots", [51])]))
    grouped = stub.Calibrate(pb.CalibrateRequest(group_by_metadata="group")).calibration
    assert grouped.examples > 0 and "and its 'group'" in grouped.source

    # A category with its first photo is too thin for the head, which keeps the others.
    stub.AddCategory(pb.AddCategoryRequest(name="Single", references=refs("stripes", [60])))
    refitted = stub.Calibrate(pb.CalibrateRequest()).calibration
    assert refitted.head_categories == grouped.head_categories == 7


def test_calibrate_needs_two_categories(tmp_path: Path, model_artifact: Path) -> None:
    process = ServerProcess(tmp_path / "data", model_artifact).start()
    try:
        stub = process.stub()
        stub.AddCategory(
            pb.AddCategoryRequest(
                name="only", references=[pb.ReferenceImage(image=make_image("dots", 0))]
            )
        )
        with pytest.raises(grpc.RpcError) as caught:
            stub.Calibrate(pb.CalibrateRequest())
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "two categories" in (caught.value.details() or "")
    finally:
        process.stop()


def test_the_head_is_refitted_by_itself_once_the_categories_settle(
    tmp_path: Path, model_artifact: Path
) -> None:
    process = ServerProcess(
        tmp_path / "data", model_artifact, ["--recalibrate-after-s", "1"]
    ).start()
    try:
        stub = process.stub()
        for kind in ("stripes", "dots", "checkers"):
            stub.AddCategory(
                pb.AddCategoryRequest(name=kind, references=refs(kind, list(range(12))))
            )
        first = stub.Calibrate(pb.CalibrateRequest()).calibration
        assert first.head_categories == 3 and first.head_current

        stub.AddCategory(pb.AddCategoryRequest(name="more dots", references=refs("dots", [20, 21])))
        assert not stub.GetStatus(pb.GetStatusRequest()).calibration.head_current
        deadline = time.monotonic() + 60
        while not (now := stub.GetStatus(pb.GetStatusRequest()).calibration).head_current:
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.2)
        assert now.head_categories == 4 and now.fitted_at_ms > first.fitted_at_ms
        # Logged just after the refit is served (the lease is released in between).
        while "calibration refitted by itself" not in process.log():
            assert time.monotonic() < deadline, process.log()
            time.sleep(0.2)
    finally:
        process.stop()
