"""`nearcat train` as a command: a folder tree in, a servable artifact out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedder import ModelConfig, PreprocessConfig, create_artifact, load_artifact
from server.cli import CommandError, build_parser
from tests.helpers import KINDS, make_image

TINY = ModelConfig(
    name="test-train-command",
    family="timm",
    architecture="test_efficientnet",
    embedding_dim=256,
    preprocess=PreprocessConfig(input_size=64),
    weights="random",
)


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


def test_eval_takes_a_trained_model_only_on_the_split_it_trained_with(
    photos: Path, tmp_path: Path
) -> None:
    import argparse

    from server.commands.evaluate import check_split_of_training

    model = tmp_path / "model"
    model.mkdir()
    record = {
        "options": {"seed": 0},
        "provenance": {"group_column": None, "max_group_share": 0.1},
        "held_out_categories": ["dots"],
    }
    (model / "training.json").write_text(json.dumps(record))

    def asked(**flags: object) -> argparse.Namespace:
        return argparse.Namespace(
            **{"seed": [0], "group_column": None, "max_group_share": 0.1, **flags}
        )

    assert check_split_of_training(asked(), model) == ["dots"]
    with pytest.raises(CommandError, match=r"--seed differ.*--seed 0 --max-group-share 0.1"):
        check_split_of_training(asked(seed=[0, 1]), model)
    with pytest.raises(CommandError, match="--group-column, --max-group-share differ"):
        check_split_of_training(asked(group_column="sender", max_group_share=1.0), model)
    del record["provenance"]["max_group_share"]  # trained before the split could be capped
    (model / "training.json").write_text(json.dumps(record))
    with pytest.raises(CommandError, match="earlier version of nearcat"):
        check_split_of_training(asked(), model)


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
