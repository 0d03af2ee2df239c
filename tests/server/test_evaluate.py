"""Evaluation: metrics recomputed by hand, kNN/probe/leakage on fixed vectors, and the whole
pipeline on generated images with the packaged model."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import server.evaluation.report as report_module
from embedder.artifact import create_artifact, load_artifact
from embedder.datasets import LabeledImage, load_folder_tree
from embedder.model import Embedder
from indexer.calibration import Calibration, expected_calibration_error, reliability_bins
from indexer.vote import VoteConfig
from server.commands.evaluate import print_summary
from server.evaluation.embedding import EmbeddedImages, EmbeddingCache, embed_images
from server.evaluation.evaluate import (
    Evaluation,
    at_threshold,
    confidence_report,
    evaluate,
    find_leakage,
    knn_answers,
    linear_probe_answers,
    over_seeds,
)
from server.evaluation.metrics import (
    Answer,
    hierarchy_accuracy,
    macro_top1,
    per_category,
    score,
    top_k_accuracy,
    worst_categories,
)
from server.evaluation.report import confusion_matrix, summary_markdown, write_report
from tests.helpers import make_image, tiny_model_config

# -- metrics on hand-built answers ---------------------------------------------------------

ANSWERS = [
    Answer("a", ("a", "b", "c"), (0.9, 0.05, 0.05)),  # right
    Answer("a", ("b", "a", "c"), (0.6, 0.3, 0.1)),  # wrong, right in top 3
    Answer("a", ("b", "c", "d"), (0.7, 0.2, 0.1)),  # wrong
    Answer("b", ("b", "a"), (0.85, 0.15)),  # right
]


def test_accuracy_per_category_and_macro() -> None:
    assert top_k_accuracy(ANSWERS, 1) == 0.5
    assert top_k_accuracy(ANSWERS, 3) == 0.75
    categories = per_category(ANSWERS)
    assert categories["a"].n == 3
    assert categories["a"].top1 == pytest.approx(1 / 3)
    assert categories["a"].top3 == pytest.approx(2 / 3)
    assert (categories["b"].n, categories["b"].top1, categories["b"].top3) == (1, 1.0, 1.0)
    # macro weighs the one "b" query as much as the three "a" ones
    assert macro_top1(categories) == pytest.approx((1 / 3 + 1) / 2)
    assert worst_categories(categories, 1) == ["a"]


def test_ece_by_hand() -> None:
    # 15 bins; each confidence lands in its own bin: ECE = mean |correct - confidence|
    confidences = [a.confidence for a in ANSWERS]
    correct = [a.hit(1) for a in ANSWERS]
    bins = reliability_bins(confidences, correct)
    assert len(bins) == 15 and sum(b.count for b in bins) == 4
    assert expected_calibration_error(bins) == pytest.approx((0.1 + 0.6 + 0.7 + 0.15) / 4)
    # two in one bin: accuracy 0.5 against mean confidence 0.96
    shared = reliability_bins([0.95, 0.97], [True, False])
    assert [b.count for b in shared if b.count] == [2]
    assert expected_calibration_error(shared) == pytest.approx(0.46)
    # right as often as it claims: no calibration error
    calibrated = reliability_bins([0.75] * 4, [True, True, True, False])
    assert expected_calibration_error(calibrated) == pytest.approx(0.0)


def test_reliability_bin_edges() -> None:
    bins = reliability_bins([0.0, 1 / 15, 1.0], [True, True, True], bins=15)
    assert bins[0].count == 2  # 0 and the upper edge 1/15 both belong to (0, 1/15]
    assert bins[-1].count == 1 and bins[-1].upper == 1.0


PARENTS: dict[str, str | None] = {
    "Patterns": None,
    "Lines": "Patterns",
    "Grids": "Patterns",
    "stripes": "Lines",
    "checkers": "Grids",
    "Shapes": None,
    "dots": "Shapes",
}


def test_hierarchy_levels_judge_the_predicted_path() -> None:
    answers = [
        Answer("stripes", ("checkers",), (1.0,)),  # right at level 1 (Patterns), wrong below
        Answer("dots", ("stripes",), (1.0,)),  # wrong from the top
        Answer("stripes", ("stripes",), (1.0,)),  # right everywhere
    ]
    levels = hierarchy_accuracy(answers, PARENTS)
    assert levels == pytest.approx({"level_1": 2 / 3, "level_2": 1 / 3, "leaf": 1 / 3})
    assert hierarchy_accuracy(ANSWERS, {"a": None, "b": None}) == {"leaf": 0.5}


def test_score_reports_held_out_apart() -> None:
    metrics = score(ANSWERS, held_out=["b"])
    assert metrics.held_out is not None and metrics.seen is not None
    assert (metrics.held_out.n, metrics.held_out.top1) == (1, 1.0)
    assert metrics.seen.n == 3 and metrics.seen.top1 == pytest.approx(1 / 3)
    data = metrics.to_dict()
    assert data["held_out"]["held_out"]["top1"] == 1.0
    assert data["worst_categories"][0] == {"category": "a", "n": 3, "top1": 0.3333, "top3": 0.6667}
    assert "held_out" not in score(ANSWERS).to_dict()


# -- classifiers and leakage on fixed vectors ----------------------------------------------


def embedded(labels: list[str], vectors: list[list[float]], names: list[str]) -> EmbeddedImages:
    array = np.asarray(vectors, dtype=np.float32)
    array /= np.linalg.norm(array, axis=1, keepdims=True)
    return EmbeddedImages(
        [LabeledImage(Path(n), c) for n, c in zip(names, labels, strict=True)],
        [f"sha-{n}" for n in names],
        array,
    )


def test_knn_answers_vote_like_the_server() -> None:
    references = embedded(["a", "a", "b"], [[1, 0], [1, 0.1], [0, 1]], ["r1", "r2", "r3"])
    queries = embedded(["a", "b"], [[1, 0.05], [0.1, 1]], ["q1", "q2"])
    vote = VoteConfig(k=3, votes_per_category=3, temperature=0.1)
    answers = knn_answers(references, queries, vote)
    assert [a.predicted for a in answers] == ["a", "b"]
    # by hand for q1: weights exp(cos / T) of its three neighbours, normalised
    q = queries.vectors[0]
    sims = references.vectors @ q
    weights = np.exp(sims / 0.1)
    assert answers[0].confidence == pytest.approx(weights[:2].sum() / weights.sum(), rel=1e-5)
    assert answers[0].categories == ("a", "b")


def test_linear_probe_separates_separable_vectors() -> None:
    rng = np.random.default_rng(0)
    centres = {"a": [5.0, 0, 0], "b": [0, 5.0, 0], "c": [0, 0, 5.0]}
    labels = [c for c in centres for _ in range(10)]
    vectors = [list(np.add(centres[c], rng.normal(0, 0.5, 3))) for c in labels]
    references = embedded(labels, vectors, [f"r{i}" for i in range(30)])
    queries = embedded(["a", "b", "c"], list(centres.values()), ["qa", "qb", "qc"])
    answers = linear_probe_answers(references, queries)
    assert [a.predicted for a in answers] == ["a", "b", "c"]
    assert all(math.isclose(sum(a.scores), 1.0, rel_tol=1e-6) for a in answers)


def test_leakage_flags_identical_and_near_identical_only() -> None:
    references = embedded(["a", "b"], [[1, 0, 0], [0, 1, 0]], ["r1", "r2"])
    queries = embedded(
        ["a", "b", "a"], [[1, 0, 0], [0.1, 1, 0], [0.5, 0, 1]], ["same-bytes", "resized", "new"]
    )
    queries.shas[0] = references.shas[0]  # the same file
    leakage = find_leakage(references, queries, threshold=0.98)
    assert (leakage.identical, leakage.near_identical) == (1, 1)  # cos(resized, r2) = 0.995
    assert [(str(p.query), p.identical) for p in leakage.examples] == [
        ("same-bytes", True),
        ("resized", False),
    ]
    assert find_leakage(references, queries, threshold=0.999).near_identical == 0


# -- the whole pipeline on generated images ------------------------------------------------


def write_tree(root: Path, seeds: range) -> None:
    """Patterns/Lines/stripes, Patterns/Grids/checkers and Shapes/dots."""
    folders = {"stripes": "Patterns/Lines/stripes", "checkers": "Patterns/Grids/checkers"}
    for kind in ("stripes", "checkers", "dots"):
        folder = root / folders.get(kind, "Shapes/dots")
        folder.mkdir(parents=True, exist_ok=True)
        for seed in seeds:
            (folder / f"{kind}-{seed}.jpg").write_bytes(make_image(kind, seed))


@pytest.fixture(scope="module")
def frozen(model_artifact: Path) -> Embedder:
    return load_artifact(model_artifact)


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    write_tree(root / "references", range(6))
    write_tree(root / "queries", range(100, 104))
    stripes = root / "queries/Patterns/Lines/stripes"
    (stripes / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    shutil.copy(root / "references/Patterns/Lines/stripes/stripes-0.jpg", stripes / "copy.jpg")
    return root


@pytest.fixture(scope="module")
def evaluation(tree: Path, frozen: Embedder) -> Evaluation:
    references = load_folder_tree(tree / "references")
    queries = load_folder_tree(tree / "queries")
    return evaluate(
        references.images, queries.images, frozen, parents=references.parents, held_out=["dots"]
    )


def test_generated_kinds_are_classified(evaluation: Evaluation) -> None:
    assert (evaluation.references, evaluation.queries, evaluation.categories) == (18, 13, 3)
    metrics = evaluation.knn.metrics
    assert metrics.top1 >= 0.75, metrics.per_category
    assert set(metrics.per_category) == {"stripes", "checkers", "dots"}
    assert metrics.per_category["stripes"].n == 5
    assert set(metrics.hierarchy) == {"level_1", "level_2", "leaf"}
    assert metrics.hierarchy["level_1"] >= metrics.hierarchy["leaf"]
    assert metrics.held_out is not None and metrics.held_out.n == 4
    assert 0.0 <= metrics.ece <= 1.0


def test_unreadable_images_are_skipped_and_reported(evaluation: Evaluation) -> None:
    assert [s.path.name for s in evaluation.skipped] == ["broken.jpg"]
    assert "JPEG" in evaluation.skipped[0].reason or "truncated" in evaluation.skipped[0].reason


def test_leakage_finds_the_copied_file(evaluation: Evaluation) -> None:
    leakage = evaluation.leakage
    assert leakage.identical == 1
    pair = leakage.examples[0]
    assert (pair.query.name, pair.reference.name, pair.identical) == (
        "copy.jpg",
        "stripes-0.jpg",
        True,
    )


def test_baselines_reuse_the_frozen_model(evaluation: Evaluation) -> None:
    frozen = evaluation.baselines["frozen_knn"]
    vote = evaluation.baselines.get("vote_only", evaluation.knn)  # the model's vote alone
    assert frozen.same_as_model and frozen.metrics == vote.metrics
    probe = evaluation.baselines["linear_probe"].metrics
    assert probe.queries == evaluation.queries and 0.0 <= probe.top1 <= 1.0


def test_json_has_the_promised_keys(evaluation: Evaluation) -> None:
    data = json.loads(json.dumps(evaluation.to_dict(), allow_nan=False))
    for key in (
        "top1",
        "top3",
        "macro_top1",
        "worst_categories",
        "per_category",
        "hierarchy",
        "ece",
        "counts",
        "model",
        "held_out",
        "baselines",
        "leakage",
    ):
        assert key in data, key
    assert data["counts"] == {"references": 18, "queries": 13, "categories": 3, "skipped": 1}
    assert set(data["baselines"]) == {"frozen_knn", "linear_probe"}
    assert data["baselines"]["linear_probe"]["per_category"].keys() == data["per_category"].keys()
    assert data["leakage"]["found"] and data["leakage"]["identical"] == 1
    assert data["model"]["version"].startswith("efficientnet_lite0-")


def test_report_writes_readable_plots_and_summary(evaluation: Evaluation, tmp_path: Path) -> None:
    written = write_report(evaluation, tmp_path / "report")
    assert [p.name for p in written] == ["confusion.png", "reliability.png", "summary.md"]
    for png in written[:2]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as image:
            assert image.width >= 600 and image.height >= 600
    summary = written[2].read_text()
    assert "](confusion.png)" in summary and "](reliability.png)" in summary
    assert "leakage" in summary.lower() and "copy.jpg" in summary


def test_a_threshold_that_accepts_nothing_has_no_precision(
    evaluation: Evaluation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not 1.0: nothing accepted is nothing right either. The seed summary leaves it out and
    the report says nothing was accepted."""
    assert at_threshold(ANSWERS, 0.8) == {"threshold": 0.8, "coverage": 0.5, "precision": 1.0}
    assert at_threshold(ANSWERS, 0.95)["precision"] is None

    doubtful = [Answer("a", ("b", "a"), (0.55, 0.45))] * 4  # every query below the threshold
    earned = Calibration(examples=100, auto_accept_at=0.9, source="hand-made answers")
    report = confidence_report(doubtful, doubtful, ["review"] * 4, earned)
    review = report.bands["review"]
    assert (review["share"], review["count"], review["accuracy"]) == (1.0, 4, 0.0)
    assert review["interval"] == [0.0, pytest.approx(1 - 0.025**0.25, abs=1e-4)]
    assert report.bands["auto_accept"]["accuracy"] is None
    assert report.chosen["coverage"] == 0.0 and report.chosen["precision"] is None
    summary = summary_markdown(replace(evaluation, confidence=report))
    assert "on the queries it auto-accepts nothing." in summary
    write_report(replace(evaluation, confidence=report), tmp_path)

    seeds = {0: {"confidence": report.to_dict()}, 1: {}}
    assert "auto_accepted_precision" not in over_seeds(seeds)

    print_summary(replace(evaluation, confidence=report))  # the command's printout too
    assert ": nothing" in capsys.readouterr().out


def test_the_calibrated_plots_name_the_confidence_they_show(
    evaluation: Evaluation, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The figures after calibration are the answer's probability at the fitted temperature."""
    fitted = Calibration(temperature=0.7, examples=100, auto_accept_at=0.9)
    report = confidence_report(ANSWERS, ANSWERS, ["review"] * len(ANSWERS), fitted)
    titles: list[object] = []  # the last argument: the label, or the path for the kNN plot
    monkeypatch.setattr(report_module, "plot_reliability", lambda *args: titles.append(args[-1]))
    monkeypatch.setattr(report_module, "plot_automation", lambda *args: titles.append(args[-1]))
    write_report(replace(evaluation, confidence=report), tmp_path)
    assert titles[1:] == ["answer's probability at temperature 0.70"] * 2


def test_confusion_matrix_counts() -> None:
    counts = confusion_matrix(["a", "a", "b"], ["a", "b", None], ["a", "b"])
    assert counts.tolist() == [[1, 1], [0, 0]]


def test_cache_embeds_each_file_once_per_model(tree: Path, frozen: Embedder) -> None:
    images = load_folder_tree(tree / "references").images[:3]
    cache = EmbeddingCache()
    first, _ = embed_images(frozen, images, cache)
    poisoned = np.zeros(frozen.dim, dtype=np.float32)
    cache.put(frozen.version, first.shas[0], poisoned)
    again, _ = embed_images(frozen, images, cache)
    assert np.array_equal(again.vectors[0], poisoned)  # came from the cache, not the network
    np.testing.assert_allclose(again.vectors[1:], first.vectors[1:], atol=1e-6)


def test_another_model_is_compared_with_the_frozen_backbone(
    tree: Path, frozen: Embedder, evaluation: Evaluation, tmp_path: Path
) -> None:
    tiny = tiny_model_config("test-tiny-timm")
    model = load_artifact(create_artifact(tiny, tmp_path / "tiny"))
    references = load_folder_tree(tree / "references")
    queries = load_folder_tree(tree / "queries")
    other = evaluate(references.images, queries.images, model, frozen, parents=references.parents)
    assert other.model_version.startswith("test-tiny-timm-")
    baseline = other.baselines["frozen_knn"]
    assert not baseline.same_as_model and baseline.model_version == frozen.version
    # the same frozen vectors as the frozen model's own evaluation
    assert baseline.metrics.top1 == evaluation.knn.metrics.top1
    assert other.leakage.identical == 1


def test_with_enough_images_to_calibrate_the_answers_are_the_blend_and_the_vote_a_baseline(
    tmp_path: Path, frozen: Embedder
) -> None:
    """30 references: enough to calibrate, so the head is fitted and blended in, as a
    calibrated server serves, on labelled images or leave-one-shoot-out; the vote alone is the
    `vote_only` baseline, and the frozen baseline (the same vectors) is that vote, not the
    model's blended answers. Every band is reported, decided as the server decides."""
    for part, seeds in (
        ("references", range(10)),
        ("val", range(200, 207)),
        ("test", range(100, 104)),
    ):
        write_tree(tmp_path / part, seeds)
    references, val, test = (load_folder_tree(tmp_path / p) for p in ("references", "val", "test"))
    for labelled in (val.images, []):  # the head fitted on the references; cross-fitted
        evaluation = evaluate(references.images, test.images, frozen, labelled=labelled)
        assert evaluation.confidence is not None
        assert evaluation.confidence.calibration.head is not None
        assert "blended with the head" in evaluation.knn.description
        vote, frozen_knn = evaluation.baselines["vote_only"], evaluation.baselines["frozen_knn"]
        assert frozen_knn.metrics == vote.metrics and not frozen_knn.same_as_model
        for blended in evaluation.knn.answers:  # every category the head knows has a say
            assert set(blended.categories) == {"stripes", "checkers", "dots"}
            assert sum(blended.scores) == pytest.approx(1.0)
        data = evaluation.to_dict()
        bands = data["confidence"]["bands"]
        assert set(bands) == {"auto_accept", "flag", "review", "unknown"}
        assert sum(b["share"] for b in bands.values()) == pytest.approx(1.0)
        assert data["confidence"]["fitted"]["source"].startswith(
            f"{len(val.images)} labelled" if labelled else "leave-one-shoot-out"
        )
        assert data["baselines"]["vote_only"]["top1"] == pytest.approx(vote.metrics.top1, abs=1e-4)


def test_the_embedding_cache_survives_a_round_trip_through_its_file(tmp_path: Path) -> None:
    cache = EmbeddingCache()
    cache.put("model-a", "ab" * 32, np.arange(4, dtype=np.float32))
    cache.put("model-a", "cd" * 32, np.ones(4, dtype=np.float32))
    cache.put("model-b", "ab" * 32, np.zeros(8, dtype=np.float32))
    path = tmp_path / "cache" / "vectors.npz"
    cache.save(path)
    again = EmbeddingCache.load(path)
    np.testing.assert_array_equal(again.get("model-a", "ab" * 32), np.arange(4))
    np.testing.assert_array_equal(again.get("model-b", "ab" * 32), np.zeros(8))
    assert again.get("model-b", "cd" * 32) is None
    assert EmbeddingCache.load(tmp_path / "none.npz").get("model-a", "ab" * 32) is None
