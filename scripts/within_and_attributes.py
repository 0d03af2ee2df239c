"""Issue 18's served extras on the clothing trees: what a caller's restriction buys
(`ClassifyOptions.within`), and how well the `kids` attribute is answered.

The clothing trees of ../shared/tools/clothing_trees.py get a two-level taxonomy (DEPARTMENTS:
tops / bottoms / footwear / other, the issue's example; a made-up split, not tuned on
anything). For each seed, an in-process catalogue (real Valkey, `server.catalog.Catalog`, the
packaged model) holds the tree's references under their departments, calibrates on the
tree's labelled photos as a running catalogue would, then classifies every query twice:
free, and `within` its true category's department (what a seller who picked the department
tells the marketplace). The same function serves both (`Catalog.classify`). The references
carry the dataset's `kids` column as an attribute (as `nearcat import --attribute-column
kids` stores it), and so do the labelled photos (`nearcat calibrate --labelled ...
--attribute-column kids`: the attribute's fit uses them; --no-labelled-kids: the references
asked of other shoots); the free answers' kids probabilities are scored against the queries' own
kids values, beside the always-"False" baseline. Prints JSON: top-1, auto-accept share and
precision, the kids figures, per seed and mean ± sd, and the per-seed gains.

    .venv/bin/python scripts/within_and_attributes.py --seeds 0 1 2 3 4 > extras.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedder import load_artifact, resolve_model  # noqa: E402
from embedder.config import DEFAULT_MODEL  # noqa: E402
from embedder.datasets import LabeledImage, load_folder_tree  # noqa: E402
from embedder.text import load_text_tower  # noqa: E402
from indexer.blobs import DirBlobs  # noqa: E402
from indexer.calibration import ece  # noqa: E402
from indexer.decision import Decision  # noqa: E402
from indexer.embedded import EmbeddedValkey  # noqa: E402
from indexer.store import Store  # noqa: E402
from server.catalog import Catalog, Prediction, ReferenceInput  # noqa: E402

TREES_TOOL = ROOT.parent / "shared" / "tools" / "clothing_trees.py"
CLOTHING_CSV = ROOT.parent / "shared" / "datasets" / "clothing" / "images.csv"
DEPARTMENTS = {
    "Tops": [
        "Blazer",
        "Blouse",
        "Hoodie",
        "Longsleeve",
        "Outwear",
        "Polo",
        "Shirt",
        "T-Shirt",
        "Top",
        "Undershirt",
    ],
    "Bottoms": ["Pants", "Shorts", "Skirt"],
    "Footwear": ["Shoes"],
    "Other": ["Body", "Dress", "Hat"],  # and any category not listed above
}
BATCH = 32


def department_of(category: str) -> str:
    for department, members in DEPARTMENTS.items():
        if category in members:
            return department
    return "Other"


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def tree(work: Path, seed: int) -> Path:
    out = work / "trees" / f"seed{seed}"
    if not (out / "queries").is_dir():
        subprocess.run(
            [sys.executable, str(TREES_TOOL), str(out), "--seed", str(seed)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return out


def kids_of() -> dict[str, str]:
    """Image file stem -> its kids value, from the dataset's CSV."""
    with open(CLOTHING_CSV, newline="", encoding="utf-8") as handle:
        return {row["image"]: row["kids"] for row in csv.DictReader(handle) if row["kids"]}


def fill(
    catalog: Catalog, folder: Path, kids: dict[str, str], labelled_kids: bool
) -> dict[str, Any]:
    """The references under their departments, with their kids attribute, and the labelled
    photos; then calibrate. Returns the kids attribute's fit."""
    refs = load_folder_tree(folder / "refs").images
    for department in DEPARTMENTS:
        catalog.add_category(department)
    by_category: dict[str, list[Path]] = {}
    for image in refs:
        by_category.setdefault(image.category, []).append(image.path)
    with tqdm(total=len(refs), desc="references", file=sys.stderr) as bar:
        for category, paths in sorted(by_category.items()):
            catalog.add_category(category, parent=department_of(category))
            for part in chunks(paths, BATCH):
                catalog.add_references(
                    category,
                    [ReferenceInput(p.read_bytes(), attributes=_kids(p, kids)) for p in part],
                )
                bar.update(len(part))
    labelled = load_folder_tree(folder / "labelled").images
    for part in chunks(labelled, BATCH):
        catalog.add_labelled(
            [(i.path.read_bytes(), i.category) for i in part],
            "labelled tree",
            attributes=[_kids(i.path, kids) for i in part] if labelled_kids else (),
        )
    return dict(catalog.calibrate().attributes.get("kids", {}))


def _kids(path: Path, kids: dict[str, str]) -> dict[str, str]:
    value = kids.get(path.stem)
    return {"kids": value} if value else {}


def served(catalog: Catalog, folder: Path, restrict: bool) -> list[tuple[LabeledImage, Prediction]]:
    queries = load_folder_tree(folder / "queries").images
    groups: dict[str, list[LabeledImage]] = {}
    for image in queries:
        groups.setdefault(department_of(image.category) if restrict else "", []).append(image)
    out = []
    with tqdm(total=len(queries), desc="within" if restrict else "free", file=sys.stderr) as bar:
        for department, members in groups.items():
            within = [department] if department else []
            for part in chunks(members, BATCH):
                results = catalog.classify([i.path.read_bytes() for i in part], within=within)
                for image, result in zip(part, results, strict=True):
                    if isinstance(result, Prediction):
                        out.append((image, result))
                bar.update(len(part))
    return out


def figures(answers: list[tuple[LabeledImage, Prediction]]) -> dict[str, Any]:
    right = [image.category == p.category for image, p in answers]
    auto = [
        r for r, (_, p) in zip(right, answers, strict=True) if p.decision is Decision.AUTO_ACCEPT
    ]
    return {
        "queries": len(answers),
        "top1": round(sum(right) / len(right), 4),
        "auto_accepted": round(len(auto) / len(answers), 4),
        "auto_accept_precision": round(sum(auto) / len(auto), 4) if auto else None,
    }


def kids_figures(
    answers: list[tuple[LabeledImage, Prediction]], kids: dict[str, str]
) -> dict[str, Any]:
    """The kids answer against each query's own value: accuracy of the most probable value,
    the always-"False" baseline, recall and precision of "True", ECE of the top value."""
    truths, tops, sure = [], [], []
    for image, prediction in answers:
        truth = kids.get(image.path.stem)
        found = [a for a in prediction.attributes if a.name == "kids"]
        if truth is None or not found:
            continue
        value, probability = found[0].values[0]
        truths.append(truth)
        tops.append(value)
        sure.append(probability)
    right = [t == v for t, v in zip(truths, tops, strict=True)]
    said_true = [t for t, v in zip(truths, tops, strict=True) if v == "True"]
    are_true = [v for t, v in zip(truths, tops, strict=True) if t == "True"]
    return {
        "answered": len(truths),
        "accuracy": round(sum(right) / len(right), 4),
        "always_false_accuracy": round(truths.count("False") / len(truths), 4),
        "true_recall": round(are_true.count("True") / len(are_true), 4) if are_true else None,
        "true_precision": (
            round(said_true.count("True") / len(said_true), 4) if said_true else None
        ),
        "ece": round(ece(sure, right), 4),
    }


def measure(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    folder = tree(args.work, seed)
    embedder = load_artifact(resolve_model(args.model, args.work / "models"))
    with tempfile.TemporaryDirectory() as scratch:
        valkey = EmbeddedValkey(Path(scratch) / "valkey")
        client = valkey.start()
        try:
            store = Store(client, blobs=DirBlobs(Path(scratch) / "blobs"))
            store.seed_model(embedder.version)
            catalog = Catalog(store, embedder, text=load_text_tower(embedder))
            try:
                started = time.perf_counter()
                kids = kids_of()
                kids_fit = fill(catalog, folder, kids, not args.no_labelled_kids)
                free = served(catalog, folder, restrict=False)
                result = {
                    "free": figures(free),
                    "within_department": figures(served(catalog, folder, restrict=True)),
                    "kids": {**kids_figures(free, kids), "fit": kids_fit},
                    "model_version": embedder.version,
                    "wall_s": round(time.perf_counter() - started, 1),
                }
            finally:
                catalog.close()
        finally:
            valkey.stop()
    print(f"seed {seed}: {json.dumps(result)}", file=sys.stderr)
    return result


def spread(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    return {
        "mean": round(statistics.mean(values), 4),
        "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "values": [round(v, 4) for v in values],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="registered name or artifact")
    parser.add_argument(
        "--no-labelled-kids",
        action="store_true",
        help="the labelled photos carry no kids value: the attribute fits on references",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "var" / "extras")
    args = parser.parse_args()
    runs = {seed: measure(seed, args) for seed in args.seeds}
    summary: dict[str, Any] = {}
    for mode in ("free", "within_department"):
        summary[mode] = {
            key: spread([r[mode][key] for r in runs.values() if r[mode][key] is not None])
            for key in ("top1", "auto_accepted", "auto_accept_precision")
        }
    # Same splits for both: the gain is compared seed by seed.
    summary["kids"] = {
        key: spread([r["kids"][key] for r in runs.values() if r["kids"][key] is not None])
        for key in ("accuracy", "always_false_accuracy", "true_recall", "true_precision", "ece")
    }
    summary["gain"] = {
        key: spread([r["within_department"][key] - r["free"][key] for r in runs.values()])
        for key in ("top1", "auto_accepted")
    }
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d"),
                "model": args.model,
                "departments": DEPARTMENTS,
                "seeds": args.seeds,
                "summary": summary,
                "runs": {str(seed): r for seed, r in runs.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
