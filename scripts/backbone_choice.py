"""Which packaged backbone should be the default (issue 18): accuracy against speed.

For each model (EfficientNet-Lite0/1/2 by default):

1. frozen kNN accuracy on the clothing trees of ../shared/tools/clothing_trees.py, one tree
   per seed: `nearcat eval --references refs --labelled labelled --queries queries`, the top-1
   of the answer a calibrated server would serve, mean ± sample sd over the seeds. One
   --embedding-cache for all runs, so each image is embedded once per model;
2. model-only ONNX Runtime images/s at batch 32 (`nearcat bench embed`), and with --serve,
   a real server's images/s under 8 clients (`nearcat bench serve`).

The issue's rule: the most accurate model, as long as one server keeps >= 60 images/s here.
Each step waits for a quiet machine (1-minute load <= --max-load) and records the load it
started at. Finished steps are kept under --work and not run again. Prints JSON.

    .venv/bin/python scripts/backbone_choice.py --seeds 0 1 2 3 4 --serve
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEARCAT = ROOT / ".venv" / "bin" / "nearcat"
PYTHON = ROOT / ".venv" / "bin" / "python"
TREES_TOOL = ROOT.parent / "shared" / "tools" / "clothing_trees.py"
MODELS = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
MIN_SERVER_RATE = 60.0  # images/s one server must keep on these 2 cores (issue 18)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def wait_quiet(max_load: float, poll_s: float = 30.0, give_up_s: float = 1800.0) -> float:
    """Wait until the 1-minute load average is at most `max_load`; the load we start at."""
    waited = 0.0
    while True:
        load = os.getloadavg()[0]
        if load <= max_load:
            return load
        if waited >= give_up_s:
            log(f"load still {load:.2f} after {waited:.0f} s: measuring anyway (recorded)")
            return load
        log(f"load {load:.2f} > {max_load}: waiting")
        time.sleep(poll_s)
        waited += poll_s


def run(command: list[str], max_load: float) -> dict[str, Any]:
    load = wait_quiet(max_load)
    log(f"load {load:.2f}: {' '.join(command)}")
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return {"load_at_start": round(load, 2), "wall_s": round(time.perf_counter() - start, 1)}


def tree(work: Path, seed: int, shots: int) -> Path:
    out = work / "trees" / f"shots{shots}-seed{seed}"
    if not (out / "queries").is_dir():
        subprocess.run(
            [str(PYTHON), str(TREES_TOOL), str(out), "--seed", str(seed), "--shots", str(shots)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def evaluate(model: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    out = args.work / "eval" / f"{model}-shots{args.shots}-seed{seed}.json"
    timing_file = out.with_suffix(".timing.json")
    if not out.is_file():
        folder = tree(args.work, seed, args.shots)
        timing = run(
            [
                str(NEARCAT),
                "eval",
                "--references",
                str(folder / "refs"),
                "--labelled",
                str(folder / "labelled"),
                "--queries",
                str(folder / "queries"),
                "--model",
                model,
                "--models-dir",
                str(args.work / "models"),
                "--embedding-cache",
                str(args.work / "embeddings.npz"),
                "--json",
                str(out),
            ],
            args.max_load,
        )
        timing_file.write_text(json.dumps(timing))
    report = json.loads(out.read_text())
    return {
        "top1": report["top1"],
        "vote_only_top1": report["baselines"]["vote_only"]["top1"],
        "macro_top1": report["macro_top1"],
        "queries": report["counts"]["queries"],
        "references": report["counts"]["references"],
        **json.loads(timing_file.read_text()),
    }


def bench(model: str, kind: str, repeat: int, args: argparse.Namespace) -> dict[str, Any]:
    out = args.work / "bench" / f"{model}-{kind}-r{repeat}.json"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        extra = ["--batch", "32", "--runtime", "onnx"] if kind == "embed" else []
        timing = run(
            [
                str(NEARCAT),
                "bench",
                kind,
                "--model",
                model,
                "--models-dir",
                str(args.work / "models"),
                *extra,
                "--json",
                str(out),
            ],
            args.max_load,
        )
        out.with_suffix(".timing.json").write_text(json.dumps(timing))
    result = json.loads(out.read_text())
    timing = json.loads(out.with_suffix(".timing.json").read_text())
    if kind == "embed":
        (row,) = [r for r in result["results"] if r["runtime"] == "onnx" and r["batch"] == 32]
        return {
            "images_per_s": round(row["images_per_s"], 1),
            "ms_per_batch": round(row["ms_per_batch"], 1),
            "gflop_per_image": round(result["gflop_per_image"], 3),
            "gemm_gflops": round(result["gemm_gflops"], 1),
            "load_at_start": timing["load_at_start"],
        }
    load = result["concurrent"]
    return {
        "images_per_s": round(load["images_per_s"], 1),
        "model_only_images_per_s_batch32": round(result["model_only_images_per_s_batch32"], 1),
        "server_efficiency": round(result["server_efficiency"], 3),
        **timing,
    }


def benches(kind: str, repeats: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """`repeats` runs of `nearcat bench kind` per model, the models taking turns, so that a
    neighbour's load on the shared cores (see each run's GEMM and load) hits all alike."""
    runs: dict[str, list[dict[str, Any]]] = {model: [] for model in args.models}
    for repeat in range(repeats):
        for model in args.models:
            runs[model].append(bench(model, kind, repeat, args))
    return {
        model: {
            "images_per_s_median": statistics.median(r["images_per_s"] for r in done),
            "runs": done,
        }
        for model, done in runs.items()
    }


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": round(statistics.mean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "values": [round(v, 4) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--shots", type=int, default=1, help="clothing_trees.py --shots")
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "backbones")
    parser.add_argument("--max-load", type=float, default=1.5)
    parser.add_argument("--serve", action="store_true", help="also `nearcat bench serve`")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="bench embed runs per model")
    parser.add_argument("--serve-repeats", type=int, default=2, help="bench serve runs per model")
    args = parser.parse_args()
    args.work = args.work.resolve()
    results: dict[str, Any] = {}
    for model in args.models:
        per_seed = {seed: evaluate(model, seed, args) for seed in args.seeds}
        entry: dict[str, Any] = {
            "top1": spread([r["top1"] for r in per_seed.values()]),
            "vote_only_top1": spread([r["vote_only_top1"] for r in per_seed.values()]),
            "macro_top1": spread([r["macro_top1"] for r in per_seed.values()]),
            "eval_runs": {str(seed): r for seed, r in per_seed.items()},
        }
        results[model] = entry
    if not args.skip_bench:
        for model, measured in benches("embed", args.repeats, args).items():
            results[model]["bench_embed_onnx_batch32"] = measured
        if args.serve:
            for model, measured in benches("serve", args.serve_repeats, args).items():
                results[model]["bench_serve"] = measured
    # The splits are shared, so compare models seed by seed: the spread between seeds
    # (one split is easier than another for every model) drops out of the difference.
    first = args.models[0]
    for model in args.models[1:]:
        results[model]["top1_minus_" + first] = spread(
            [
                results[model]["eval_runs"][str(seed)]["top1"]
                - results[first]["eval_runs"][str(seed)]["top1"]
                for seed in args.seeds
            ]
        )
    fast_enough = [
        m
        for m in results
        if "bench_serve" in results[m]
        and results[m]["bench_serve"]["images_per_s_median"] >= MIN_SERVER_RATE
    ]
    choice = max(fast_enough, key=lambda m: results[m]["top1"]["mean"]) if fast_enough else None
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "seeds": args.seeds,
                "shots": args.shots,
                "min_server_images_per_s": MIN_SERVER_RATE,
                "most_accurate_fast_enough": choice,
                "models": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
