"""Splitting a labelled dataset for training and evaluation, without leakage.

- Stratified: every category keeps roughly the same share in each part.
- Grouped: all images of one group (e.g. one contributor, whose photos share background and
  lighting) land in the same part, so a query never has a near-twin among the references.
- Capped groups: a group too big to be a small share of a query part goes to train, so no one
  contributor's photos make up most of what val or test measure.
- Held-out categories: some categories are never trained on; their images still appear as
  references and queries, to measure the open-set promise (new categories without training).
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedder.datasets import LabeledImage

FOLDS = 7  # one fold test, one fold validation, five folds train: about 72/14/14
# At most this share of a query part (val or test, each about 1/FOLDS of the images) may come
# from one group. Measured on clothing: without a cap one sender was 73% of test (617 of 849).
MAX_GROUP_SHARE = 0.1


@dataclass(frozen=True)
class Split:
    """train: training images, and the references for evaluation.
    val: queries for model selection.  test: queries for the final report, used once.
    held_out: categories whose train part is added as references only, never trained on."""

    train: list[LabeledImage]
    val: list[LabeledImage]
    test: list[LabeledImage]
    held_out: list[str]

    def trainable(self) -> list[LabeledImage]:
        """The training images a model may learn from: held-out categories excluded."""
        held_out = set(self.held_out)
        return [i for i in self.train if i.category not in held_out]

    def fingerprint(self) -> str:
        """Which image (by category and file name) is in which part, whatever flags or paths
        made it. Not which categories are held out: compare `held_out` for that."""
        digest = hashlib.sha256()
        for name, part in (("train", self.train), ("val", self.val), ("test", self.test)):
            for entry in sorted(f"{name}/{i.category}/{i.path.name}" for i in part):
                digest.update(entry.encode() + b"\n")
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, object]:
        summary: dict[str, object] = {
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "held_out_categories": list(self.held_out),
            "categories": len({i.category for i in self.train}),
            "fingerprint": self.fingerprint(),
        }
        if any(i.group is not None for i in self.val + self.test):
            summary["largest_group_share"] = {
                "val": _largest_group_share(self.val),
                "test": _largest_group_share(self.test),
            }
        return summary


def split_dataset(
    images: Sequence[LabeledImage],
    seed: int = 0,
    grouped: bool = True,
    holdout: int | Sequence[str] = 0,
    max_group_share: float = MAX_GROUP_SHARE,
) -> Split:
    """Stratified (and, when images carry groups, grouped) train/val/test split.

    `holdout` is a number of categories to hold out of training, picked at random among the
    categories with enough images, or their names. A group with more images than
    `max_group_share` of a query part's target size (1/FOLDS of the images) goes to train
    whole (largest first, while three parts' worth of images stay to split); the other groups
    are split so that val and test each keep that target size. `max_group_share=1` moves only
    groups bigger than a whole part.
    """
    if len(images) < FOLDS:
        raise ValueError(f"{len(images)} images are too few to split; need at least {FOLDS}")
    if not 0 < max_group_share <= 1:
        raise ValueError(f"max_group_share must be in (0, 1], got {max_group_share}")
    labels = [i.category for i in images]
    groups = [
        i.group if grouped and i.group is not None else f"image-{n}" for n, i in enumerate(images)
    ]
    part_size = len(images) / FOLDS
    big = _big_groups(groups, max(1.0, max_group_share * part_size), 3 * part_size, seed)
    pool = [n for n, g in enumerate(groups) if g not in big]
    # As many folds as keep val and test near part_size: FOLDS when no group is too big.
    n_splits = min(FOLDS, round(len(pool) / part_size))
    fold_of = [2] * len(images)  # big groups: train
    pool_folds = _stratified_group_folds(
        [labels[n] for n in pool], [groups[n] for n in pool], n_splits, seed
    )
    for n, fold in zip(pool, pool_folds, strict=True):
        fold_of[n] = fold
    parts: dict[str, list[LabeledImage]] = {"train": [], "val": [], "test": []}
    for image, fold in zip(images, fold_of, strict=True):
        parts["test" if fold == 0 else "val" if fold == 1 else "train"].append(image)
    return Split(parts["train"], parts["val"], parts["test"], _held_out(images, holdout, seed))


def _stratified_group_folds(
    labels: Sequence[str], groups: Sequence[str], n_splits: int, seed: int
) -> list[int]:
    """A fold for each image: whole groups, each category spread evenly over the folds.

    Groups are placed one by one in a seeded random order, each into the fold that leaves
    the categories' shares across folds most even (ties: the smallest fold). Unlike
    scikit-learn's StratifiedGroupKFold, which places groups in the order of their label mix
    and shuffles only ties, another seed gives another split.
    """
    categories = sorted(set(labels))
    names = sorted(set(groups))
    if len(names) < n_splits:
        raise ValueError(f"{len(names)} groups are too few to split into {n_splits} folds")
    category_of = {c: i for i, c in enumerate(categories)}
    group_of = {g: i for i, g in enumerate(names)}
    per_group = np.zeros((len(names), len(categories)))
    for label, group in zip(labels, groups, strict=True):
        per_group[group_of[group], category_of[label]] += 1
    totals = per_group.sum(axis=0)
    per_fold = np.zeros((n_splits, len(categories)))
    fold_of_group = np.zeros(len(names), dtype=int)
    for g in np.random.default_rng(seed).permutation(len(names)):
        # shares[f] = the categories' shares per fold if group g went to fold f
        shares = np.repeat(per_fold[None], n_splits, axis=0)
        shares[np.arange(n_splits), np.arange(n_splits)] += per_group[g]
        spread = (shares / totals).std(axis=1).mean(axis=1)
        best = np.flatnonzero(np.isclose(spread, spread.min()))
        fold = best[np.argmin(per_fold[best].sum(axis=1))]
        per_fold[fold] += per_group[g]
        fold_of_group[g] = fold
    return [int(fold_of_group[group_of[g]]) for g in groups]


def _largest_group_share(part: Sequence[LabeledImage]) -> float:
    """How much of a part its largest group makes up: 0.73 means one contributor's photos are
    most of what that part measures."""
    sizes = Counter(i.group for i in part if i.group is not None)  # no group: on its own
    if not sizes:
        return round(1 / len(part), 3) if part else 0.0
    return round(max(sizes.values()) / len(part), 3)


def _big_groups(groups: Sequence[str], limit: float, keep: float, seed: int) -> set[str]:
    """Groups larger than `limit`, largest first (ties in seeded order), while at least `keep`
    images stay to split into val, test and more train."""
    sizes = Counter(groups)
    rng = random.Random(seed)
    order = sorted(sizes, key=lambda g: (-sizes[g], rng.random()))
    big: set[str] = set()
    left = len(groups)
    for group in order:
        if sizes[group] <= limit:
            break
        if left - sizes[group] < keep:
            continue  # too big to leave enough to split: it stays, a smaller big one may go
        big.add(group)
        left -= sizes[group]
    return big


def _held_out(images: Sequence[LabeledImage], holdout: int | Sequence[str], seed: int) -> list[str]:
    if holdout == 0:  # nothing to pick from, so no category needs enough images
        return []
    counts = Counter(i.category for i in images)
    if isinstance(holdout, int):
        # Only categories with enough images to be measured are eligible.
        eligible = sorted(c for c, n in counts.items() if n >= 2 * FOLDS)
        if holdout > len(eligible) - 2:
            raise ValueError(
                f"cannot hold out {holdout} of {len(eligible)} categories with enough images"
            )
        return sorted(random.Random(seed).sample(eligible, holdout))
    unknown = sorted(set(holdout) - set(counts))
    if unknown:
        raise ValueError(f"held-out categories not in the data: {', '.join(unknown)}")
    return sorted(holdout)
