"""`nearcat eval` in-process: a CSV split with groups and a held-out category, flag errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from indexer.vote import VoteConfig
from server.cli import main
from tests.helpers import KINDS, make_image


@pytest.fixture(scope="module")
def clothing_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV like the clothing dataset's: 16 images per kind, two per sender, some rows to
    leave out by label."""
    root = tmp_path_factory.mktemp("eval-csv")
    (root / "images").mkdir()
    rows = []
    for kind in KINDS:
        for seed in range(16):
            name = f"{kind}-{seed}"
            (root / "images" / f"{name}.jpg").write_bytes(make_image(kind, seed))
            rows.append({"image": name, "sender_id": f"{kind}-{seed // 2}", "label": kind})
    rows.append({"image": "stripes-0", "sender_id": "x", "label": "Not sure"})
    with open(root / "images.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "sender_id", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "images.csv"


def run_eval(*args: str) -> None:
    main(["eval", *args])


def test_split_csv_with_groups_and_a_held_out_category(
    clothing_like: Path, model_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    run_eval(
        "--data",
        str(clothing_like),
        "--path-template",
        "images/{}.jpg",
        "--exclude-label",
        "Not sure",
        "--group-column",
        "sender_id",
        "--holdout",
        "1",
        "--seed",
        "3",
        "--model",
        str(model_artifact),
        "--models-dir",
        str(model_artifact.parent),
        "--json",
        str(out),
        "--report",
        str(tmp_path / "report"),
    )
    printed = capsys.readouterr().out
    assert "model kNN" in printed and "linear_probe" in printed and "held out (" in printed

    data = json.loads(out.read_text())
    split = data["split"]
    assert split["group_column"] == "sender_id" and split["queried"] == "test"
    assert len(split["held_out_categories"]) == 1
    assert data["held_out_categories"] == split["held_out_categories"]
    # references are the whole train part, held-out category included; queries are the test part
    assert data["counts"]["references"] == split["train"]
    assert data["counts"]["queries"] == split["test"]
    assert data["counts"]["categories"] == 3 and data["counts"]["skipped"] == 0
    assert data["held_out"]["held_out"]["n"] > 0 and data["held_out"]["seen"]["n"] > 0
    assert data["baselines"]["frozen_knn"]["same_as_model"] is True
    assert data["vote"] == vars(VoteConfig())
    assert not data["leakage"]["found"]  # grouped split, distinct generated images
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [
        "confusion.png",
        "reliability.png",
        "summary.md",
    ]


def test_several_seeds_report_each_split_and_the_spread(
    clothing_like: Path, model_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    run_eval(
        "--data", str(clothing_like), "--path-template", "images/{}.jpg",
        "--exclude-label", "Not sure", "--group-column", "sender_id",
        "--seed", "0", "1", "2",
        "--model", str(model_artifact), "--models-dir", str(model_artifact.parent),
        "--json", str(out), "--report", str(tmp_path / "report"),
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "-- seed 2" in printed and "-- over 3 seeds" in printed

    data = json.loads(out.read_text())
    assert sorted(data["seeds"]) == ["0", "1", "2"]
    assert [data["seeds"][s]["split"]["seed"] for s in ("0", "1", "2")] == [0, 1, 2]
    top1 = data["over_seeds"]["top1"]
    assert top1["values"] == {s: data["seeds"][s]["top1"] for s in ("0", "1", "2")}
    assert top1["n"] == 3 and top1["min"] <= top1["mean"] <= top1["max"] and top1["sd"] >= 0
    assert (tmp_path / "report" / "seed-1" / "confusion.png").exists()


def test_a_figure_missing_from_a_split_is_named_not_averaged_away() -> None:
    from server.evaluation.evaluate import over_seeds

    calibrated = {"top1": 0.7, "confidence": {"ece_after": 0.04}}
    summary = over_seeds({0: calibrated, 1: {"top1": 0.8}})
    assert summary["top1"]["n"] == 2 and summary["top1"]["mean"] == pytest.approx(0.75)
    after = summary["ece_after_calibration"]
    assert after["values"] == {"0": 0.04, "1": None} and after["n"] == 1 and after["sd"] is None


def test_several_seeds_need_one_source_to_split(
    clothing_like: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = str(clothing_like.parent / "images")
    with pytest.raises(SystemExit):
        run_eval("--references", images, "--queries", images, "--seed", "0", "1")
    assert "several --seed values split one source: give --data" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_eval("--data", images, "--seed", "0", "0")
    assert "each seed once" in capsys.readouterr().err


def test_references_and_queries_with_vote_flags(
    clothing_like: Path, model_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = clothing_like.parent / "images"
    for part, seeds in (("references", range(4)), ("queries", range(4, 6))):
        for kind in KINDS:
            (tmp_path / part / kind).mkdir(parents=True)
            for seed in seeds:
                name = f"{kind}-{seed}.jpg"
                (tmp_path / part / kind / name).write_bytes((images / name).read_bytes())
    out = tmp_path / "eval.json"
    run_eval(
        "--references",
        str(tmp_path / "references"),
        "--queries",
        str(tmp_path / "queries"),
        "--holdout-categories",
        "dots",
        "--k",
        "5",
        "--temperature",
        "0.1",
        "--model",
        str(model_artifact),
        "--models-dir",
        str(model_artifact.parent),
        "--json",
        str(out),
    )
    data = json.loads(out.read_text())
    assert data["counts"]["references"] == 12 and data["counts"]["queries"] == 6
    assert data["vote"] == {"k": 5, "votes_per_category": 3, "temperature": 0.1}
    assert data["held_out"]["held_out"]["n"] == 2
    assert "split" not in data
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--queries", "q/"], "give --references SRC and --queries SRC"),
        (["--data", "d/", "--references", "r/"], "not both"),
        (["--references", "r/", "--queries", "q/", "--holdout", "2"], "use it with --data"),
        (["--data", "d/", "--k", "0"], "--k"),
        (["--data", "/nonexistent.csv"], "--data /nonexistent.csv"),
    ],
)
def test_flag_mistakes_say_what_to_do(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_eval(*args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_names_the_server_vote_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        run_eval("--help")
    help_text = " ".join(capsys.readouterr().out.split())
    vote = VoteConfig()
    for value in (vote.k, vote.votes_per_category, vote.temperature):
        assert f"the server's, {value})" in help_text
    assert "--holdout" in help_text and "--report" in help_text


def test_zero_shot_reports_accuracy_from_category_names(
    clothing_like: Path, model_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "zero-shot.json"
    run_eval(
        "--zero-shot",
        "--data",
        str(clothing_like),
        "--path-template",
        "images/{}.jpg",
        "--exclude-label",
        "Not sure",
        "--group-column",
        "sender_id",
        "--model",
        str(model_artifact),
        "--models-dir",
        str(model_artifact.parent),
        "--json",
        str(out),
    )
    printed = capsys.readouterr().out
    assert "zero-shot from 3 category names" in printed and "stripes" in printed

    data = json.loads(out.read_text())
    assert data["zero_shot"]["candidates"] == sorted(KINDS)
    assert data["zero_shot"]["chance_top1"] == round(1 / 3, 4)
    assert data["zero_shot"]["text_tower"].startswith(data["model"]["version"] + "+")
    assert data["counts"]["queries"] == data["split"]["test"] == data["queries"]
    assert set(data["per_category"]) == set(KINDS)
    assert sum(c["n"] for c in data["per_category"].values()) == data["queries"]
    for key in ("top1", "top3", "macro_top1", "ece"):
        assert 0.0 <= data[key] <= 1.0
    assert data["top3"] == 1.0  # three candidates: the truth is always among the top three


def test_zero_shot_refuses_a_model_without_a_head(
    clothing_like: Path, model_artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from embedder.artifact import load_network, write_artifact

    network, config, _ = load_network(model_artifact)
    network.semantic = None
    old = write_artifact(network, config, tmp_path / "old")
    with pytest.raises(SystemExit) as exit_info:
        run_eval(
            "--zero-shot",
            "--queries",
            str(clothing_like),
            "--path-template",
            "images/{}.jpg",
            "--model",
            str(old),
            "--models-dir",
            str(tmp_path),
        )
    assert exit_info.value.code == 2
    assert "no zero-shot head" in capsys.readouterr().err
