"""--audit-guard over a real server: reviewed audits that disprove the auto-accept band stop
auto-accepting, and audits of the answers it would have accepted let it prove itself again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from tests.helpers import ServerProcess, make_image

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stub(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[pb_grpc.NearcatStub]:
    process = ServerProcess(
        tmp_path_factory.mktemp("guard") / "data",
        model_artifact,
        [
            "--auto-accept-uncalibrated", "true",
            "--audit-share", "1.0",
            "--audit-guard", "true",
            # A target one audit can prove or disprove: needed = ln 0.5 / ln 0.5 = 1.
            "--auto-accept-precision", "0.5",
            "--auto-accept-confidence", "0.5",
            "--recalibrate-after-s", "0",
            # Verdicts stay labelled traffic: a wrong audit must not move the catalogue here.
            "--learn-from-reviews", "false",
        ],
    ).start()  # fmt: skip
    stub = process.stub()
    for kind in ("stripes", "checkers"):
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(6)]
        stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
    yield stub
    assert process.stop() == 0, process.log()


def accepted_photos(stub: pb_grpc.NearcatStub, n: int) -> list[bytes]:
    photos = []
    for seed in range(400, 440):
        photo = make_image("checkers", seed)
        answer = stub.Classify(pb.ClassifyRequest(image=photo, skip_review=True))
        if answer.classification.decision == pb.AUTO_ACCEPT:
            photos.append(photo)
        if len(photos) == n:
            return photos
    raise AssertionError(f"fewer than {n} auto-accepted photos: the test needs them")


def audit(stub: pb_grpc.NearcatStub, photo: bytes, right: bool) -> pb.ClassifyResponse:
    answer = stub.Classify(pb.ClassifyRequest(image=photo))
    assert answer.review_id, "an auto-accepted (or would-be) answer is audited at share 1"
    [item] = stub.ClaimReviews(pb.ClaimReviewsRequest(audit=True, reviewer="rita")).items
    assert item.id == answer.review_id and item.audit
    top = answer.classification.categories[0].category
    said = top if right else ("stripes" if top != "stripes" else "checkers")
    done = stub.SubmitVerdict(
        pb.SubmitVerdictRequest(review_id=item.id, category=said, reviewer="rita")
    )
    assert done.labelled and not done.reference_id  # --learn-from-reviews false
    return answer


def test_the_guard_stops_and_resumes_auto_accepting(stub: pb_grpc.NearcatStub) -> None:
    photos = accepted_photos(stub, 4)
    audit(stub, photos[0], right=False)
    stats = stub.GetStatus(pb.GetStatusRequest()).review.audit
    assert (stats.reviewed, stats.right, stats.needed) == (1, 0, 1)
    assert stats.below_target and stats.guard_active

    # Suspended: the same photo is no longer auto-accepted, but still audited.
    held = audit(stub, photos[1], right=True)
    assert held.classification.decision != pb.AUTO_ACCEPT
    for photo in photos[2:]:
        audit(stub, photo, right=True)
    stats = stub.GetReviewStats(pb.GetReviewStatsRequest()).audit
    assert (stats.reviewed, stats.right) == (4, 3)
    assert stats.lower >= 0.5 and not stats.below_target and not stats.guard_active
    again = stub.Classify(pb.ClassifyRequest(image=photos[1], skip_review=True))
    assert again.classification.decision == pb.AUTO_ACCEPT
