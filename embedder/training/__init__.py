"""ArcFace metric learning for the embedding network: `train(split, options, out_dir)`.

By default the backbone's early blocks stay frozen and are run once per image (and per cached
augmented view); only the last blocks and a projection head train on those cached features,
which is what makes training practical on a 2-core CPU. On a GPU, `augment="online"` draws a
fresh augmented view of every image each epoch (the frozen blocks then run on every batch),
and `trainable_blocks="all"` trains the whole backbone, stem included. Validation measures
kNN accuracy separately on trained and held-out categories, so fine-tuning cannot silently
give up the open-set promise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from embedder.training.options import TrainOptions
from embedder.training.recipes import DEFAULT_RECIPE, RECIPES

if TYPE_CHECKING:
    from embedder.training.loop import TrainResult, train

__all__ = ["DEFAULT_RECIPE", "RECIPES", "TrainOptions", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    """The loop (and PyTorch) load on first use: the CLI reads options and recipes without."""
    if name in ("train", "TrainResult"):
        from embedder.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
