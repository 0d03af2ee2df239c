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


def with_one_big_sender() -> list[LabeledImage]:
    """100 senders of 5 photos, and one sender of 60 photos across every category: most of a
    query part (about 80 images) if it landed there."""
    return images(groups=100) + [
        LabeledImage(Path(f"big-{n}.jpg"), f"c{n % 6}", "big-sender") for n in range(60)
    ]


def test_a_sender_too_big_for_a_query_part_goes_to_train() -> None:
    data = with_one_big_sender()
    split = split_dataset(data, seed=0)
    assert sum(i.group == "big-sender" for i in split.train) == 60
    shares = split.summary()["largest_group_share"]
    assert isinstance(shares, dict) and max(shares.values()) <= 0.1
    # val and test keep their size: about a seventh of the images each
    assert abs(len(split.test) - len(data) / 7) < 10 and abs(len(split.val) - len(data) / 7) < 10


def test_with_no_sender_over_the_cap_the_split_is_the_uncapped_one() -> None:
    data = images(groups=100)  # senders of 5 photos, a query part of about 71
    capped, uncapped = split_dataset(data, seed=4), split_dataset(data, seed=4, max_group_share=1)
    assert [i.path for i in capped.test] == [i.path for i in uncapped.test]
    assert [i.path for i in capped.val] == [i.path for i in uncapped.val]


def test_the_cap_keeps_enough_images_to_split_when_every_sender_is_over_it() -> None:
    data = images(groups=14, per_group=20)  # each sender is half a query part
    split = split_dataset(data, seed=0, max_group_share=0.1)
    assert split.val and split.test and len(split.train) > len(split.val)
    with pytest.raises(ValueError, match="max_group_share must be in"):
        split_dataset(data, max_group_share=0)


def test_another_seed_gives_another_split() -> None:
    data = images(groups=100)
    first, second = split_dataset(data, seed=0), split_dataset(data, seed=1)
    shared = {i.path for i in first.test} & {i.path for i in second.test}
    assert len(shared) < 0.6 * len(first.test)  # by chance alone about a seventh is shared
    per_category = Counter(i.category for i in second.test)
    assert max(per_category.values()) - min(per_category.values()) <= 5  # still stratified


def test_holding_out_nothing_needs_no_category_big_enough_to_hold_out() -> None:
    data = images(groups=10)  # about 8 images per category: too few to measure held out
    assert split_dataset(data, seed=0, holdout=0).held_out == []
    with pytest.raises(ValueError, match="cannot hold out 1 of 0 categories"):
        split_dataset(data, seed=0, holdout=1)
