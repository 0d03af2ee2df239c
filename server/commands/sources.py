"""Options shared by every command that reads labelled images (import, train, eval)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedder.datasets import Dataset


def add_csv_arguments(parser: Any) -> None:
    """How a CSV source names its images and labels; folder trees need none of these."""
    parser.add_argument(
        "--path-column",
        default="image",
        help="CSV column with the image path (default: %(default)s)",
    )
    parser.add_argument(
        "--label-column",
        default="label",
        help="CSV column with the category (default: %(default)s)",
    )
    parser.add_argument(
        "--path-template",
        default="{}",
        help="turns the path column into a path relative to the CSV, e.g. 'images/{}.jpg' "
        "(default: %(default)s, the column is the path)",
    )
    parser.add_argument(
        "--exclude-label", action="append", default=[], help="CSV label to skip (repeatable)"
    )


def load_source(
    source: Path, args: argparse.Namespace, flag: str = "", show_skipped: int | None = 5
) -> Dataset:
    """The labelled images of a folder tree or CSV; problems are printed as warnings, then
    the files left out (not images nearcat reads, ...) with the reason: the first
    `show_skipped` and their count, or all of them (None)."""
    from embedder.datasets import load_dataset
    from server.commands import CommandError

    where = f"{flag} {source}".strip()
    try:
        dataset = load_dataset(
            source,
            path_column=args.path_column,
            label_column=args.label_column,
            path_template=args.path_template,
            group_column=getattr(args, "group_column", None),
            exclude_labels=args.exclude_label,
            attribute_columns=getattr(args, "attribute_column", None) or (),
        )
    except (ValueError, OSError) as exc:
        raise CommandError(f"{where}: {exc}") from exc
    for problem in dataset.problems:
        print(f"warning: {problem}", file=sys.stderr)
    shown = dataset.skipped if show_skipped is None else dataset.skipped[:show_skipped]
    for skipped in shown:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if len(shown) < len(dataset.skipped):
        print(f"... {len(dataset.skipped)} files of {where} skipped in all", file=sys.stderr)
    if not dataset.images:
        raise CommandError(f"{where}: no images found")
    return dataset
