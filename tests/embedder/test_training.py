"""Training: ArcFace logits by hand, a tiny run end to end, resume and early stopping."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedder import create_artifact, load_artifact
from embedder.artifact import load_network
from embedder.datasets import LabeledImage
from embedder.splits import Split
from embedder.training import TrainOptions, train
from embedder.training.checkpoint import load_checkpoint
from embedder.training.features import CachedViews
from embedder.training.loop import _estimate_report, drop_unreadable, principal_directions
from embedder.training.loss import build_loss
from embedder.training.validation import (
    ESTIMATE_TOLERANCE,
    SplitAccuracy,
    check_estimate,
    selection_score,
)
from tests.helpers import KINDS, make_image, make_shot, tiny_model_config


def nearest(references: np.ndarray, categories: list[str], queries: np.ndarray) -> list[str]:
    """The validation classifier the tests give training: each query's nearest reference."""
    return [categories[int(i)] for i in np.argmax(queries @ references.T, axis=1)]


TINY = tiny_model_config("test-train-tiny")
FAST = {"trainable_blocks": 1, "cached_views": 1, "workers": 0, "batch_size": 8, "k": 3}


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float32, 1e-5), (torch.float64, 1e-8)])
def test_arcface_loss_is_the_hand_computed_margin_softmax(
    dtype: torch.dtype, tolerance: float
) -> None:
    options = TrainOptions(embedding_dim=4, margin=28.6, scale=30.0)
    loss_fn = build_loss(options, num_classes=3)
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 3, generator=generator, dtype=dtype)
    embeddings = torch.randn(5, 4, generator=generator, dtype=dtype)
    labels = torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        loss_fn.W.copy_(centres)  # type: ignore[operator]

    cosine = F.normalize(embeddings, dim=1) @ F.normalize(centres, dim=0)
    margin = math.radians(28.6)
    logits = 30.0 * cosine.clone()
    for row, label in enumerate(labels.tolist()):
        theta = math.acos(float(cosine[row, label]))
        assert theta + margin < math.pi  # the plain cos(theta + m) branch
        logits[row, label] = 30.0 * math.cos(theta + margin)
    expected = F.cross_entropy(logits, labels)

    actual = loss_fn(embeddings, labels)
    assert actual.dtype == dtype
    assert abs(float(actual.detach()) - float(expected)) <= tolerance * float(expected)


def test_a_subcenter_loss_has_a_centre_per_class_and_subcenter() -> None:
    loss_fn = build_loss(TrainOptions(embedding_dim=8, subcenters=3), num_classes=5)
    assert loss_fn.W.shape == (8, 15)  # type: ignore[union-attr]


def test_selection_never_prefers_an_epoch_that_gave_up_held_out_accuracy() -> None:
    floor = 0.70
    better_seen_worse_held = SplitAccuracy(
        seen=0.95, held_out=0.60, queries_seen=1, queries_held_out=1
    )
    balanced = SplitAccuracy(seen=0.85, held_out=0.72, queries_seen=1, queries_held_out=1)
    assert selection_score(balanced, floor) > selection_score(better_seen_worse_held, floor)
    assert selection_score(balanced, None) == 0.85


def test_the_pca_head_keeps_the_frozen_geometry() -> None:
    pooled = torch.randn(20, 6, dtype=torch.float64) + 3.0
    head = torch.nn.Linear(6, 6).double()
    principal_directions(head, pooled)
    with torch.no_grad():
        projected = head(pooled)
    torch.testing.assert_close(projected.mean(dim=0), torch.zeros(6, dtype=torch.float64))
    torch.testing.assert_close(torch.cdist(projected, projected), torch.cdist(pooled, pooled))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return create_artifact(TINY, tmp_path_factory.mktemp("base") / "tiny")


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory: pytest.TempPathFactory) -> Split:
    """Three kinds, eight images each; "dots" held out of training."""
    root = tmp_path_factory.mktemp("images")
    parts: dict[str, list[LabeledImage]] = {"train": [], "val": [], "test": []}
    for k, kind in enumerate(KINDS):
        for seed in range(8):
            path = root / f"{kind}-{seed}.jpg"
            path.write_bytes(make_image(kind, 100 * k + seed, size=96))
            part = "train" if seed < 5 else "val" if seed < 7 else "test"
            parts[part].append(LabeledImage(path, kind))
    broken = root / "broken.jpg"
    broken.write_bytes(b"not an image")
    parts["train"].append(LabeledImage(broken, "stripes"))
    return Split(parts["train"], parts["val"], parts["test"], held_out=["dots"])


def test_a_tiny_run_writes_a_loadable_artifact_of_unit_vectors(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    options = TrainOptions(base=str(tiny_base), embedding_dim=32, epochs=1, freeze_epochs=0, **FAST)
    result = train(tiny_split, options, tmp_path / "model", classify=nearest, log=lambda line: None)

    embedder = load_artifact(result.artifact)
    assert embedder.config.name == "test-train-tiny-arcface"
    assert embedder.config.projection_dim == embedder.dim == 32
    vectors = embedder.embed_images([make_image(kind, 7) for kind in KINDS])
    assert vectors.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    recorded = json.loads((result.artifact / "training.json").read_text())
    assert recorded["held_out_categories"] == ["dots"]
    assert recorded["trained_categories"] == ["checkers", "stripes"]
    assert recorded["epochs_run"] == 1
    assert recorded["val"]["queries_held_out"] == 2
    assert any("broken.jpg" in problem for problem in recorded["problems"])


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_after_its_last_finished_epoch(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    options = TrainOptions(base=str(tiny_base), embedding_dim=16, epochs=3, freeze_epochs=1, **FAST)
    out, work = tmp_path / "model", tmp_path / "work"

    def killed_after_epoch_two(line: str) -> None:
        if line.startswith("epoch 2/3"):
            raise _Killed

    with pytest.raises(_Killed):
        train(tiny_split, options, out, work_dir=work, classify=nearest, log=killed_after_epoch_two)
    checkpoint = load_checkpoint(work)
    assert checkpoint is not None and checkpoint["epoch"] == 2
    assert not out.exists()

    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_split, options, out, work_dir=work, classify=nearest, log=lambda line: None)
    with pytest.raises(ValueError, match=r"\['recipe'\]"):  # same values, another recipe
        train(
            tiny_split,
            replace(options, recipe="fast"),
            out,
            work_dir=work,
            resume=True,
            classify=nearest,
            log=lambda line: None,
        )
    changed = TrainOptions(base=str(tiny_base), embedding_dim=16, epochs=4, **FAST)
    with pytest.raises(ValueError, match="epochs"):
        train(
            tiny_split,
            changed,
            out,
            work_dir=work,
            resume=True,
            classify=nearest,
            log=lambda line: None,
        )
    # Same parts (and fingerprint), another category held out: another run.
    other_held_out = replace(tiny_split, held_out=["checkers"])
    with pytest.raises(ValueError, match="held out dots, this one checkers"):
        train(
            other_held_out,
            options,
            out,
            work_dir=work,
            resume=True,
            classify=nearest,
            log=lambda line: None,
        )

    lines: list[str] = []
    result = train(
        tiny_split, options, out, work_dir=work, resume=True, classify=nearest, log=lines.append
    )
    assert "resuming after epoch 2 of 3" in lines
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["3/3"]
    assert [h["epoch"] for h in result.metadata["history"]] == [1, 2, 3]
    assert any("using cached features" in line for line in lines)
    assert load_checkpoint(work) is None  # finished: the next run here starts afresh


def test_a_truncated_feature_cache_is_cached_again(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    """A run killed while writing features.pt left part of it: the next run warns and caches
    the features again, and the file it writes is whole."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "features.pt").write_bytes(b"PK\x03\x04 the start of a zip archive")
    options = TrainOptions(base=str(tiny_base), embedding_dim=16, epochs=1, freeze_epochs=0, **FAST)
    lines: list[str] = []
    train(
        tiny_split, options, tmp_path / "model", work_dir=work, classify=nearest, log=lines.append
    )
    assert any(line.startswith("warning: ") and "cannot be read" in line for line in lines)
    assert any(line.startswith("cached frozen features") for line in lines)
    assert torch.load(work / "features.pt", weights_only=False)["fingerprint"]
    assert not [p.name for p in work.iterdir() if p.name.startswith(".")]  # no temporary file


def test_a_seed_gives_the_same_run_whether_the_features_were_cached_or_not(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    """Reading features.pt skips the random draws of caching them: the loss's weights must
    not start from what is left of the generator after those."""
    options = TrainOptions(base=str(tiny_base), embedding_dim=16, epochs=1, freeze_epochs=0, **FAST)
    work, lines = tmp_path / "work", []
    first = train(
        tiny_split,
        options,
        tmp_path / "first",
        work_dir=work,
        classify=nearest,
        log=lambda line: None,
    )
    second = train(
        tiny_split, options, tmp_path / "second", work_dir=work, classify=nearest, log=lines.append
    )
    assert any("using cached features" in line for line in lines)
    assert second.metadata["history"] == first.metadata["history"]


def test_an_image_unreadable_in_any_view_leaves_every_view_so_rows_stay_aligned() -> None:
    """b's plain view failed, d's augmented one: both go from both views, or the augmented
    rows of the images after them would be trained with another image's label."""
    a, b, c, d = (
        LabeledImage(Path(f"{n}.jpg"), cat) for n, cat in zip("abcd", "xyhx", strict=True)
    )
    data = Split([a, b, c, d], [a], [a], held_out=["h"])  # c is held out: no augmented view

    def views(rows: list[float], ok: list[bool]) -> CachedViews:
        return CachedViews(torch.tensor(rows)[:, None], torch.tensor(ok))

    cache = {
        "train": views([0, 1, 2, 3], [True, False, True, True]),
        "val": views([0], [True]),
        "test": views([0], [True]),
        "augmented": [views([10, 11, 13], [True, True, False])],  # a, b, d
    }
    kept, problems = drop_unreadable(data, cache)
    assert kept.train == [a, c] and kept.trainable() == [a]
    assert cache["train"].features.flatten().tolist() == [0, 2]
    assert cache["augmented"][0].features.flatten().tolist() == [10]
    assert len(problems) == 2 and "b.jpg" in problems[0] and "d.jpg" in problems[1]


def test_early_stopping_ends_a_run_that_stops_improving(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    frozen_weights = {"lr_head": 0.0, "lr_backbone": 0.0, "lr_loss": 0.0}
    options = TrainOptions(
        base=str(tiny_base), embedding_dim=16, epochs=6, patience=2, **frozen_weights, **FAST
    )
    result = train(tiny_split, options, tmp_path / "model", classify=nearest, log=lambda line: None)
    assert result.metadata["stopped_early"] is True
    assert result.metadata["epochs_run"] == 3  # the first epoch is best; two more show no gain
    assert result.metadata["best_epoch"] == 1


def test_a_whole_network_run_with_online_augmentation_trains_the_stem_too(
    tiny_base: Path, tiny_split: Split, tmp_path: Path
) -> None:
    options = TrainOptions(
        base=str(tiny_base),
        embedding_dim=16,
        epochs=1,
        freeze_epochs=0,
        trainable_blocks="all",
        augment="online",
        workers=0,
        batch_size=8,
        k=3,
    )
    lines: list[str] = []
    result = train(tiny_split, options, tmp_path / "model", classify=nearest, log=lines.append)

    base = dict(load_network(tiny_base)[0].backbone.named_parameters())
    trained = dict(load_network(result.artifact)[0].backbone.named_parameters())
    changed = {name for name, p in trained.items() if not torch.equal(p, base[name])}
    assert "conv_stem.weight" in changed
    assert any(name.startswith("blocks.0.") for name in changed)
    assert "conv_head.weight" in changed
    assert any("cached frozen features of 25 views" in line for line in lines)  # plain only
    assert any("broken.jpg" in problem for problem in result.metadata["problems"])
    assert load_artifact(result.artifact).dim == 16


def test_top1_counts_every_query_and_the_estimate_is_checked_both_ways() -> None:
    accuracy = SplitAccuracy(seen=0.8, held_out=0.5, queries_seen=8, queries_held_out=2)
    assert accuracy.top1 == pytest.approx(0.74)
    assert SplitAccuracy(seen=0.0, held_out=None, queries_seen=0, queries_held_out=0).top1 is None
    assert ESTIMATE_TOLERANCE == 0.05

    def check(val: float, test: float) -> list[str]:
        one = {"held_out": None, "queries_seen": 100, "queries_held_out": 0}
        estimate = check_estimate(SplitAccuracy(seen=val, **one), SplitAccuracy(seen=test, **one))
        return _estimate_report(estimate, labelled_val=False)

    close = check(0.82, 0.78)
    assert len(close) == 1 and "top-1 82.0%" in close[0] and "+4.0 points" in close[0]
    for far in (check(0.90, 0.80), check(0.70, 0.80)):  # either way
        assert far[1].startswith("warning: the validation estimate and the test part differ by")
        assert "--val" in far[1] and "--group-column" in far[1]
    assert "near-duplicates of training images" in check(0.90, 0.80)[1]


def test_a_val_part_of_near_duplicates_gives_an_estimate_train_warns_about(
    tiny_base: Path, tmp_path: Path
) -> None:
    """Val holds another shot of each training item (a burst split apart), test holds other
    items: the estimate is inflated, and train says so beside the test part's figure."""
    train_images, val, test = [], [], []
    for k, kind in enumerate(KINDS):
        for item in range(8):
            for shot in range(2):
                path = tmp_path / f"{kind}-{item}-{shot}.jpg"
                path.write_bytes(make_shot(kind, 100 * k + item, shot))
                (val if shot else train_images).append(LabeledImage(path, kind))
            path = tmp_path / f"{kind}-other-{item}.jpg"
            path.write_bytes(make_image(kind, 700 + 10 * k + item, size=96))
            test.append(LabeledImage(path, kind))
    options = TrainOptions(base=str(tiny_base), embedding_dim=16, epochs=2, **FAST)
    lines: list[str] = []
    result = train(
        Split(train_images, val, test, held_out=[]),
        options,
        tmp_path / "model",
        classify=nearest,
        log=lines.append,
    )
    estimate = result.metadata["estimate"]
    assert estimate["val_source"] == "split"
    assert estimate["val_top1"] == result.metadata["val"]["top1"] >= 0.9
    assert estimate["gap"] > ESTIMATE_TOLERANCE and estimate["agrees"] is False
    assert any(line.startswith("validation estimate (kept epoch, the split's val part)")
               for line in lines)  # fmt: skip
    warning = next(line for line in lines if line.startswith("warning: the validation"))
    assert "val likely holds near-duplicates of training images" in warning
