"""Can the frozen backbone's vectors classify better without training? (docs/benchmarks.md,
"Tricks on the frozen features, tried and not kept".)

Embeds every image of a CSV dataset once per input variant (size, centre crop, mirrored),
then measures the server's kNN vote on the *val* part of each split seed (test untouched)
for each way of combining the vectors. Prints JSON: variant -> mean, sd, per-seed top-1.

    .venv/bin/python scripts/frozen_feature_variants.py \\
        --data ../shared/datasets/clothing/images.csv --path-template 'images/{}.jpg' \\
        --group-column sender_id --exclude-label 'Not sure' --exclude-label Other \\
        --exclude-label Skip --holdout 4 --seeds 0 1 2 3 4

About 10 minutes on 2 cores for clothing (5,096 images, four embedding passes).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedder.artifact import load_artifact, resolve_model  # noqa: E402
from embedder.datasets import load_dataset  # noqa: E402
from embedder.model import Embedder  # noqa: E402
from embedder.splits import split_dataset  # noqa: E402
from indexer.vote import VoteConfig  # noqa: E402
from server.evaluation.embedding import EmbeddedImages  # noqa: E402
from server.evaluation.evaluate import knn_answers  # noqa: E402
from server.evaluation.metrics import top_k_accuracy  # noqa: E402

Vectors = np.ndarray
Make = Callable[[list[int], list[int]], tuple[Vectors, Vectors]]


def unit(x: Vectors) -> Vectors:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embed_all(embedder: Embedder, paths: list[Path], mirrored: bool = False) -> Vectors:
    rows = []
    pre = embedder.config.preprocess
    desc = f"{pre.input_size} px, crop {pre.crop_pct}" + (", mirrored" if mirrored else "")
    for start in tqdm(range(0, len(paths), 32), desc=desc):
        pixels = np.stack([embedder.decode(p.read_bytes()) for p in paths[start : start + 32]])
        if mirrored:
            pixels = np.ascontiguousarray(pixels[..., ::-1])
        rows.append(embedder.embed_pixels(pixels))
    return np.concatenate(rows)


def with_input(embedder: Embedder, size: int, crop_pct: float) -> Embedder:
    """The same network, fed another input size or crop (the PyTorch backend takes any)."""
    preprocess = replace(embedder.config.preprocess, input_size=size, crop_pct=crop_pct)
    config = replace(embedder.config, preprocess=preprocess)
    return Embedder(embedder.backend, config, f"{embedder.version}-{size}-{crop_pct}")


def centred(x: Vectors) -> Make:
    def make(refs: list[int], queries: list[int]) -> tuple[Vectors, Vectors]:
        mean = x[refs].mean(0)
        return unit(x[refs] - mean), unit(x[queries] - mean)

    return make


def whitened(x: Vectors, dim: int, power: float) -> Make:
    def make(refs: list[int], queries: list[int]) -> tuple[Vectors, Vectors]:
        mean = x[refs].mean(0)
        _, scale, axes = np.linalg.svd(x[refs] - mean, full_matrices=False)
        project = axes[:dim].T / scale[:dim] ** power
        return unit((x[refs] - mean) @ project), unit((x[queries] - mean) @ project)

    return make


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--path-template", default="{}")
    parser.add_argument("--group-column")
    parser.add_argument("--exclude-label", action="append", default=[])
    parser.add_argument("--holdout", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--models-dir", type=Path, default=Path("var/models"))
    parser.add_argument("--limit", type=int, default=0, help="first N images only (a smoke run)")
    args = parser.parse_args()

    dataset = load_dataset(
        args.data,
        path_template=args.path_template,
        group_column=args.group_column,
        exclude_labels=args.exclude_label,
    )
    images = dataset.images[: args.limit or None]
    paths = [i.path for i in images]
    row = {p: n for n, p in enumerate(paths)}
    base = load_artifact(resolve_model(args.model, args.models_dir), runtime="torch")
    plain = embed_all(base, paths)
    flipped = embed_all(base, paths, mirrored=True)
    mirror = unit(plain + flipped)
    big = embed_all(with_input(base, 288, 0.875), paths)
    uncropped = embed_all(with_input(base, 224, 1.0), paths)

    def same(x: Vectors) -> Make:
        return lambda refs, queries: (x[refs], x[queries])

    variants: dict[str, Make] = {
        "as served (224 px, centre crop)": same(plain),
        "mean with the mirror image": same(mirror),
        "mirrored references added": lambda r, q: (
            np.concatenate([plain[r], flipped[r]]),
            plain[q],
        ),
        "centred on the references": centred(plain),
        "centred, with the mirror mean": centred(mirror),
        **{
            f"PCA-whitened, {dim} dims, power {power}": whitened(plain, dim, power)
            for dim in (128, 256, 512)
            for power in (0.25, 0.5)
        },
        "288 px": same(big),
        "no centre crop": same(uncropped),
        "224 + 288 px concatenated": same(unit(np.hstack([plain, big]))),
        "with and without crop concatenated": same(unit(np.hstack([plain, uncropped]))),
    }
    splits = {s: split_dataset(images, seed=s, holdout=args.holdout) for s in args.seeds}
    results = {}
    for name, make in variants.items():
        top1 = []
        for split in splits.values():
            refs, queries = [row[i.path] for i in split.train], [row[i.path] for i in split.val]
            ref_vectors, query_vectors = make(refs, queries)
            copies = len(ref_vectors) // len(refs)  # mirrored references: each image twice
            references = EmbeddedImages(
                split.train * copies, [str(n) for n in range(len(ref_vectors))], ref_vectors
            )
            answers = knn_answers(
                references,
                EmbeddedImages(split.val, [f"q{n}" for n in queries], query_vectors),
                VoteConfig(),
            )
            top1.append(top_k_accuracy(answers, 1))
        results[name] = {
            "val_top1_mean": round(float(np.mean(top1)), 4),
            "val_top1_sd": round(float(np.std(top1)), 4),
            "by_seed": dict(zip(map(str, args.seeds), (round(t, 4) for t in top1), strict=True)),
        }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
