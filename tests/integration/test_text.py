"""Text over gRPC: prompt-only categories, ZeroShot, SearchByText, with the packaged model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import CLOTHING, ServerProcess, make_image

pytestmark = pytest.mark.integration

WANTED = ("Shoes", "Hat", "Pants")


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("text") / "data", model_artifact).start()
    yield process
    assert process.stop() == 0, process.log()


def clothing_photos(category: str, count: int, skip: int = 0) -> list[bytes]:
    from embedder.datasets import load_csv

    data = load_csv(CLOTHING / "images.csv", path_template="images/{}.jpg")
    paths = [i.path for i in data.images if i.category == category][skip : skip + count]
    return [p.read_bytes() for p in paths]


def test_a_prompt_only_category_is_classifiable_at_once(server: ServerProcess) -> None:
    stub = server.stub()
    added = stub.AddCategory(
        pb.AddCategoryRequest(name="Umbrellas", prompts=["a photo of an umbrella"])
    )
    assert list(added.category.prompts) == ["a photo of an umbrella"]
    assert added.category.reference_count == 0
    # The index is still empty: the answer comes from the text alone.
    result = stub.Classify(pb.ClassifyRequest(image=make_image("dots", 1))).classification
    assert result.categories[0].category == "Umbrellas"
    assert result.categories[0].score == pytest.approx(1.0)
    assert not result.neighbors
    # however sure the text is, an answer from text alone goes to a person
    assert result.decision == pb.REVIEW
    listed = stub.GetCategory(pb.GetCategoryRequest(name="Umbrellas")).category
    assert list(listed.prompts) == ["a photo of an umbrella"]
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Umbrellas"))


def test_a_prompt_weighs_what_the_same_words_weigh_as_a_name(server: ServerProcess) -> None:
    """A category's prompts and another's name compete in one text softmax, so they must be
    on one scale: the packaged tower's vectors are short class weightings, and a prompt
    stretched to unit length outscored every name (a prompt-only category then took most
    other categories' images)."""
    stub = server.stub()
    stub.AddCategory(pb.AddCategoryRequest(name="Kilts"))  # known by its name alone
    stub.AddCategory(pb.AddCategoryRequest(name="Tartan skirts", prompts=["Kilts"]))
    try:
        request = pb.SearchByTextRequest(text="a kilt", top_n=20, k=1)
        found = {c.category: c.score for c in stub.SearchByText(request).categories}
        assert found["Tartan skirts"] == pytest.approx(found["Kilts"], rel=1e-4)
    finally:
        stub.DeleteCategory(pb.DeleteCategoryRequest(name="Tartan skirts"))
        stub.DeleteCategory(pb.DeleteCategoryRequest(name="Kilts"))


def test_a_prompt_s_own_text_finds_its_category_first(server: ServerProcess) -> None:
    """The packaged tower's text vectors are class weightings of different lengths: ranked by
    their plain dot product, "a skirt" found Dress (a name) before Skirt, whose prompt it is.
    Scores are cosines; a prompt's own text scores 1 and comes first, even where the mean of
    the category's prompts is nearer another category's text ("a kilt" and Kilts)."""
    stub = server.stub()
    stub.AddCategory(pb.AddCategoryRequest(name="Dress"))  # known by their names alone
    stub.AddCategory(pb.AddCategoryRequest(name="Kilts"))
    stub.AddCategory(pb.AddCategoryRequest(name="Skirt", prompts=["a skirt", "a kilt"]))
    try:
        for text in ("a skirt", "a kilt", "  A   KILT "):
            request = pb.SearchByTextRequest(text=text, top_n=10, k=1)
            found = stub.SearchByText(request).categories
            assert found[0].category == "Skirt", (text, found)
            assert found[0].score == pytest.approx(1.0)
            assert found[1].score < 1.0
        request = pb.SearchByTextRequest(text="a tartan skirt", top_n=10, k=1)
        scores = [c.score for c in stub.SearchByText(request).categories]
        assert scores == sorted(scores, reverse=True)
        assert all(-1.0 <= score < 1.0 for score in scores)
        assert scores[0] > 0.5  # a cosine, not a dot product of short vectors (< 0.12)
    finally:
        for name in ("Skirt", "Kilts", "Dress"):
            stub.DeleteCategory(pb.DeleteCategoryRequest(name=name))


@pytest.mark.parametrize(
    ("prompts", "message"),
    [([""], "prompt 0 is empty"), (["x" * 301], "the limit is 300"), (["ok"] * 33, "limit is 32")],
)
def test_bad_prompts_are_refused_and_nothing_is_created(
    server: ServerProcess, prompts: list[str], message: str
) -> None:
    stub = server.stub()
    with pytest.raises(grpc.RpcError) as caught:
        stub.AddCategory(pb.AddCategoryRequest(name="Bad prompts", prompts=prompts))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (caught.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        stub.GetCategory(pb.GetCategoryRequest(name="Bad prompts"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_zero_shot_ranks_labels_and_refuses_bad_ones(server: ServerProcess) -> None:
    stub = server.stub()
    image = make_image("stripes", 3)
    labels = ["a zebra", "a sneaker", "a hat"]
    ranked = stub.ZeroShot(pb.ZeroShotRequest(image=image, labels=labels)).labels
    assert sorted(r.label for r in ranked) == sorted(labels)
    assert sum(r.score for r in ranked) == pytest.approx(1.0, abs=1e-4)
    assert [r.score for r in ranked] == sorted((r.score for r in ranked), reverse=True)
    for request, code in (
        (pb.ZeroShotRequest(image=image), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ZeroShotRequest(image=image, labels=["  "]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ZeroShotRequest(image=b"junk", labels=["a"]), grpc.StatusCode.INVALID_ARGUMENT),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stub.ZeroShot(request)
        assert caught.value.code() == code


@pytest.mark.dataset
@pytest.mark.skipif(not CLOTHING.is_dir(), reason="the clothing dataset is absent")
def test_real_photos_text_first_then_images(server: ServerProcess) -> None:
    stub = server.stub()
    for name in WANTED:
        stub.AddCategory(pb.AddCategoryRequest(name=name, prompts=[f"a photo of {name.lower()}"]))

    def accuracy() -> float:
        right = total = 0
        for name in WANTED:
            for photo in clothing_photos(name, 8, skip=20):
                answer = stub.Classify(pb.ClassifyRequest(image=photo)).classification
                right += answer.categories[0].category == name
                total += 1
        return right / total

    from_text = accuracy()
    assert from_text >= 0.6  # chance: 1/3 (plus the other tests' categories)
    for name in WANTED:  # images arrive: the text fades, the vote takes over
        references = [pb.ReferenceImage(image=p) for p in clothing_photos(name, 10)]
        stub.AddReferences(pb.AddReferencesRequest(category=name, references=references))
    assert accuracy() >= from_text - 0.05

    found = stub.SearchByText(pb.SearchByTextRequest(text="sneakers", top_n=3, k=5))
    assert found.categories[0].category == "Shoes"
    assert len(found.references) == 5
    assert found.references[0].category == "Shoes"


def test_the_text_commands(server: ServerProcess, tmp_path: Path) -> None:
    from tests.integration.test_cli import nearcat

    at = ("--server", server.address)
    added = nearcat("add-category", "Parasols", "--prompt", "a photo of a parasol", *at).stdout
    assert "added Parasols (0 reference images, prompts: a photo of a parasol)" in added
    image = tmp_path / "stripes.jpg"
    image.write_bytes(make_image("stripes", 4))
    ranked = nearcat("zero-shot", str(image), "--label", "a zebra", "--label", "a hat", *at)
    lines = ranked.stdout.splitlines()
    assert len(lines) == 2 and {line.split(maxsplit=1)[1] for line in lines} == {"a zebra", "a hat"}
    found = nearcat("search", "parasol", *at).stdout
    assert "categories (text similarity):" in found and "Parasols" in found
    empty = nearcat("zero-shot", str(image), "--label", " ", *at, check=False)
    assert empty.returncode != 0 and "INVALID_ARGUMENT" in empty.stderr + empty.stdout
    assert "prompts: a photo of a parasol" in nearcat("categories", *at).stdout
