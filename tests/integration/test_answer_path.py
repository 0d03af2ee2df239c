"""One answer path: the server and `nearcat eval` answer the same image the same way.

A real server (gRPC on a real port, embedded Valkey) and an in-process evaluation get the
same references, the same labelled photos and the same queries; every query must come back
with the same category, confidence and decision from both, after a cold-start calibration
(leave-one-shoot-out) and after one on labelled traffic. This test fails if the two ever
compute the served answer differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from embedder import load_artifact
from embedder.datasets import LabeledImage
from server.evaluation.evaluate import evaluate
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from tests.helpers import KINDS, ServerProcess, make_image

pytestmark = pytest.mark.integration

DECISION = {pb.AUTO_ACCEPT: "auto_accept", pb.FLAG: "flag", pb.REVIEW: "review",
            pb.UNKNOWN: "unknown"}  # fmt: skip


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, model_artifact: Path
) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("path") / "data", model_artifact).start()
    yield process
    assert process.stop() == 0, process.log()


def written(folder: Path, seeds: range) -> list[LabeledImage]:
    out = []
    for kind in KINDS:
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            path = folder / kind / f"{seed}.jpg"
            path.write_bytes(make_image(kind, seed))
            out.append(LabeledImage(path, kind))
    return out


def same_answers(stub, evaluation, queries: list[LabeledImage]) -> None:  # type: ignore[no-untyped-def]
    assert evaluation.confidence is not None
    for n, query in enumerate(queries):
        served = stub.Classify(pb.ClassifyRequest(image=query.path.read_bytes())).classification
        offline = evaluation.knn.answers[n]
        assert served.categories[0].category == offline.predicted, query.path
        assert served.confidence == pytest.approx(offline.confidence, abs=1e-4), query.path
        assert DECISION[served.decision] == evaluation.confidence.decisions[n], query.path


def test_the_server_and_eval_serve_the_same_answer(
    server: ServerProcess, model_artifact: Path, tmp_path: Path
) -> None:
    references = written(tmp_path / "refs", range(14))
    labelled = written(tmp_path / "labelled", range(200, 234))  # 102 photos
    queries = written(tmp_path / "queries", range(300, 306))
    stub = server.stub()
    for kind in KINDS:
        images = [pb.ReferenceImage(image=r.path.read_bytes()) for r in references
                  if r.category == kind]  # fmt: skip
        stub.AddCategory(pb.AddCategoryRequest(name=kind, references=images))
    model = load_artifact(model_artifact)

    cold = stub.Calibrate(pb.CalibrateRequest()).calibration
    assert cold.source.startswith("leave-one-shoot-out")
    same_answers(stub, evaluate(references, queries, model), queries)

    photos = [pb.LabelledImage(image=i.path.read_bytes(), category=i.category) for i in labelled]
    added = stub.AddLabelled(pb.AddLabelledRequest(images=photos, source="test"))
    assert (added.added, added.total) == (102, 102)
    warm = stub.Calibrate(pb.CalibrateRequest()).calibration
    assert warm.source.startswith("102 labelled photos")
    same_answers(stub, evaluate(references, queries, model, labelled=labelled), queries)
