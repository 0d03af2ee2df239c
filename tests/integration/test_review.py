"""The review queue over a real server, real Valkey and real images: what is queued, leases,
verdicts once, the catalogue learning from them, audits, roles, and UpdateCategory."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from PIL import Image

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import ServerProcess, make_image

pytestmark = pytest.mark.integration

ADMIN, REVIEWER, CLASSIFIER = (
    "admin-token-0123456789",
    "rita-token-0123456789",
    "carl-token-0123456789",
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("review") / "data",
        model_artifact,
        [
            # Uncalibrated: an answer at >= 0.98 is auto-accepted (and, at share 1, audited);
            # any other is REVIEW (the flag band is empty).
            "--auto-accept-uncalibrated", "true",
            "--flag", "1.0",
            "--audit-share", "1.0",
            "--recalibrate-after-s", "0",
            "--auth-tokens",
            f"admin {ADMIN} alice,reviewer {REVIEWER} rita,classify {CLASSIFIER} carl",
        ],
    ).start()  # fmt: skip
    yield process
    assert process.stop() == 0, process.log()


class As:
    """The service as one client: every call carries its token."""

    def __init__(self, server: ServerProcess, token: str) -> None:
        self.stub = server.stub()
        self.metadata = (("authorization", f"Bearer {token}"),)

    def __getattr__(self, method: str):  # type: ignore[no-untyped-def]
        call = getattr(self.stub, method)
        return lambda request: call(request, metadata=self.metadata, timeout=60)


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> dict[str, As]:
    admin = As(server, ADMIN)
    for kind in ("stripes", "checkers"):
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(6)]
        admin.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
    return {"admin": admin, "rita": As(server, REVIEWER), "carl": As(server, CLASSIFIER)}


def claim_all(client: As, **filters: object) -> list[pb.ReviewItem]:
    return list(client.ClaimReviews(pb.ClaimReviewsRequest(max_items=50, **filters)).items)


def code_of(call) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_roles(clients: dict[str, As]) -> None:
    carl, rita = clients["carl"], clients["rita"]
    assert carl.WhoAmI(pb.WhoAmIRequest()).role == "classify"
    assert rita.WhoAmI(pb.WhoAmIRequest()) == pb.WhoAmIResponse(
        name="rita", role="reviewer", auth_enabled=True
    )
    assert code_of(lambda: carl.ClaimReviews(pb.ClaimReviewsRequest())) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: rita.AddCategory(pb.AddCategoryRequest(name="x"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: rita.UpdateCategory(pb.UpdateCategoryRequest(name="x"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    rita.GetReviewStats(pb.GetReviewStatsRequest())  # allowed


def test_an_unsure_answer_is_queued_leased_decided_once_and_learnt(clients: dict[str, As]) -> None:
    carl, rita, alice = clients["carl"], clients["rita"], clients["admin"]
    photo = make_image("dots", 101)  # a kind the catalogue lacks
    answer = carl.Classify(pb.ClassifyRequest(image=photo, item_id="sku-1", metadata={"shop": "7"}))
    assert answer.classification.decision == pb.REVIEW
    assert (answer.item_id, dict(answer.metadata)) == ("sku-1", {"shop": "7"})
    assert answer.review_id
    skipped = carl.Classify(pb.ClassifyRequest(image=make_image("dots", 102), skip_review=True))
    assert skipped.review_id == ""

    [item] = [i for i in claim_all(rita) if i.id == answer.review_id]
    assert item.image == photo and item.item_id == "sku-1" and item.metadata["shop"] == "7"
    assert item.classification == answer.classification and not item.audit
    assert item.leased_to == "rita"
    assert answer.review_id not in {i.id for i in claim_all(alice)}  # leased to rita

    # Another reviewer cannot decide it while rita holds it.
    refused = pb.SubmitVerdictRequest(review_id=item.id, category="stripes")
    assert code_of(lambda: alice.SubmitVerdict(refused)) == grpc.StatusCode.FAILED_PRECONDITION

    verdict = pb.SubmitVerdictRequest(
        review_id=item.id, none_of_these=pb.NoneOfThese(new_category="dots")
    )
    done = rita.SubmitVerdict(verdict)
    assert done.category_created and done.labelled and done.reference_id
    assert not done.model_was_right and "created category 'dots'" in done.message
    # The same verdict again (a retry) answers the same; a different one is refused.
    assert rita.SubmitVerdict(verdict) == done
    again = pb.SubmitVerdictRequest(review_id=item.id, category="stripes")
    assert code_of(lambda: rita.SubmitVerdict(again)) == grpc.StatusCode.ALREADY_EXISTS

    # The new category is classifiable on the next call, from the reviewed image.
    next_call = carl.Classify(pb.ClassifyRequest(image=photo, skip_review=True))
    assert next_call.classification.categories[0].category == "dots"
    reference = alice.GetCategory(pb.GetCategoryRequest(name="dots", include_references=True))
    assert reference.references[0].metadata["source"] == "review"
    assert reference.references[0].metadata["reviewer"] == "rita"
    assert reference.references[0].metadata["item_id"] == "sku-1"


def test_a_wrong_answer_corrected_classifies_right_next_time(clients: dict[str, As]) -> None:
    carl, rita = clients["carl"], clients["rita"]
    photo = make_image("stripes", 211, size=200)
    first = carl.Classify(pb.ClassifyRequest(image=photo))
    wrong = "checkers" if first.classification.categories[0].category == "stripes" else "stripes"
    [item] = [i for i in claim_all(rita) if i.id == first.review_id]
    # Whatever the model said, the reviewer says `wrong` is right: the catalogue follows.
    done = rita.SubmitVerdict(pb.SubmitVerdictRequest(review_id=item.id, category=wrong))
    assert done.reference_id and not done.model_was_right
    after = carl.Classify(pb.ClassifyRequest(image=photo, skip_review=True))
    assert after.classification.categories[0].category == wrong
    assert after.classification.neighbors[0].reference_id == done.reference_id


def test_a_photo_that_cannot_be_a_reference_is_still_decided(clients: dict[str, As]) -> None:
    """Any photo may be classified, but a sliver must not become a reference: the verdict
    stands, names its new category and says why the photo was not added."""
    carl, rita, alice = clients["carl"], clients["rita"], clients["admin"]
    buffer = io.BytesIO()
    Image.new("RGB", (1000, 40), (200, 30, 90)).save(buffer, format="PNG")
    answer = carl.Classify(pb.ClassifyRequest(image=buffer.getvalue()))
    [item] = [i for i in claim_all(rita) if i.id == answer.review_id]
    done = rita.SubmitVerdict(
        pb.SubmitVerdictRequest(
            review_id=item.id, none_of_these=pb.NoneOfThese(new_category="Banners")
        )
    )
    assert done.category_created and done.labelled and done.reference_id == ""
    assert "not added as a reference: image too narrow" in done.message
    banners = alice.GetCategory(pb.GetCategoryRequest(name="Banners")).category
    assert banners.reference_count == 0
    alice.DeleteCategory(pb.DeleteCategoryRequest(name="Banners"))


def test_a_new_category_named_in_a_verdict_is_warned_of_a_case_twin(
    clients: dict[str, As],
) -> None:
    carl, rita, alice = clients["carl"], clients["rita"], clients["admin"]
    answer = carl.Classify(pb.ClassifyRequest(image=make_image("checkers", 311)))
    [item] = [i for i in claim_all(rita) if i.id == answer.review_id]
    done = rita.SubmitVerdict(
        pb.SubmitVerdictRequest(
            review_id=item.id, none_of_these=pb.NoneOfThese(new_category="STRIPES")
        )
    )
    assert done.category_created and done.category == "STRIPES"
    assert "'STRIPES' differs only in case from 'stripes'" in done.message
    alice.DeleteCategory(pb.DeleteCategoryRequest(name="STRIPES"))


def test_audits_measure_the_auto_accept_band(clients: dict[str, As]) -> None:
    carl, rita = clients["carl"], clients["rita"]
    before = rita.GetReviewStats(pb.GetReviewStatsRequest()).audit
    accepted = []
    for seed in range(300, 320):
        answer = carl.Classify(pb.ClassifyRequest(image=make_image("checkers", seed)))
        if answer.classification.decision == pb.AUTO_ACCEPT:
            accepted.append(answer)
    assert accepted, "no answer was auto-accepted: the test needs some"
    audits = {i.id: i for i in claim_all(rita, audit=True)}
    assert {a.review_id for a in accepted} <= set(audits)
    for n, answer in enumerate(accepted):
        top = answer.classification.categories[0].category
        said = top if n else ("stripes" if top != "stripes" else "checkers")  # one wrong
        rita.SubmitVerdict(pb.SubmitVerdictRequest(review_id=answer.review_id, category=said))
    stats = rita.GetReviewStats(pb.GetReviewStatsRequest())
    audit = stats.audit
    assert audit.reviewed - before.reviewed == len(accepted)
    assert audit.right - before.right == len(accepted) - 1
    assert audit.lower < audit.precision < audit.upper and audit.target == pytest.approx(0.98)
    assert audit.needed == 114 and not audit.below_target  # too few audits to tell
    assert stats.reviewed >= len(accepted) and stats.reviewed_per_day[-1].count >= len(accepted)
    status = carl.GetStatus(pb.GetStatusRequest())
    assert status.review.audit.reviewed == audit.reviewed


def test_update_category_renames_and_the_index_follows(clients: dict[str, As]) -> None:
    alice, carl = clients["admin"], clients["carl"]
    alice.AddCategory(
        pb.AddCategoryRequest(
            name="zigzag",
            references=[pb.ReferenceImage(image=make_image("dots", s)) for s in (1, 2)],
        )
    )
    renamed = alice.UpdateCategory(
        pb.UpdateCategoryRequest(name="zigzag", new_name="spots", parent="stripes")
    )
    assert (renamed.category.name, list(renamed.category.path)) == ("spots", ["stripes", "spots"])
    answer = carl.Classify(pb.ClassifyRequest(image=make_image("dots", 1), skip_review=True))
    assert answer.classification.categories[0].category == "spots"
    assert answer.classification.categories[0].path == ["stripes", "spots"]
    names = {c.name for c in carl.ListCategories(pb.ListCategoriesRequest()).categories}
    assert "spots" in names and "zigzag" not in names
    refused = pb.UpdateCategoryRequest(name="spots", new_name="stripes")
    assert code_of(lambda: alice.UpdateCategory(refused)) == grpc.StatusCode.ALREADY_EXISTS
    page = carl.GetCategory(
        pb.GetCategoryRequest(name="spots", include_references=True, offset=1, limit=1)
    )
    assert len(page.references) == 1
    image = carl.GetReferenceImage(pb.GetReferenceImageRequest(reference_id=page.references[0].id))
    assert image.image in {make_image("dots", 1), make_image("dots", 2)}
    assert image.reference.category == "spots"
    missing = pb.GetReferenceImageRequest(reference_id="0" * 16)
    assert code_of(lambda: carl.GetReferenceImage(missing)) == grpc.StatusCode.NOT_FOUND


def test_a_batch_echoes_each_item_and_queues_the_unsure(clients: dict[str, As]) -> None:
    carl = clients["carl"]
    items = [
        pb.ClassifyItem(image=make_image("dots", 601), item_id="a", metadata={"lot": "1"}),
        pb.ClassifyItem(image=b"not an image", item_id="b"),
    ]
    batch = carl.ClassifyBatch(pb.ClassifyBatchRequest(items=items))
    first, bad = batch.results
    assert (first.item_id, dict(first.metadata)) == ("a", {"lot": "1"})
    assert first.WhichOneof("outcome") == "classification" and first.review_id
    assert bad.item_id == "b" and bad.error.code == "INVALID_ARGUMENT" and not bad.review_id
    both = pb.ClassifyBatchRequest(images=[make_image("dots", 1)], items=items)
    assert code_of(lambda: carl.ClassifyBatch(both)) == grpc.StatusCode.INVALID_ARGUMENT
