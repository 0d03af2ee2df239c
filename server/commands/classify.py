"""Asking the server about images and text: `classify`, `zero-shot` and `search`."""

from __future__ import annotations

import argparse
import json
from typing import Any

from server.commands.client import (
    IMPORT_BATCH_BYTES,
    client_command,
    connect,
    import_batches,
    read_file,
    within_message_limit,
)

CLASSIFY_BATCH = 32
# nearcat.v1.Decision numbers -> names, without importing the generated code at start-up
DECISIONS = {0: "unspecified", 1: "auto_accept", 2: "flag", 3: "review", 4: "unknown"}


def register_classify(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "classify",
        "classify image files",
        "Classify image files against the server's categories. Prints the best category with "
        "its score and the runners-up; --json prints one JSON object per file, with the "
        "nearest references as evidence. Exits 1 if any file could not be classified.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="JPEG, PNG or WebP files")
    parser.add_argument("--top-n", type=int, default=3, help="categories to show per image")
    parser.add_argument(
        "--within",
        action="append",
        default=[],
        metavar="CATEGORY",
        help="only answer with this category or those under it (a department the photo is "
        "known to be from); repeat for several",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.set_defaults(run=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    stub = connect(args)
    options = pb.ClassifyOptions(top_n=args.top_n, within=args.within)
    exit_code = 0
    files = ((path, read_file(path)) for path in args.files)
    for batch in import_batches(files, CLASSIFY_BATCH, IMPORT_BATCH_BYTES):
        paths = [path for path, _ in batch]
        images = [image for _, image in batch]
        request = pb.ClassifyBatchRequest(images=images, options=options)
        with within_message_limit("ClassifyBatch", images):
            response = stub.ClassifyBatch(request)
        for path, item in zip(paths, response.results, strict=True):
            if item.HasField("error"):
                exit_code = 1
            print_result(path, item, response.model_version, args.json)
    if exit_code:
        raise SystemExit(exit_code)


def print_result(path: str, item: Any, model_version: str, as_json: bool) -> None:
    if item.HasField("error"):
        if as_json:
            error = {"code": item.error.code, "message": item.error.message}
            print(json.dumps({"file": path, "error": error}))
        else:
            print(f"{path}: error {item.error.code}: {item.error.message}")
        return
    result = item.classification
    if as_json:
        print(
            json.dumps(
                {
                    "file": path,
                    "model_version": model_version,
                    "decision": DECISIONS[result.decision],
                    "confidence": round(result.confidence, 4),
                    "attributes": {
                        a.name: {v.value: round(v.probability, 4) for v in a.values}
                        for a in result.attributes
                    },
                    "levels": [
                        {"depth": lv.depth, "category": lv.category, "score": round(lv.score, 4)}
                        for lv in result.levels
                    ],
                    "confident_ancestor": (
                        result.confident_ancestor.category
                        if result.HasField("confident_ancestor")
                        else None
                    ),
                    "categories": [
                        {"category": c.category, "score": round(c.score, 4), "path": list(c.path)}
                        for c in result.categories
                    ],
                    "neighbors": [
                        {
                            "reference_id": n.reference_id,
                            "category": n.category,
                            "similarity": round(n.similarity, 4),
                        }
                        for n in result.neighbors
                    ],
                }
            )
        )
        return
    decision = DECISIONS[result.decision].replace("_", "-")
    if not result.categories:  # no reference near enough to say anything
        print(f"{path}: no category ({decision})")
        return
    best = result.categories[0]
    # The decision follows the confidence: the answer's probability (indexer/answer.py).
    print(f"{path}: {' > '.join(best.path)}  ({best.score:.2f}, {decision})")
    if result.HasField("confident_ancestor"):
        ancestor = result.confident_ancestor
        print(
            f"    sure of its parent {ancestor.category} ({ancestor.score:.2f}), "
            "less of the category itself"
        )
    for other in result.categories[1:]:
        print(f"    {' > '.join(other.path)}  ({other.score:.2f})")
    for attribute in result.attributes:
        values = ", ".join(f"{v.value} {v.probability:.2f}" for v in attribute.values[:3])
        print(f"    {attribute.name}: {values}  ({attribute.voters} of the neighbours say)")


def register_zero_shot(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "zero-shot",
        "rank free-text labels for an image (no references needed)",
        "Score an image against labels you name, with the model's text tower: no category or "
        "reference is needed. Prints the labels best first.",
    )
    parser.add_argument("image", help="JPEG, PNG or WebP file")
    parser.add_argument(
        "--label", action="append", required=True, help="a candidate label (repeatable)"
    )
    parser.set_defaults(run=cmd_zero_shot)


def cmd_zero_shot(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    image = read_file(args.image)
    ranked = connect(args).ZeroShot(pb.ZeroShotRequest(image=image, labels=args.label)).labels
    for item in ranked:
        print(f"{item.score:6.3f}  {item.label}")


def register_search(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = client_command(
        commands,
        "search",
        "find categories and reference images from text",
        "Categories whose prompts (or names) best match TEXT, and the reference images "
        "nearest to it.",
    )
    parser.add_argument("text", help="e.g. 'red sneakers'")
    parser.add_argument("--top-n", type=int, default=5, help="categories to show")
    parser.add_argument("--k", type=int, default=5, help="reference images to show")
    parser.set_defaults(run=cmd_search)


def cmd_search(args: argparse.Namespace) -> None:
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    request = pb.SearchByTextRequest(text=args.text, top_n=args.top_n, k=args.k)
    found = connect(args).SearchByText(request)
    print("categories (text similarity):")
    for c in found.categories:
        print(f"  {c.score:6.3f}  {' > '.join(c.path)}")
    if found.references:
        print("nearest reference images:")
        for r in found.references:
            print(f"  {r.similarity:6.3f}  {r.category}  {r.reference_id}")
