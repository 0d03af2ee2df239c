"""Issue 6, must show 4: fuzzed image bytes and request fields against a real server.

Every answer is OK or one of the defined client-error codes (never INTERNAL or UNKNOWN), the
server stays up, reads never change the store, and a write that fails changes nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

DEFINED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _encoded(fmt: str, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


SEEDS = [make_image("dots", 7), _encoded("PNG", (40, 30)), _encoded("WEBP", (30, 40))]


@st.composite
def image_bytes(draw: st.DrawFn) -> bytes:
    """Random bytes, or a real JPEG/PNG/WebP cut short, with bytes flipped, or spliced."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "spliced"]))
    if kind == "random":
        return bytes(draw(st.binary(max_size=4096)))
    data = bytearray(draw(st.sampled_from(SEEDS)))
    if kind == "truncated":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "flipped":
        for _ in range(draw(st.integers(1, 20))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
        return bytes(data)
    position = draw(st.integers(0, len(data)))
    return bytes(data[:position]) + draw(st.binary(max_size=512)) + bytes(data[position:])


names = st.text(max_size=120)
metadata = st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4)
int32 = st.integers(-(2**31), 2**31 - 1)
# Mostly in range, so most calls get as far as decoding the image; sometimes anything.
small_or_any = st.one_of(st.integers(0, 12), st.integers(0, 12), st.integers(0, 12), int32)
options = st.builds(pb.ClassifyOptions, top_n=small_or_any, k=small_or_any)
references = st.lists(
    st.builds(pb.ReferenceImage, image=image_bytes(), metadata=metadata), max_size=3
)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", model_artifact).start()
    stub = process.stub()
    for kind in KINDS:
        refs = [pb.ReferenceImage(image=make_image(kind, seed)) for seed in range(3)]
        stub.AddCategory(pb.AddCategoryRequest(name=kind, references=refs), timeout=60)
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def store_state(server: ServerProcess) -> Callable[[], tuple[int, int]]:
    client = redis.Redis(unix_socket_path=str(server.data_dir / "valkey" / "valkey.sock"))
    return lambda: (client.dbsize(), client.xlen("nearcat:changes"))


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return grpc.StatusCode.OK, call()
    except grpc.RpcError as exc:
        assert exc.code() in DEFINED, f"{exc.code()}: {exc.details()}"
        return exc.code(), None


def check_read(store_state: Callable[[], tuple[int, int]], call: Callable[[], Any]) -> Any:
    before = store_state()
    _, answer = outcome(call)
    assert store_state() == before
    return answer


def check_write(store_state: Callable[[], tuple[int, int]], call: Callable[[], Any]) -> None:
    before = store_state()
    code, _ = outcome(call)
    if code != grpc.StatusCode.OK:
        assert store_state() == before, code


@FUZZ
@given(image=image_bytes(), options=options)
def test_fuzzed_classify(
    server: ServerProcess, store_state: Any, image: bytes, options: Any
) -> None:
    stub = server.stub()
    # skip_review: an unsure answer would be queued for a person, a write of its own.
    request = pb.ClassifyRequest(image=image, options=options, skip_review=True)
    check_read(store_state, lambda: stub.Classify(request, timeout=60))


@FUZZ
@given(images=st.lists(image_bytes(), max_size=4), options=options)
def test_fuzzed_classify_batch(
    server: ServerProcess, store_state: Any, images: list[bytes], options: Any
) -> None:
    stub = server.stub()
    request = pb.ClassifyBatchRequest(images=images, options=options, skip_review=True)
    answer = check_read(store_state, lambda: stub.ClassifyBatch(request, timeout=60))
    for item in answer.results if answer is not None else []:
        if item.HasField("error"):
            assert grpc.StatusCode[item.error.code] in DEFINED, item.error


@FUZZ
@given(name=names, parent=names, metadata=metadata, references=references)
def test_fuzzed_add_category(
    server: ServerProcess, store_state: Any, name: str, parent: str, metadata: Any, references: Any
) -> None:
    stub = server.stub()
    request = pb.AddCategoryRequest(
        name=name, parent=parent, metadata=metadata, references=references
    )
    check_write(store_state, lambda: stub.AddCategory(request, timeout=60))


@FUZZ
@given(category=st.one_of(names, st.sampled_from(KINDS)), references=references)
def test_fuzzed_add_references(
    server: ServerProcess, store_state: Any, category: str, references: Any
) -> None:
    stub = server.stub()
    request = pb.AddReferencesRequest(category=category, references=references)
    check_write(store_state, lambda: stub.AddReferences(request, timeout=60))


@FUZZ
@given(
    ids=st.lists(
        st.one_of(st.text(max_size=40), st.text("0123456789abcdef", min_size=16, max_size=16)),
        max_size=5,
    ),
    name=names.filter(lambda n: n not in KINDS),
    include=st.booleans(),
)
def test_fuzzed_removes_deletes_and_reads(
    server: ServerProcess, store_state: Any, ids: list[str], name: str, include: bool
) -> None:
    stub = server.stub()
    check_write(
        store_state, lambda: stub.RemoveReferences(pb.RemoveReferencesRequest(reference_ids=ids))
    )
    check_write(store_state, lambda: stub.DeleteCategory(pb.DeleteCategoryRequest(name=name)))
    check_read(
        store_state,
        lambda: stub.GetCategory(pb.GetCategoryRequest(name=name, include_references=include)),
    )


def test_the_server_is_still_up_after_the_fuzzing(server: ServerProcess) -> None:
    assert server.process is not None and server.process.poll() is None
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(server.address))
    answer = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    stub = server.stub()
    top = stub.Classify(pb.ClassifyRequest(image=make_image("dots", 1)), timeout=60)
    assert top.classification.categories  # fuzzed adds may have moved the answer: any is fine
