"""The service end to end: a real `nearcat serve` process, real Valkey, loopback gRPC."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

MAX_IMAGE_BYTES = 3_000_000
MAX_IMAGE_PIXELS = 4_000_000
MAX_MESSAGE_BYTES = 8_000_000


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("service") / "data",
        model_artifact,
        [
            "--max-image-bytes",
            str(MAX_IMAGE_BYTES),
            "--max-image-pixels",
            str(MAX_IMAGE_PIXELS),
            "--max-message-bytes",
            str(MAX_MESSAGE_BYTES),
        ],
    ).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def stub(server: ServerProcess):  # type: ignore[no-untyped-def]
    stub = server.stub()
    for kind in KINDS:
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(6)]
        stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs))
    return stub


@pytest.fixture(scope="module")
def store_state(server: ServerProcess) -> Callable[[], tuple[int, int]]:
    """(number of keys, change stream length) of the server's store, read directly."""
    client = redis.Redis(unix_socket_path=str(server.data_dir / "valkey" / "valkey.sock"))
    return lambda: (client.dbsize(), client.xlen("nearcat:changes"))


def classify(stub, image: bytes) -> pb.ClassifyResponse:  # type: ignore[no-untyped-def]
    return stub.Classify(pb.ClassifyRequest(image=image), timeout=60)


def png(width: int, height: int, noise: bool = False) -> bytes:
    if noise:
        image = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    else:
        image = Image.new("RGB", (width, height), (0, 0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- must show 1: a new category is classifiable on the very next call ---------------------


def test_category_added_by_add_references_wins_the_next_classify(stub) -> None:  # type: ignore[no-untyped-def]
    query = make_image("stripes", 1000)
    stub.AddCategory(pb.AddCategoryRequest(name="Zebra", metadata={"owner": "merch"}))
    added = stub.AddReferences(
        pb.AddReferencesRequest(
            category="Zebra",
            references=[pb.ReferenceImage(image=query, metadata={"sku": "Z-1"})],
        )
    )
    assert (added.added, added.duplicates, added.category.reference_count) == (1, 0, 1)
    response = classify(stub, query)
    top = response.classification.categories[0]
    assert top.category == "Zebra" and list(top.path) == ["Zebra"]
    nearest = response.classification.neighbors[0]
    assert nearest.reference_id == added.references[0].reference_id
    assert nearest.similarity == pytest.approx(1.0, abs=1e-3)
    assert response.model_version.startswith("efficientnet_lite0-")
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Zebra"))
    assert classify(stub, query).classification.categories[0].category != "Zebra"


def test_generated_kinds_are_told_apart(stub) -> None:  # type: ignore[no-untyped-def]
    correct = 0
    for kind in KINDS:
        for seed in range(500, 504):
            correct += (
                classify(stub, make_image(kind, seed)).classification.categories[0].category == kind
            )
    assert correct >= 10, f"{correct}/12 correct"


def test_taxonomy_paths_and_category_reads(stub) -> None:  # type: ignore[no-untyped-def]
    stub.AddCategory(pb.AddCategoryRequest(name="Patterns"))
    made = stub.AddCategory(
        pb.AddCategoryRequest(
            name="Tartan",
            parent="Patterns",
            references=[pb.ReferenceImage(image=make_image("checkers", 900), metadata={"a": "b"})],
        )
    )
    assert list(made.category.path) == ["Patterns", "Tartan"]
    got = stub.GetCategory(pb.GetCategoryRequest(name="Tartan", include_references=True))
    assert got.category.reference_count == 1 and got.category.parent == "Patterns"
    assert [dict(r.metadata) for r in got.references] == [{"a": "b"}]
    response = classify(stub, make_image("checkers", 900))
    assert list(response.classification.categories[0].path) == ["Patterns", "Tartan"]
    names = [c.name for c in stub.ListCategories(pb.ListCategoriesRequest()).categories]
    assert names == sorted(names) and {"Patterns", "Tartan", *KINDS} <= set(names)
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Tartan"))
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Patterns"))


def test_batch_reports_each_image_on_its_own(stub) -> None:  # type: ignore[no-untyped-def]
    response = stub.ClassifyBatch(
        pb.ClassifyBatchRequest(
            images=[make_image("dots", 700), b"not an image", make_image("checkers", 701)],
            options=pb.ClassifyOptions(top_n=2),
        )
    )
    first, bad, third = response.results
    assert first.classification.categories[0].category == "dots"
    assert len(first.classification.categories) == 2
    assert bad.error.code == "INVALID_ARGUMENT" and "image 1" in bad.error.message
    assert third.classification.categories[0].category == "checkers"


def test_a_name_is_one_category_whichever_unicode_form_it_comes_in(stub, server) -> None:  # type: ignore[no-untyped-def]
    composed, decomposed = "Caf\u00e9", "Cafe\u0301"  # "é" as one code point, or e + accent
    photo = make_image("stripes", 810)
    made = stub.AddCategory(
        pb.AddCategoryRequest(name=decomposed, references=[pb.ReferenceImage(image=photo)])
    )
    assert made.category.name == composed and list(made.category.path) == [composed]
    with pytest.raises(grpc.RpcError) as caught:
        stub.AddCategory(pb.AddCategoryRequest(name=composed))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    added = stub.AddReferences(
        pb.AddReferencesRequest(
            category=decomposed, references=[pb.ReferenceImage(image=make_image("stripes", 811))]
        )
    )
    assert list(added.category.path) == [composed] and added.category.reference_count == 2
    got = stub.GetCategory(pb.GetCategoryRequest(name=decomposed, include_references=True))
    assert got.category.name == composed and len(got.references) == 2
    assert classify(stub, photo).classification.categories[0].category == composed
    # Another category whose name differs only in case is allowed, and the server warns.
    stub.AddCategory(pb.AddCategoryRequest(name="CAFE\u0301"))
    warned = [json.loads(line)["msg"] for line in server.log().splitlines() if "differs" in line]
    assert any("category 'CAF\u00c9' differs only in case from 'Caf\u00e9'" in m for m in warned)
    assert stub.DeleteCategory(pb.DeleteCategoryRequest(name="CAF\u00c9")).references_removed == 0
    assert stub.DeleteCategory(pb.DeleteCategoryRequest(name=decomposed)).references_removed == 2


def test_the_same_image_twice_is_stored_once(stub, store_state) -> None:  # type: ignore[no-untyped-def]
    image = make_image("dots", 0)  # already a reference of "dots"
    before = store_state()
    response = stub.AddReferences(
        pb.AddReferencesRequest(
            category="dots",
            references=[pb.ReferenceImage(image=image), pb.ReferenceImage(image=image)],
        )
    )
    assert (response.added, response.duplicates) == (0, 2)
    assert all(r.duplicate for r in response.references)
    assert store_state() == before


# -- must show 3: every bad input gets its status code and changes nothing -----------------

TRUNCATED_JPEG = make_image("dots", 1)[:600]
ZEBRA_ID = "00000000deadbeef"  # well-formed, unknown

BAD_CALLS = {
    "classify non-image bytes": (
        lambda s: s.Classify(pb.ClassifyRequest(image=b"GIF89a not really")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "image 0",
    ),
    "classify empty bytes": (
        lambda s: s.Classify(pb.ClassifyRequest(image=b"")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    ),
    "classify truncated jpeg": (
        lambda s: s.Classify(pb.ClassifyRequest(image=TRUNCATED_JPEG)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "truncated",
    ),
    "classify too many pixels": (
        lambda s: s.Classify(pb.ClassifyRequest(image=png(2500, 2000))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "megapixels",
    ),
    "classify too many bytes": (
        lambda s: s.Classify(pb.ClassifyRequest(image=png(1100, 1000, noise=True))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "MB",
    ),
    "message over the size limit": (
        lambda s: s.Classify(pb.ClassifyRequest(image=b"\xff" * (MAX_MESSAGE_BYTES + 1))),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
    "classify top_n out of range": (
        lambda s: s.Classify(
            pb.ClassifyRequest(image=make_image("dots", 3), options=pb.ClassifyOptions(top_n=-1))
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "top_n",
    ),
    "empty category name": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name="")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    ),
    "name with a control character": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name="Bad\nName")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "control",
    ),
    "name with the path separator": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name="A > B")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reserved",
    ),
    "name with surrounding spaces": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name=" Shoes")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spaces",
    ),
    "existing category": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name="dots")),
        grpc.StatusCode.ALREADY_EXISTS,
        "AddReferences",
    ),
    "unknown parent": (
        lambda s: s.AddCategory(pb.AddCategoryRequest(name="Orphan", parent="Nowhere")),
        grpc.StatusCode.NOT_FOUND,
        "Nowhere",
    ),
    "new category with one bad image": (
        lambda s: s.AddCategory(
            pb.AddCategoryRequest(
                name="HalfBad",
                references=[
                    pb.ReferenceImage(image=make_image("dots", 41)),
                    pb.ReferenceImage(image=b"junk"),
                ],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 1",
    ),
    "references for an unknown category": (
        lambda s: s.AddReferences(
            pb.AddReferencesRequest(
                category="Nowhere", references=[pb.ReferenceImage(image=make_image("dots", 42))]
            )
        ),
        grpc.StatusCode.NOT_FOUND,
        "AddCategory",
    ),
    "references with one bad image": (
        lambda s: s.AddReferences(
            pb.AddReferencesRequest(
                category="dots",
                references=[
                    pb.ReferenceImage(image=make_image("dots", 43)),
                    pb.ReferenceImage(image=TRUNCATED_JPEG),
                ],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 1",
    ),
    "no references": (
        lambda s: s.AddReferences(pb.AddReferencesRequest(category="dots")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "no references",
    ),
    "remove an unknown reference": (
        lambda s: s.RemoveReferences(
            pb.RemoveReferencesRequest(reference_ids=["00000000deadbeef"])
        ),
        grpc.StatusCode.NOT_FOUND,
        "deadbeef",
    ),
    "remove a malformed reference id": (
        lambda s: s.RemoveReferences(
            pb.RemoveReferencesRequest(reference_ids=[ZEBRA_ID, "not-an-id", "FFFFFFFFFFFFFFFF"])
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "2 malformed reference id(s): 'not-an-id', 'FFFFFFFFFFFFFFFF'; a reference id is 16 "
        "lowercase hexadecimal digits",
    ),
    "search text with a control character": (
        lambda s: s.SearchByText(pb.SearchByTextRequest(text="red\x00sneakers")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "control",
    ),
    "search text with a line break": (
        lambda s: s.SearchByText(pb.SearchByTextRequest(text="red\nsneakers")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "control",
    ),
    "a 1x1 reference": (
        lambda s: s.AddReferences(
            pb.AddReferencesRequest(
                category="dots", references=[pb.ReferenceImage(image=png(1, 1))]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 0: image too small to be a reference: 1x1 pixels; each side must be at least 32",
    ),
    "a 1x10000 reference": (
        lambda s: s.AddReferences(
            pb.AddReferencesRequest(
                category="dots", references=[pb.ReferenceImage(image=png(1, 10000))]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 0: image too small",
    ),
    "a sliver among good references": (
        lambda s: s.AddReferences(
            pb.AddReferencesRequest(
                category="dots",
                references=[
                    pb.ReferenceImage(image=make_image("dots", 44)),
                    pb.ReferenceImage(image=png(2100, 100)),
                ],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 1: image too narrow to be a reference: 2100x100 pixels, an aspect ratio of "
        "1:21; at most 1:20",
    ),
    "a new category with a sliver": (
        lambda s: s.AddCategory(
            pb.AddCategoryRequest(
                name="Banners", references=[pb.ReferenceImage(image=png(40, 1000))]
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reference 0: image too narrow",
    ),
    "delete an unknown category": (
        lambda s: s.DeleteCategory(pb.DeleteCategoryRequest(name="Nowhere")),
        grpc.StatusCode.NOT_FOUND,
        "Nowhere",
    ),
    "get an unknown category": (
        lambda s: s.GetCategory(pb.GetCategoryRequest(name="Nowhere")),
        grpc.StatusCode.NOT_FOUND,
        "Nowhere",
    ),
}


def test_a_request_over_the_message_limit_says_how_to_split_it(  # type: ignore[no-untyped-def]
    server, stub, store_state, tmp_path: Path
) -> None:
    """gRPC refuses it before nearcat sees it (RESOURCE_EXHAUSTED, in its own words); the
    CLI names the limit and how many of the images one call can carry."""
    from tests.integration.test_cli import nearcat

    paths = []
    for i in range(4):  # 2.2 MB each: 8.9 MB in one request, over the 7.6 MB limit
        paths.append(tmp_path / f"{i}.png")
        paths[-1].write_bytes(png(860, 860, noise=True))
    before = store_state()
    at = ("--server", server.address)
    added = nearcat("add-references", "dots", *map(str, paths), *at, check=False)
    assert added.returncode == 2, added.stderr
    assert (
        "nearcat: the request is 8.5 MB, more than the 7.6 MB the server accepts in one message "
        "(nearcat serve --max-message-bytes): split it into several AddReferences calls of at "
        "most 3 of these images each (run `nearcat add-references` once per group)"
    ) in added.stderr
    classified = nearcat("classify", *map(str, paths), *at, check=False)
    assert classified.returncode == 2
    assert "several ClassifyBatch calls of at most 3 of these images each" in classified.stderr
    assert store_state() == before
    # split as told, it goes through
    nearcat("add-references", "dots", *map(str, paths[:3]), *at)
    nearcat("add-references", "dots", str(paths[3]), *at)
    gone = stub.GetCategory(pb.GetCategoryRequest(name="dots", include_references=True))
    new = [r.id for r in gone.references if r.metadata.get("source", "").startswith(str(tmp_path))]
    assert len(new) == 4
    stub.RemoveReferences(pb.RemoveReferencesRequest(reference_ids=new))


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_gets_its_status_and_changes_nothing(stub, store_state, case: str) -> None:  # type: ignore[no-untyped-def]
    call, code, words = BAD_CALLS[case]
    before = store_state()
    with pytest.raises(grpc.RpcError) as caught:
        call(stub)
    assert caught.value.code() == code, caught.value.details()
    assert words in (caught.value.details() or "")
    assert store_state() == before


def test_deleting_a_parent_with_children_is_refused(stub, store_state) -> None:  # type: ignore[no-untyped-def]
    stub.AddCategory(pb.AddCategoryRequest(name="Clothes"))
    stub.AddCategory(pb.AddCategoryRequest(name="Socks", parent="Clothes"))
    before = store_state()
    with pytest.raises(grpc.RpcError) as caught:
        stub.DeleteCategory(pb.DeleteCategoryRequest(name="Clothes"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Socks" in caught.value.details()
    assert store_state() == before
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Socks"))
    stub.DeleteCategory(pb.DeleteCategoryRequest(name="Clothes"))


def test_an_expired_deadline_is_deadline_exceeded(stub) -> None:  # type: ignore[no-untyped-def]
    images = [make_image("dots", i) for i in range(64)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.ClassifyBatch(pb.ClassifyBatchRequest(images=images), timeout=0.05)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


# -- operations: health, reflection, status, graceful stop ---------------------------------


def test_health_and_reflection(server: ServerProcess, stub) -> None:  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(server.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "nearcat.v1.Nearcat"):
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [answer] = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for s in answer.list_services_response.service}
    assert "nearcat.v1.Nearcat" in names


def test_status_reports_the_model_and_index(stub) -> None:  # type: ignore[no-untyped-def]
    status = stub.GetStatus(pb.GetStatusRequest())
    assert status.model_version.startswith("efficientnet_lite0-")
    assert status.embedding_dim == 1280
    assert status.index_size >= 6 * len(KINDS)
    assert status.images_embedded >= status.index_size


def test_sigterm_lets_in_flight_calls_finish(tmp_path: Path, model_artifact: Path) -> None:
    process = ServerProcess(tmp_path / "data", model_artifact).start()
    stub = process.stub()
    stub.AddCategory(
        pb.AddCategoryRequest(
            name="dots", references=[pb.ReferenceImage(image=make_image("dots", 0))]
        )
    )
    images = [make_image("dots", i) for i in range(48)]
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["response"] = stub.ClassifyBatch(
                pb.ClassifyBatchRequest(images=images), timeout=120
            )
        except grpc.RpcError as exc:
            outcome["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.5)  # the batch is being embedded
    assert process.stop() == 0
    caller.join()
    assert "error" not in outcome, outcome.get("error")
    assert len(outcome["response"].results) == 48  # type: ignore[attr-defined]


# -- must show 2: kill -9 right after an acknowledged write loses nothing -------------------


def test_kill_9_after_acknowledged_adds_loses_nothing_and_reembeds_nothing(
    tmp_path: Path, model_artifact: Path
) -> None:
    data_dir = tmp_path / "data"
    process = ServerProcess(data_dir, model_artifact).start()
    stub = process.stub()
    acknowledged: dict[str, list[str]] = {}
    for kind in KINDS:
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(4)]
        response = stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs[:2]))
        ids = [r.reference_id for r in response.references]
        response = stub.AddReferences(pb.AddReferencesRequest(category=kind, references=refs[2:]))
        acknowledged[kind] = ids + [r.reference_id for r in response.references]
    process.kill()  # straight after the last acknowledgement

    restarted = ServerProcess(data_dir, model_artifact).start()
    try:
        stub = restarted.stub()
        status = stub.GetStatus(pb.GetStatusRequest())
        total = sum(len(ids) for ids in acknowledged.values())
        assert status.index_size == total
        assert status.vectors_loaded_at_start == total
        assert status.images_embedded == 0  # loaded from the store, not re-embedded
        for kind, ids in acknowledged.items():
            got = stub.GetCategory(pb.GetCategoryRequest(name=kind, include_references=True))
            assert sorted(r.id for r in got.references) == sorted(ids)
        for kind in KINDS:
            top = classify(stub, make_image(kind, 2)).classification
            assert top.categories[0].category == kind
            assert top.neighbors[0].similarity == pytest.approx(1.0, abs=1e-3)
    finally:
        assert restarted.stop() == 0, restarted.log()
