"""Labelled images on disk, in the two layouts every data-taking command accepts.

- A folder tree: a folder that holds images is a category; the folders above it are its
  parent categories (``Fruit/Apple/Granny-Smith/*.jpg`` -> ``Granny-Smith`` under ``Apple``
  under ``Fruit``).
- A CSV with an image-path column and a label column (e.g. the clothing dataset).

Problems (missing files, clashing names) are collected and reported, never raised mid-way,
so one bad row does not stop a long import; every file of a tree that is not taken is
listed with the reason (`Dataset.skipped`), never silently left out. Category names are
Unicode NFC, as the server stores them: a folder macOS named "Café" (decomposed, "e" and a
combining accent) is the category "Café" typed on any other keyboard.
"""

from __future__ import annotations

import csv
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
# Image formats people keep beside their photos that nearcat does not read, for the reason
# it gives when it skips one.
OTHER_IMAGE_FORMATS = {
    ".gif": "GIF",
    ".avif": "AVIF",
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".svg": "SVG",
    ".jxl": "JPEG XL",
}


@dataclass(frozen=True)
class LabeledImage:
    path: Path
    category: str
    group: str | None = None
    # Labels besides the category (`nearcat import --attribute-column`): name -> value.
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass
class Dataset:
    """Images with their categories, each category's parent, and what could not be used:
    problems (a clash, missing rows) and the files of a tree that were not taken."""

    images: list[LabeledImage] = field(default_factory=list)
    parents: dict[str, str | None] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    def categories(self) -> list[str]:
        """Every category, parents before their children."""
        ordered: list[str] = []

        def visit(name: str) -> None:
            if name in ordered:
                return
            parent = self.parents.get(name)
            if parent:
                visit(parent)
            ordered.append(name)

        for name in sorted(self.parents):
            visit(name)
        return ordered

    def by_category(self) -> dict[str, list[LabeledImage]]:
        grouped: dict[str, list[LabeledImage]] = {}
        for image in self.images:
            grouped.setdefault(image.category, []).append(image)
        return grouped


def load_folder_tree(root: Path) -> Dataset:
    root = Path(root)
    dataset = Dataset()
    seen_at: dict[str, Path] = {}
    for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
        files = []
        for path in sorted(p for p in folder.iterdir() if not p.is_dir()):
            reason = not_an_image(path)
            if reason is None:
                files.append(path)
            else:
                dataset.skipped.append(SkippedFile(path, reason))
        if folder == root:
            where = f"directly in {root}, not in a category folder (e.g. {root / 'Shoes'})"
            dataset.skipped.extend(SkippedFile(path, where) for path in files)
            continue
        if not files:
            continue
        parts = tuple(_nfc(part) for part in folder.relative_to(root).parts)
        clash = _register_path(dataset, root, parts, seen_at)
        if clash:
            dataset.problems.append(clash)
            reason = f"category name {parts[-1]!r} is used by another folder too (see above)"
            dataset.skipped.extend(SkippedFile(path, reason) for path in files)
            continue
        dataset.images.extend(LabeledImage(p, parts[-1]) for p in files)
    return dataset


def not_an_image(path: Path) -> str | None:
    """Why a file of a folder tree is not taken as an image, by its name; None if it is.
    Its content is the server's to judge (a .jpg that is not one is refused, saying so)."""
    if path.name.startswith("."):
        return "a hidden file (e.g. .DS_Store, or macOS's ._ copy of a photo's metadata)"
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return None
    if suffix in OTHER_IMAGE_FORMATS:
        return (
            f"{OTHER_IMAGE_FORMATS[suffix]} image: nearcat reads JPEG, PNG and WebP only; "
            "convert it to add it"
        )
    return "not an image nearcat reads: JPEG, PNG and WebP only (.jpg, .jpeg, .png, .webp)"


def _register_path(
    dataset: Dataset, root: Path, parts: tuple[str, ...], seen_at: dict[str, Path]
) -> str | None:
    """Record each folder on the path as a category under its parent; report name clashes."""
    for depth, name in enumerate(parts):
        where = root.joinpath(*parts[: depth + 1])
        if seen_at.setdefault(name, where) != where:
            return (
                f"category name {name!r} is used by both {seen_at[name]} and {where}; category "
                f"names must be unique: rename one folder. Skipped {root.joinpath(*parts)}"
            )
        dataset.parents[name] = parts[depth - 1] if depth else None
    return None


def load_csv(
    csv_path: Path,
    path_column: str = "image",
    label_column: str = "label",
    path_template: str = "{}",
    group_column: str | None = None,
    exclude_labels: Iterable[str] = (),
    attribute_columns: Sequence[str] = (),
) -> Dataset:
    """Rows of (image path, label). Paths are relative to the CSV's folder; `path_template`
    turns a column value into a path, e.g. ``images/{}.jpg``. Each of `attribute_columns`
    becomes an attribute of its row's image, named as the column (a blank cell: none)."""
    csv_path = Path(csv_path)
    excluded = {_nfc(label) for label in exclude_labels}
    dataset = Dataset()
    with open(csv_path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        for column in (path_column, label_column, group_column, *attribute_columns):
            if column and column not in columns:
                raise ValueError(
                    f"{csv_path} has no column {column!r}; its columns are {', '.join(columns)}"
                )
        missing = 0
        for row in reader:
            label = _nfc((row[label_column] or "").strip())
            if not label or label in excluded:
                continue
            path = csv_path.parent / path_template.format(row[path_column])
            if not path.is_file():
                missing += 1
                if missing <= 5:
                    dataset.problems.append(f"{path} (row for {label!r}) does not exist; skipped")
                continue
            # A blank cell is no group, not one group "" of every ungrouped image.
            group = ((row[group_column] or "").strip() or None) if group_column else None
            attributes = {
                column: value
                for column in attribute_columns
                if (value := _nfc((row[column] or "").strip()))
            }
            dataset.images.append(LabeledImage(path, label, group, attributes))
            dataset.parents.setdefault(label, None)
    if missing > 5:
        dataset.problems.append(f"... {missing} missing image files in all")
    if missing and not dataset.images:
        dataset.problems.append(
            f"no image of {csv_path} exists: does --path-template (now {path_template!r}) "
            "say how its path column becomes a file path, e.g. 'images/{}.jpg'?"
        )
    return dataset


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def load_dataset(source: Path, **csv_options: object) -> Dataset:
    """A folder tree or a CSV file, by what `source` is."""
    source = Path(source)
    if source.is_dir():
        return load_folder_tree(source)
    if source.suffix.lower() == ".csv" and source.is_file():
        return load_csv(source, **csv_options)  # type: ignore[arg-type]
    raise ValueError(f"{source} is neither a folder of category folders nor a .csv file")
