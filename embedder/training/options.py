"""Every knob of a training run, recorded in the artifact and checked on resume (the recipe
it started from included)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from embedder.config import DEFAULT_MODEL
from embedder.training.recipes import RECIPES

HEAD_INITS = ("pca", "random")
AUGMENTS = ("cached", "online")
ALL_BLOCKS = "all"
Blocks = int | Literal["all"]


@dataclass(frozen=True)
class TrainOptions:
    """Hyper-parameters of one run. The defaults are the CPU-sized settings measured on the
    clothing data (docs/benchmarks.md, Training); `from_recipe` starts from a named recipe."""

    recipe: str | None = None  # the recipe the values started from (embedder/training/recipes)
    # Registered model name or artifact directory; the served default, which best from it
    # also beats (docs/benchmarks.md, Recipes: 82.9% against best from Lite0's 81.1%).
    base: str = DEFAULT_MODEL
    name: str | None = None  # output model name; default "<base>-arcface"
    embedding_dim: int = 512
    head_init: str = "pca"  # "pca": the frozen features' principal directions; "random"
    # loss
    margin: float = 28.6  # degrees (pytorch-metric-learning's unit; 28.6 degrees = 0.5 rad)
    scale: float = 30.0
    subcenters: int = 1  # >1: SubCenterArcFaceLoss
    # schedule
    epochs: int = 10
    freeze_epochs: int = 1  # head (and loss weights) only, then the last blocks too
    warmup_epochs: int = 1
    patience: int = 4  # epochs without a better selection score before stopping
    batch_size: int = 64
    m_per_class: int = 4
    lr_head: float = 2e-4
    lr_backbone: float = 1e-4
    lr_loss: float = 1e-2
    weight_decay: float = 1e-4
    # CPU practicality
    trainable_blocks: Blocks = 1  # last backbone blocks that train ("all": the stem too)
    # "cached": a few augmented views per image run through the frozen prefix once (fast);
    # "online": a fresh augmented view every epoch, the prefix run on every batch (best)
    augment: str = "cached"
    cached_views: int = 1  # augmented views cached per training image, beside the plain one
    workers: int = 2  # data-loader processes decoding and augmenting images
    # validation and selection
    k: int = 10
    held_out_tolerance: float = 0.02  # how far held-out accuracy may fall below the frozen one
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda"

    @classmethod
    def from_recipe(cls, recipe: str, **explicit: Any) -> TrainOptions:
        """`recipe`'s values over the defaults, then every `explicit` value that is not None
        (a flag the user gave) over the recipe's. A recipe's head-only epochs yield to fewer
        `epochs` given explicitly (`--epochs 1` on `best` trains one head-only epoch)."""
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
        known = {f.name for f in fields(cls)} - {"recipe"}
        unknown = sorted(set(explicit) - known)
        if unknown:
            raise TypeError(f"not TrainOptions fields: {', '.join(unknown)}")
        given = {name: value for name, value in explicit.items() if value is not None}
        values = {**RECIPES[recipe].options, **given}
        if "epochs" in given and "freeze_epochs" not in given and "freeze_epochs" in values:
            values["freeze_epochs"] = min(values["freeze_epochs"], given["epochs"])
        return cls(recipe=recipe, **values)

    def __post_init__(self) -> None:
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        positive = ("embedding_dim", "epochs", "batch_size", "m_per_class", "k", "subcenters")
        for field in positive:
            if getattr(self, field) <= 0:
                raise ValueError(f"{field} must be positive, got {getattr(self, field)}")
        if not 0 <= self.freeze_epochs <= self.epochs:
            raise ValueError(f"freeze_epochs must be in [0, epochs], got {self.freeze_epochs}")
        if self.trainable_blocks != ALL_BLOCKS and (
            not isinstance(self.trainable_blocks, int) or self.trainable_blocks < 0
        ):
            raise ValueError(
                f"trainable_blocks must be a count >= 0 or {ALL_BLOCKS!r}, "
                f"got {self.trainable_blocks!r}"
            )
        if self.cached_views < 0 or self.workers < 0:
            raise ValueError("cached_views and workers must not be negative")
        if self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {self.augment!r}")
        if self.batch_size < self.m_per_class:
            raise ValueError(
                f"batch_size ({self.batch_size}) must hold at least m_per_class "
                f"({self.m_per_class}) images"
            )
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"head_init must be one of {HEAD_INITS}, got {self.head_init!r}")
        if not 0 < self.margin < 90:
            raise ValueError(f"margin is in degrees and must be in (0, 90), got {self.margin}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
