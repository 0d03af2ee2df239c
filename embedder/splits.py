"""Splitting a labelled dataset for training and evaluation, without leakage.

- Stratified: every category keeps roughly the same share in each part.
- Grouped: all images of one group (e.g. one contributor, whose photos share background and
  lighting) land in the same part, so a query never has a near-twin among the references.
- Held-out categories: some categories are never trained on; their images still appear as
  references and queries, to measure the open-set promise (new categories without training).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sklearn.model_selection import StratifiedGroupKFold

from embedder.datasets import LabeledImage

FOLDS = 7  # one fold test, one fold validation, five folds train: about 72/14/14


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

    def summary(self) -> dict[str, object]:
        return {
            "train": len(self.train),
            "val": len(self.val),
            "test": len(self.test),
            "held_out_categories": list(self.held_out),
            "categories": len({i.category for i in self.train}),
        }


def split_dataset(
    images: Sequence[LabeledImage],
    seed: int = 0,
    grouped: bool = True,
    holdout: int | Sequence[str] = 0,
) -> Split:
    """Stratified (and, when images carry groups, grouped) train/val/test split.

    `holdout` is a number of categories to hold out of training, picked at random among the
    categories with enough images, or their names.
    """
    if len(images) < FOLDS:
        raise ValueError(f"{len(images)} images are too few to split; need at least {FOLDS}")
    labels = [i.category for i in images]
    groups = [
        i.group if grouped and i.group is not None else f"image-{n}" for n, i in enumerate(images)
    ]
    folds = StratifiedGroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    fold_of = [0] * len(images)
    for fold, (_, members) in enumerate(folds.split(images, labels, groups)):
        for n in members:
            fold_of[n] = fold
    parts: dict[str, list[LabeledImage]] = {"train": [], "val": [], "test": []}
    for image, fold in zip(images, fold_of, strict=True):
        parts["test" if fold == 0 else "val" if fold == 1 else "train"].append(image)
    return Split(parts["train"], parts["val"], parts["test"], _held_out(images, holdout, seed))


def _held_out(images: Sequence[LabeledImage], holdout: int | Sequence[str], seed: int) -> list[str]:
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
