"""`nearcat train` as a command: a folder tree in, a servable artifact out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder import create_artifact, load_artifact
from embedder.config import DEFAULT_MODEL
from embedder.training import RECIPES, TrainOptions
from server.cli import CommandError, build_parser
from server.commands.train import options_from
from tests.helpers import KINDS, make_image, make_shot, tiny_model_config

TINY = tiny_model_config("test-train-command")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for k, kind in enumerate(KINDS):
        (root / kind).mkdir()
        for seed in range(12):
            (root / kind / f"{seed}.jpg").write_bytes(make_image(kind, 100 * k + seed, size=96))
    return root


def _train(argv: list[str]) -> None:
    args = build_parser().parse_args(["train", *argv])
    args.run(args)


def test_train_writes_an_artifact_with_its_training_record(photos: Path, tmp_path: Path) -> None:
    base = create_artifact(TINY, tmp_path / "base")
    out = tmp_path / "model"
    _train(
        ["--data", str(photos), "--out", str(out), "--base", str(base)]
        + ["--holdout-categories", "dots", "--epochs", "1", "--embedding-dim", "16"]
        + ["--workers", "0", "--batch-size", "8", "--k", "3"]
    )
    assert load_artifact(out).dim == 16
    record = json.loads((out / "training.json").read_text())
    assert record["provenance"]["data"] == str(photos)
    assert record["held_out_categories"] == ["dots"]
    assert record["split"]["held_out_categories"] == ["dots"]
    assert record["provenance"]["max_group_share"] == 0.1
    assert len(record["split"]["fingerprint"]) == 16


def test_eval_takes_a_trained_model_only_on_the_split_it_trained_with(
    photos: Path, tmp_path: Path
) -> None:
    from embedder.datasets import load_dataset
    from embedder.splits import split_dataset
    from server.commands.evaluate import check_split, trained_split

    images = load_dataset(photos).images
    trained_on = split_dataset(images, seed=0, holdout=["dots"])
    model = tmp_path / "model"
    model.mkdir()
    record = {
        "split": trained_on.summary(),
        "held_out_categories": ["dots"],
        "provenance": {"command": "nearcat train --data photos/ --seed 0"},
    }
    (model / "training.json").write_text(json.dumps(record))
    trained = trained_split(model)
    assert trained is not None

    def split_of(data: list, seed: int) -> dict:  # type: ignore[type-arg]
        return split_dataset(data, seed=seed, holdout=["dots"]).summary()

    check_split(trained, split_of(images, 0), ["dots"])  # the same split
    with pytest.raises(CommandError, match="another split.*nearcat train --data photos/ --seed 0"):
        check_split(trained, split_of(images, 1), ["dots"])
    fewer = [i for i in images if i.path.name != "0.jpg"]  # e.g. one more label left out
    with pytest.raises(CommandError, match="another split"):
        check_split(trained, split_of(fewer, 0), ["dots"])
    with pytest.raises(CommandError, match="held out dots in training; .*-categories dots"):
        check_split(trained, split_of(images, 0), [])

    del record["split"]["fingerprint"]  # trained before splits had fingerprints
    (model / "training.json").write_text(json.dumps(record))
    with pytest.raises(CommandError, match="earlier version of nearcat"):
        trained_split(model)


def test_train_refuses_to_overwrite_a_model(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    with pytest.raises(CommandError, match="already exists"):
        _train(["--data", str(photos), "--out", str(tmp_path / "model"), "--holdout", "1"])


def test_trainable_blocks_takes_a_count_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    common = ["train", "--data", "d", "--out", "o"]
    assert (
        build_parser().parse_args([*common, "--trainable-blocks", "all"]).trainable_blocks == "all"
    )
    assert build_parser().parse_args([*common, "--trainable-blocks", "3"]).trainable_blocks == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args([*common, "--trainable-blocks", "most"])
    assert "expected a number of blocks or 'all'" in capsys.readouterr().err


def test_labelled_photos_judge_the_epochs_and_shoots_keep_bursts_together(
    photos: Path, tmp_path: Path
) -> None:
    """With --val, photos that are not in --data choose the epoch; without --group-column,
    near-duplicate shots are grouped by the frozen model so none sits on both sides."""
    labelled = tmp_path / "labelled"
    for k, kind in enumerate(KINDS):
        (labelled / kind).mkdir(parents=True)
        for seed in range(4):
            (labelled / kind / f"{seed}.jpg").write_bytes(make_image(kind, 500 + 10 * k + seed))
    base = create_artifact(TINY, tmp_path / "base")
    out = tmp_path / "model"
    _train(
        ["--data", str(photos), "--out", str(out), "--base", str(base), "--val", str(labelled)]
        + ["--holdout-categories", "dots", "--epochs", "1", "--embedding-dim", "16"]
        + ["--workers", "0", "--batch-size", "8", "--k", "3"]
    )
    record = json.loads((out / "training.json").read_text())
    assert record["provenance"]["val"] == str(labelled)
    assert record["provenance"]["grouped_by"].startswith("shoots")
    judged = record["val"]["queries_seen"] + record["val"]["queries_held_out"]
    assert judged == 3 * 4  # every labelled photo, and nothing else
    assert record["val"]["queries_held_out"] == 4  # the held-out category's
    assert record["split"]["val"] == 12  # the split's own val part went to training


def _options(argv: list[str]) -> TrainOptions:
    return options_from(build_parser().parse_args(["train", "--data", "d", "--out", "o", *argv]))


def test_a_flag_given_beats_the_recipe_and_the_recipe_beats_the_default() -> None:
    default = TrainOptions()
    best = _options([])  # best is the default recipe
    assert best.recipe == "best"
    assert (best.augment, best.trainable_blocks, best.subcenters) == ("online", 3, 3)
    assert (best.epochs, best.freeze_epochs, best.held_out_tolerance) == (12, 2, 0.0)
    assert best.lr_head == default.lr_head  # no recipe sets it: the default
    fast = _options(["--recipe", "fast"])
    assert (fast.augment, fast.trainable_blocks, fast.cached_views) == ("cached", 1, 1)
    assert fast.subcenters == default.subcenters  # fast leaves it: the default, not best's
    mixed = _options(["--trainable-blocks", "1", "--subcenters", "1", "--lr-head", "1e-3"])
    assert (mixed.recipe, mixed.augment, mixed.epochs) == ("best", "online", 12)
    assert (mixed.trainable_blocks, mixed.subcenters, mixed.lr_head) == (1, 1, 1e-3)
    assert _options(["--base", "elsewhere"]).base == "elsewhere"
    assert _options([]).base == default.base == DEFAULT_MODEL  # train from what is served
    # fewer epochs than the recipe's head-only ones: those yield, unless given too
    assert _options(["--epochs", "1"]).freeze_epochs == 1
    with pytest.raises(ValueError, match="freeze_epochs must be in"):
        _options(["--epochs", "1", "--freeze-epochs", "2"])


def test_an_unknown_recipe_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--data", "d", "--out", "o", "--recipe", "fastest"])
    refused = capsys.readouterr().err
    assert "argument --recipe: invalid choice: 'fastest'" in refused
    assert "fast" in refused.split("choose from")[1] and "best" in refused.split("choose from")[1]
    with pytest.raises(ValueError, match="unknown recipe 'fastest': choose one of fast, best"):
        TrainOptions.from_recipe("fastest")
    with pytest.raises(ValueError, match="unknown recipe"):
        TrainOptions(recipe="fastest")
    for name, recipe in RECIPES.items():  # every recipe is a valid set of options
        assert TrainOptions.from_recipe(name).recipe == name and recipe.source


@pytest.fixture(scope="module")
def bursts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A catalogue of bursts (3 near-duplicate shots of each of 8 items per kind; a CSV whose
    `row` column groups nothing and `item` column groups each burst), and labelled photos of
    other items: traffic, never a shot of a catalogue item."""
    root = tmp_path_factory.mktemp("bursts")
    rows = ["image,label,row,item"]
    for k, kind in enumerate(KINDS):
        for item in range(8):
            for shot in range(3):
                name = f"{kind}-{item}-{shot}.jpg"
                (root / name).write_bytes(make_shot(kind, 100 * k + item, shot))
                rows.append(f"{name},{kind},{len(rows)},{kind}-{item}")
    (root / "bursts.csv").write_text("\n".join(rows) + "\n")
    labelled = tmp_path_factory.mktemp("labelled")
    for k, kind in enumerate(KINDS):
        (labelled / kind).mkdir()
        for item in range(6):
            (labelled / kind / f"{item}.jpg").write_bytes(make_image(kind, 900 + 10 * k + item))
    return root / "bursts.csv", labelled


def test_val_picks_the_epoch_by_the_labelled_photos_and_the_estimate_says_so(
    bursts: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Split at random (each row its own group), val and test hold shots of items whose
    other shots train: their figures are inflated. With --val, the labelled photos choose
    the epoch and give the estimate; the test part, inflated, disagrees, and train warns."""
    data, labelled = bursts
    base = create_artifact(TINY, tmp_path / "base")
    common = ["--data", str(data), "--base", str(base), "--group-column", "row"]
    common += ["--recipe", "fast", "--holdout", "0", "--max-group-share", "1", "--epochs", "3"]
    common += ["--embedding-dim", "16", "--workers", "0", "--batch-size", "8", "--k", "3"]

    _train([*common, "--out", str(tmp_path / "random")])
    random_split = json.loads((tmp_path / "random" / "training.json").read_text())
    capsys.readouterr()
    _train([*common, "--out", str(tmp_path / "labelled"), "--val", str(labelled)])
    record = json.loads((tmp_path / "labelled" / "training.json").read_text())
    printed = capsys.readouterr().out

    assert record["options"]["recipe"] == record["provenance"]["recipe"] == "fast"
    # every epoch was judged on the 18 labelled photos, and the best of them was kept
    assert {h["queries_seen"] for h in record["history"]} == {3 * 6}
    scores = [h["score"] for h in record["history"]]
    assert record["best_epoch"] == scores.index(max(scores)) + 1
    estimate = record["estimate"]
    assert estimate["val_source"] == "labelled"
    assert (
        estimate["val_top1"] == record["val"]["top1"] == max(h["top1"] for h in record["history"])
    )
    # the random split's own val estimate, from burst siblings of training images, is far
    # above what the labelled photos say: the two estimates disagree
    assert random_split["estimate"]["val_top1"] >= 0.9
    assert random_split["estimate"]["val_top1"] - estimate["val_top1"] > 0.2
    # the test part (burst siblings too) disagrees with the honest estimate: a warning
    assert estimate["test_top1"] >= 0.9 and estimate["gap"] < -0.05
    assert estimate["agrees"] is False and estimate["tolerance"] == 0.05
    assert "validation estimate (kept epoch, the labelled photos (--val))" in printed
    assert "warning: the validation estimate and the test part differ by" in printed
    assert "likely holds near-duplicates" in printed
