"""How `nearcat import` cuts a category's images into AddReferences calls."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from embedder.datasets import LabeledImage
from server.commands.catalogue import new_images
from server.commands.client import import_batches


def _items(*sizes: int) -> list[tuple[LabeledImage, bytes]]:
    return [(LabeledImage(Path(f"{n}.jpg"), "dots"), b"x" * size) for n, size in enumerate(sizes)]


def _sizes(batches: list[list[tuple[LabeledImage, bytes]]]) -> list[list[int]]:
    return [[len(data) for _, data in batch] for batch in batches]


def test_batches_hold_at_most_so_many_images() -> None:
    assert _sizes(list(import_batches(_items(1, 1, 1, 1, 1), 2, 100))) == [[1, 1], [1, 1], [1]]


def test_batches_stay_under_the_byte_budget_and_a_big_image_goes_alone() -> None:
    batches = list(import_batches(_items(40, 40, 40, 300, 10), 16, 100))
    assert _sizes(batches) == [[40, 40], [40], [300], [10]]


class _Bar:
    def __init__(self) -> None:
        self.n = 0

    def update(self, n: int) -> None:
        self.n += n


def test_an_unreadable_file_is_counted_and_skipped(tmp_path: Path) -> None:
    readable = tmp_path / "a.jpg"
    readable.write_bytes(b"image")
    images = [LabeledImage(tmp_path / "gone.jpg", "dots"), LabeledImage(readable, "dots")]
    counts: Counter[str] = Counter()
    bar = _Bar()
    new = list(new_images(images, "dots", set(), counts, bar))
    assert [image.path for image, _ in new] == [readable]
    assert counts == Counter(failed=1) and bar.n == 1
