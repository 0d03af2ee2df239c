"""Splits: grouped (no contributor on both sides), stratified, held-out categories."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from embedder.datasets import LabeledImage
from embedder.splits import split_dataset


def images(categories: int = 6, groups: int = 40, per_group: int = 5) -> list[LabeledImage]:
    out = []
    for g in range(groups):
        for n in range(per_group):
            category = f"c{(g + n) % categories}"
            out.append(LabeledImage(Path(f"{g}-{n}.jpg"), category, f"sender-{g}"))
    return out


def test_no_group_is_on_two_sides_and_every_image_is_used_once() -> None:
    data = images()
    split = split_dataset(data, seed=1)
    sides = [{i.group for i in part} for part in (split.train, split.val, split.test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert sorted(i.path.name for i in split.train + split.val + split.test) == sorted(
        i.path.name for i in data
    )
    assert 0.6 < len(split.train) / len(data) < 0.8


def test_every_category_reaches_train_and_test() -> None:
    split = split_dataset(images(), seed=2)
    categories = {i.category for i in images()}
    assert {i.category for i in split.train} == categories
    assert {i.category for i in split.test} == categories


def test_held_out_categories_are_not_trainable_but_stay_as_references() -> None:
    split = split_dataset(images(), seed=3, holdout=2)
    assert len(split.held_out) == 2
    trained = Counter(i.category for i in split.trainable())
    assert not set(split.held_out) & set(trained)
    assert set(split.held_out) <= {i.category for i in split.train}
    assert split_dataset(images(), seed=3, holdout=["c0"]).held_out == ["c0"]
    with pytest.raises(ValueError, match="not in the data: nope"):
        split_dataset(images(), holdout=["nope"])


def test_same_seed_same_split() -> None:
    first, second = split_dataset(images(), seed=5), split_dataset(images(), seed=5)
    assert [i.path for i in first.test] == [i.path for i in second.test]
