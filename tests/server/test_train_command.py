"""`nearcat train` as a command: a folder tree in, a servable artifact out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder import create_artifact, load_artifact
from server.cli import CommandError, build_parser
from tests.helpers import KINDS, make_image, tiny_model_config

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
