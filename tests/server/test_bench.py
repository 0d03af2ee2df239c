"""The benches run end to end and write well-formed JSON (no speed is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from embedder.backends import available_cores
from tests.helpers import ROOT


def bench(tmp_path: Path, *args: str) -> dict:  # type: ignore[type-arg]
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", *args, "--json", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(out.read_text())
    assert data["machine"]["cpu_count"] >= 1
    return data


def test_bench_index(tmp_path: Path) -> None:
    data = bench(
        tmp_path, "index", "--sizes", "3000", "--dim", "32", "--queries", "64",
        "--nprobe", "4", "64", "--ef-search", "64",
    )  # fmt: skip
    rows = {(r["index"], r["params"]): r for r in data["results"]}
    assert rows[("flat", "")]["recall"] == 1.0
    assert {r["index"] for r in data["results"]} == {"flat", "ivf", "hnsw"}
    for row in data["results"]:
        assert 0.0 <= row["recall"] <= 1.0 and row["qps"] > 0 and row["build_s"] >= 0
    ivf = [r for r in data["results"] if r["index"] == "ivf"]
    assert ivf[-1]["recall"] >= ivf[0]["recall"]  # more lists scanned, no fewer found
    assert ivf[0]["add_to_found_ms"] > 0


def test_bench_store(tmp_path: Path) -> None:
    # 256 dimensions: a float16 vector saves 512 bytes, well above what a hash entry's fixed
    # cost and the table's growth move (at 64 the saving, 128 bytes, was within 5% of them).
    data = bench(tmp_path, "store", "--sizes", "1500", "--dim", "256", "--queries", "50")
    rows = {r["vector_dtype"]: r for r in data["results"]}
    assert set(rows) == {"float32", "float16"}
    assert rows["float32"]["recall_vs_first"] == 1.0
    assert 0.5 < rows["float16"]["recall_vs_first"] <= 1.0
    # The vectors' hash halves; the rest of a reference (its hash, its id in a set) stays.
    f32, f16 = (rows[t]["vector_bytes_per_reference"] for t in ("float32", "float16"))
    assert f16 < 0.6 * f32
    assert (
        rows["float16"]["redis_bytes_per_reference"] < rows["float32"]["redis_bytes_per_reference"]
    )
    assert rows["float32"]["memory_mb_at_1m"] > 0 and rows["float32"]["load_s"] >= 0


def test_bench_embed(tmp_path: Path, model_artifact: Path) -> None:
    data = bench(
        tmp_path, "embed", "--model", str(model_artifact), "--runtime", "torch",
        "--batch", "1", "2", "--seconds", "0.2",
    )  # fmt: skip
    assert 0.5 < data["gflop_per_image"] < 1.0  # EfficientNet-Lite0: about 0.77
    assert data["gemm_gflops"] > 0
    assert [(r["runtime"], r["batch"]) for r in data["results"]] == [("torch", 1), ("torch", 2)]
    assert all(
        r["compute_ratio"] == pytest.approx(r["gflops"] / data["gemm_gflops"])
        for r in data["results"]
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without")
def test_bench_embed_on_cuda_without_a_gpu_says_so(model_artifact: Path) -> None:
    from server.bench.embed import bench_embed

    with pytest.raises(ValueError, match="sees no CUDA GPU"):
        bench_embed(str(model_artifact), Path("var/models"), device="cuda")


@pytest.mark.integration
@pytest.mark.parametrize(("images_per_call", "model_workers"), [(1, 0), (3, 1)])
def test_bench_serve(
    tmp_path: Path, model_artifact: Path, images_per_call: int, model_workers: int
) -> None:
    folder = tmp_path / "images"
    from tests.helpers import KINDS, make_image

    for kind in KINDS:
        (folder / kind).mkdir(parents=True)
        for seed in range(8):
            (folder / kind / f"{seed}.jpg").write_bytes(make_image(kind, seed))
    data = bench(
        tmp_path, "serve", "--model", str(model_artifact), "--data", str(folder),
        "--references", "3", "--clients", "2", "--seconds", "2", "--device", "cpu",
        "--images-per-call", str(images_per_call), "--model-workers", str(model_workers),
    )  # fmt: skip
    load = data["concurrent"]
    assert load["errors"] == 0 and load["image_errors"] == 0 and load["requests"] > 0
    assert load["images_per_call"] == images_per_call
    assert load["images_per_s"] == pytest.approx(
        load["requests"] * images_per_call / load["seconds"]
    )
    assert data["e2e_ratio"] > 0 and data["batch1"]["p50_ms"] > 0
    assert 0 < data["server_efficiency"] < 2 and data["server_cpu_ms_per_image"] > 0
    assert data["references"] == 9
    assert data["head_categories"] == 0  # 9 references are too few to calibrate on
    assert (data["runtime"], data["device"]) == ("OnnxBackend", "cpu")
    # the model-only figures run the model as the server did: auto, one thread per core
    cores = available_cores()
    expected = (cores, 1) if model_workers == 0 and cores > 1 else (1, cores)
    assert (data["model_workers"], data["model_threads_each"]) == expected
    before, after = data["model_only_images_per_s_batch32_before_after"]
    assert data["model_only_images_per_s_batch32"] == max(before, after)


def test_bench_serve_wants_at_least_one_image_per_call(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--images-per-call", "0"])
    assert "expected a whole number of 1 or more, got '0'" in capsys.readouterr().err


def test_bench_serve_refuses_negative_model_workers(capsys: pytest.CaptureFixture[str]) -> None:
    from server.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "serve", "--model-workers", "-1"])
    assert "expected a whole number of 0 or more, got '-1'" in capsys.readouterr().err
