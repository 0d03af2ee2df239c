"""How a category known from a text prompt alone fares beside categories with reference images
(docs/benchmarks.md, "A category from a prompt alone").

Splits a CSV dataset as `nearcat eval --split val` does and embeds the train part (the
references) and the val part (the queries) with the served model; the test part is never
embedded or scored. Then, for each category C in turn: C loses its references and gets one
prompt, the others keep theirs, and every val query is classified by the server's own code (a
`Serving` encodes the prompt, `indexer.answer.evidence` mixes the text evidence into the kNN
vote; the head is left out, as before a calibration). Reported per C and as means over the
categories: recall of C, precision of the answers C, the share of other categories' val
queries answered C ("taken"), top-1 on those queries with C prompt-only and with C simply
absent (plain kNN), and the share of the other categories' own reference images, each
queried while in the index, answered C. Prints JSON.

    .venv/bin/python scripts/prompt_only_category.py \\
        --data ../shared/datasets/clothing/images.csv --path-template 'images/{}.jpg' \\
        --group-column sender_id --exclude-label 'Not sure' --exclude-label Other \\
        --exclude-label Skip --seed 0 --holdout 4 --cache /tmp/prompt-only-cache

About 2.5 minutes on 2 cores for clothing, 1.5 of them embedding its 4,352 images; with
--cache, a rerun on the same split and model skips that (45 s).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from embedder import Embedder, ImageDecodeError  # noqa: E402
from embedder.artifact import load_artifact, resolve_model  # noqa: E402
from embedder.datasets import LabeledImage  # noqa: E402
from embedder.text import TextTower, load_text_tower, text_shares  # noqa: E402
from indexer.answer import TextEvidence, evidence  # noqa: E402
from indexer.ids import image_sha256, reference_id  # noqa: E402
from indexer.index import VectorIndex  # noqa: E402
from indexer.store import Category  # noqa: E402
from indexer.vote import VoteConfig  # noqa: E402
from server.cli import build_parser  # noqa: E402
from server.commands.evaluate import DEFAULT_MODEL, DEFAULT_MODELS_DIR, choose_images  # noqa: E402
from server.commands.sources import add_csv_arguments  # noqa: E402
from server.evaluation.embedding import EmbeddingCache  # noqa: E402
from server.serving import Serving  # noqa: E402
from server.settings import Settings  # noqa: E402

BATCH = 32
# The per-category figures averaged over categories (precision only where C was ever answered).
FIGURES = (
    "recall",
    "precision",
    "taken",
    "others_top1",
    "others_top1_without",
    "references_taken",
)


@dataclass(frozen=True)
class Embedded:
    """Images as the server holds them: vectors, semantic vectors, labels, SHA-256s."""

    vectors: np.ndarray
    semantics: np.ndarray
    labels: np.ndarray
    shas: np.ndarray

    def only(self, rows: np.ndarray) -> Embedded:
        return Embedded(*(getattr(self, f.name)[rows] for f in fields(self)))

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{f.name}": getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_arrays(cls, arrays: Any, prefix: str) -> Embedded:
        return cls(*(arrays[f"{prefix}_{f.name}"] for f in fields(cls)))


def embed(model: Embedder, images: Sequence[LabeledImage], desc: str) -> tuple[Embedded, int]:
    """The images' vectors and semantic vectors, as `Serving.model_rows` computes them;
    unreadable images are skipped (as eval does) and counted."""
    vectors, semantics, labels, shas, skipped = [], [], [], [], 0
    for start in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch"):
        pixels = []
        for image in images[start : start + BATCH]:
            data = image.path.read_bytes()
            try:
                pixels.append(model.decode(data))
            except ImageDecodeError as exc:
                print(f"skipped {image.path}: {exc}", file=sys.stderr)
                skipped += 1
                continue
            labels.append(image.category)
            shas.append(image_sha256(data))
        if pixels:
            v, s = model.embed_pixels_with_semantics(np.stack(pixels))
            vectors.append(v)
            semantics.append(s)
    part = Embedded(
        np.concatenate(vectors), np.concatenate(semantics), np.array(labels), np.array(shas)
    )
    return part, skipped


def embedded_split(
    model: Embedder,
    references: Sequence[LabeledImage],
    queries: Sequence[LabeledImage],
    cache: Path | None,
) -> tuple[Embedded, Embedded, int]:
    """References and val queries embedded, from `cache` when it holds this model and split."""
    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            return (
                Embedded.from_arrays(saved, "references"),
                Embedded.from_arrays(saved, "queries"),
                int(saved["skipped"]),
            )
    refs, skipped_refs = embed(model, references, "references")
    vals, skipped_vals = embed(model, queries, "val queries")
    skipped = skipped_refs + skipped_vals
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        # Any: numpy's stubs read a mapping of arrays as its allow_pickle flag.
        arrays: dict[str, Any] = refs.arrays("references") | vals.arrays("queries")
        np.savez(cache, skipped=np.array(skipped), **arrays)
    return refs, vals, skipped


def answers(
    s: Serving, names: Sequence[str], prompt_weight: float, vote: VoteConfig, embedded: Embedded
) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 of each image as served (kNN vote, then the text evidence of prompted
    categories), and the plain kNN vote's top-1."""
    assert s.text is not None
    snapshot = s.text_snapshot(sorted(names))
    assert snapshot is not None
    text_names, text_vectors = snapshot
    prompted = {n: s.index.count(n) for n in text_names if n in s.prompted}
    served, plain = [], []
    neighbours = s.index.search(embedded.vectors, vote.k)
    for hits, semantic in zip(neighbours, embedded.semantics, strict=True):
        plain.append(evidence(hits, vote)[0].category)
        shares = text_shares(s.text, semantic, text_vectors)[0].tolist()
        text = TextEvidence.weighed(text_names, shares, prompted, prompt_weight)
        served.append(evidence(hits, vote, None, text)[0].category)
    return np.array(served), np.array(plain)


def share(mask: np.ndarray) -> float | None:
    return round(float(mask.mean()), 4) if mask.size else None


def prompt_only(
    category: str,
    prompt: str,
    model: Embedder,
    tower: TextTower,
    prompt_weight: float,
    vote: VoteConfig,
    refs: Embedded,
    vals: Embedded,
) -> dict[str, Any]:
    """The figures for `category` known from `prompt` alone, the others from their references."""
    others = refs.labels != category
    kept = refs.only(others)
    labels = kept.labels.tolist()
    ids = [reference_id(c, sha) for c, sha in zip(labels, kept.shas.tolist(), strict=True)]
    index = VectorIndex.build(kept.vectors.shape[1], ids, labels, kept.vectors)
    s = Serving(model, index, tower)
    try:
        s.set_texts([Category(category, None, {}, 0, 0, [prompt])])  # as the catalogue does
        names = sorted(set(refs.labels.tolist()))
        served, plain = answers(s, names, prompt_weight, vote, vals)
        reference_answers, _ = answers(s, names, prompt_weight, vote, kept)
    finally:
        s.close()
    is_c, answered_c = vals.labels == category, served == category
    rest = ~is_c
    return {
        "val_queries": int(is_c.sum()),
        "recall": share(answered_c[is_c]),
        "precision": share(is_c[answered_c]),
        "answered": int(answered_c.sum()),
        "taken": share(answered_c[rest]),
        "others_top1": share(served[rest] == vals.labels[rest]),
        "others_top1_without": share(plain[rest] == vals.labels[rest]),
        "references_taken": share(reference_answers == category),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, required=True, metavar="CSV", help="the labelled images' CSV"
    )
    add_csv_arguments(parser)
    parser.add_argument(
        "--group-column",
        metavar="COLUMN",
        help="CSV column whose rows stay on one side of the split (e.g. the sender), so one "
        "source's photos are never both references and queries",
    )
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    parser.add_argument(
        "--holdout",
        type=int,
        default=4,
        metavar="N",
        help="categories `nearcat eval --holdout` names as held out of training (default: 4); "
        "recorded with the split, which it does not change: for the frozen model every "
        "category has references",
    )
    parser.add_argument(
        "--prompt-template",
        default="{}",
        metavar="TEMPLATE",
        help="the prompt-only category's one prompt, {} its name. The default, the bare name, "
        "is what `nearcat eval --zero-shot` uses; the packaged tower wraps every text in "
        "'a photo of a {}.' itself, so do not add that again",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        metavar="DIR",
        help="keep the embedded vectors here between runs, one file per model and split",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registered model name or artifact directory (default: {DEFAULT_MODEL}, the "
        "server's)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        metavar="DIR",
        help=f"where registered models are materialised (default: {DEFAULT_MODELS_DIR})",
    )
    args = parser.parse_args()
    if "{}" not in args.prompt_template:
        parser.error("--prompt-template needs {} where the category name goes")

    eval_args = ["eval", "--data", str(args.data), "--split", "val"]
    eval_args += ["--path-template", args.path_template, "--seed", str(args.seed)]
    eval_args += ["--path-column", args.path_column, "--label-column", args.label_column]
    eval_args += ["--holdout", str(args.holdout)]
    eval_args += ["--group-column", args.group_column] if args.group_column else []
    for label in args.exclude_label:
        eval_args += ["--exclude-label", label]
    references, queries, _, _, split, _ = next(
        choose_images(build_parser().parse_args(eval_args), [args.seed], EmbeddingCache())
    )
    assert split is not None  # --data is always split
    model = load_artifact(resolve_model(args.model, args.models_dir), runtime="auto")
    tower = load_text_tower(model)
    if tower is None:
        parser.error(f"{args.model} has no text tower, so no category can have a prompt")
    cache = args.cache / f"{model.version}-{split['fingerprint']}.npz" if args.cache else None
    refs, vals, skipped = embedded_split(model, references, queries, cache)

    categories = sorted(set(refs.labels.tolist()))
    prompt_weight = float(Settings.model_fields["prompt_weight"].default)
    vote = VoteConfig()
    per_category = {
        c: prompt_only(
            c, args.prompt_template.format(c), model, tower, prompt_weight, vote, refs, vals
        )
        for c in tqdm(categories, desc="categories")
    }
    means: dict[str, float | int | None] = {}
    for figure in FIGURES:
        values = [r[figure] for r in per_category.values() if r[figure] is not None]
        means[figure] = round(float(np.mean(values)), 4) if values else None
    means["categories_with_precision"] = sum(
        r["precision"] is not None for r in per_category.values()
    )
    result = {
        "queries": "the val part only; the test part is never embedded or scored",
        "split": split,
        "references": len(refs.labels),
        "val_queries": len(vals.labels),
        "skipped_unreadable": skipped,
        "model": model.version,
        "text_tower": tower.version,
        "prompt_template": args.prompt_template,
        "prompt_weight": prompt_weight,
        "vote": asdict(vote),
        "means_over_categories": means,
        "per_category": per_category,
    }
    print(json.dumps(result, indent=2))
    print(
        f"a prompt-only category, mean over {len(categories)}: "
        + ", ".join(f"{figure} {means[figure]}" for figure in FIGURES),
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
