"""A classification restricted to what the caller knows (`ClassifyOptions.within`): in process
with a real Valkey and the packaged model; over real gRPC the restriction, its refusals and
the answer's attributes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from embedder import load_artifact
from embedder.text import load_text_tower
from indexer.errors import FailedPrecondition, InvalidArgument
from indexer.store import Store
from server.catalog import Catalog, Prediction, ReferenceInput
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import ServerProcess, make_image

# Two departments: Patterns (stripes, checkers) and Round (dots); Empty has nothing yet.
TREE = {"Patterns": None, "Round": None, "Empty": None}
LEAVES = {"stripes": "Patterns", "checkers": "Patterns", "dots": "Round"}


@pytest.fixture(scope="module")
def model(model_artifact: Path):  # type: ignore[no-untyped-def]
    embedder = load_artifact(model_artifact)
    return embedder, load_text_tower(embedder)


@pytest.fixture
def catalog(store: Store, model) -> Iterator[Catalog]:  # type: ignore[no-untyped-def]
    embedder, text = model
    catalog = Catalog(store, embedder, text=text)
    store.seed_model(embedder.version)
    for name in TREE:
        catalog.add_category(name)
    for kind, parent in LEAVES.items():
        refs = [ReferenceInput(make_image(kind, s), {"group": str(s % 4)}) for s in range(12)]
        catalog.add_category(kind, parent=parent, references=refs)
    yield catalog
    catalog.close()


def one(catalog: Catalog, image: bytes, within: list[str], top_n: int = 5) -> Prediction:
    [result] = catalog.classify([image], top_n=top_n, within=within)
    assert isinstance(result, Prediction)
    return result


@pytest.mark.parametrize("calibrated", [False, True])
def test_only_categories_under_the_given_nodes_answer_and_they_share_all_the_probability(
    catalog: Catalog, calibrated: bool
) -> None:
    if calibrated:
        catalog.calibrate(group_by="group")
        assert catalog.calibration.head is not None  # the head's share is restricted too
    dots = make_image("dots", 500)
    free = one(catalog, dots, [])
    assert free.category == "dots"
    kept = one(catalog, dots, ["Patterns"])
    assert {c.category for c in kept.categories} <= {"stripes", "checkers"}
    assert {n.category for n in kept.neighbors} <= {"stripes", "checkers"}
    assert len(kept.neighbors) == len(free.neighbors)  # k of them, all from Patterns
    assert sum(c.score for c in kept.categories) == pytest.approx(1.0, abs=1e-5)
    assert kept.confidence == kept.categories[0].score
    assert [c.path for c in kept.categories][0][0] == "Patterns"
    # An allow-list of leaves, and a department mixed with a leaf of another one.
    assert {c.category for c in one(catalog, dots, ["checkers"]).categories} == {"checkers"}
    mixed = one(catalog, make_image("stripes", 501), ["Round", "stripes"])
    assert mixed.category == "stripes"
    assert {c.category for c in mixed.categories} <= {"stripes", "dots"}


def test_a_restriction_to_the_right_department_never_loses_the_answer(catalog: Catalog) -> None:
    for kind, parent in LEAVES.items():
        for seed in range(600, 603):
            image = make_image(kind, seed)
            free, kept = one(catalog, image, []), one(catalog, image, [parent])
            if free.category == kind:
                assert kept.category == kind
                assert kept.confidence >= free.confidence - 1e-6


def test_unknown_names_and_empty_departments_are_refused_with_what_to_do(
    catalog: Catalog,
) -> None:
    with pytest.raises(InvalidArgument, match=r"'Fruitt'.*no such category.*ListCategories"):
        catalog.classify([make_image("dots", 1)], within=["Patterns", "Fruitt"])
    with pytest.raises(FailedPrecondition, match=r"nothing under 'Empty' can be named yet"):
        catalog.classify([make_image("dots", 1)], within=["Empty"])


def test_the_restriction_and_attributes_travel_over_grpc(
    tmp_path: Path, model_artifact: Path
) -> None:
    server = ServerProcess(tmp_path / "data", model_artifact).start()
    try:
        stub = server.stub()
        for name in TREE:
            stub.AddCategory(pb.AddCategoryRequest(name=name))
        for kind, parent in LEAVES.items():
            refs = [
                pb.ReferenceImage(
                    image=make_image(kind, s), attributes={"round": str(kind == "dots")}
                )
                for s in range(4)
            ]
            stub.AddCategory(pb.AddCategoryRequest(name=kind, parent=parent, references=refs))
        got = stub.GetCategory(pb.GetCategoryRequest(name="dots", include_references=True))
        assert {dict(r.attributes)["round"] for r in got.references} == {"True"}
        free = stub.Classify(pb.ClassifyRequest(image=make_image("dots", 9)), timeout=60)
        [round_] = free.classification.attributes
        assert round_.name == "round" and round_.values[0].value == "True"
        assert round_.voters == len(free.classification.neighbors)
        options = pb.ClassifyOptions(within=["Patterns"])
        answer = stub.Classify(
            pb.ClassifyRequest(image=make_image("dots", 9), options=options), timeout=60
        )
        assert {c.category for c in answer.classification.categories} <= {"stripes", "checkers"}
        batch = stub.ClassifyBatch(
            pb.ClassifyBatchRequest(images=[make_image("dots", 9)], options=options), timeout=60
        )
        [item] = batch.results
        assert {n.category for n in item.classification.neighbors} <= {"stripes", "checkers"}
        with pytest.raises(grpc.RpcError) as refused:
            stub.Classify(
                pb.ClassifyRequest(
                    image=make_image("dots", 9), options=pb.ClassifyOptions(within=["Nope"])
                ),
                timeout=60,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'Nope'" in (refused.value.details() or "")
    finally:
        assert server.stop() == 0, server.log()
