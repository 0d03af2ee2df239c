"""`nearcat train`: fine-tune the embedding with ArcFace and write a servable model artifact.

A thin layer over `embedder.training`: read and split the data, pass the options on.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from embedder.splits import MAX_GROUP_SHARE
from embedder.training.recipes import DEFAULT_RECIPE, RECIPES
from embedder.training.validation import ESTIMATE_TOLERANCE
from server.commands import CommandError
from server.commands.sources import add_csv_arguments, load_source

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage
    from embedder.training import TrainOptions

DEFAULT_MODELS_DIR = Path("var/models")

DESCRIPTION = f"""\
Fine-tune an embedding model with ArcFace metric learning and write the result as a model
artifact that `nearcat eval --model MODEL_DIR` evaluates and `nearcat reindex --model
MODEL_DIR` switches a running server to (`nearcat serve --model MODEL_DIR` for a new store).

Recipes (--recipe; a flag given explicitly overrides the recipe's value for it):
  best  (the default; use it) the last 3 backbone blocks and the head train on a fresh
        augmented view of every image each epoch (up to 12 epochs, the first 2 head only),
        3 centres per class, and no epoch that loses held-out accuracy is kept. The most
        accurate measured: on the clothing trees +1.6 and +4.7 points top-1 over the frozen
        default backbone (seeds 0, 1: 82.9% and 83.9%; fast on seed 0: -0.7). On 2 CPU
        cores about 40 minutes for 4,000 images, so about 2 hours for 10,000; minutes on a
        GPU.
  fast  the last block and the head train on the frozen blocks' features, cached once per
        image and per augmented view (up to 10 epochs, the first head only). About 20
        minutes for 4,000 images on 2 CPU cores, under an hour for 10,000; a rerun with other
        hyper-parameters reuses the cache (--work-dir) and takes minutes. Use it to try data
        or settings quickly.

The data is split like `nearcat eval --data` does (stratified, grouped by --group-column or,
without one, by shoots: near-duplicate shots of one product found by similarity; same --seed
and --holdout give the same split). With --val, labelled photos that are not in --data judge
the epochs instead of the split's val part: real traffic is never a burst sibling of a
training image, so it is the honest judge. Held-out categories are never trained on:
their training images are only references during validation, so every epoch reports kNN
accuracy on trained ("seen") and on held-out categories. The kept epoch is the one with the
best seen accuracy among those whose held-out accuracy stays within --held-out-tolerance of
the frozen model's: fine-tuning must not buy seen accuracy with the open-set promise.

The test split is measured once, at the end, and printed beside the kept epoch's validation
estimate, with a warning when the two differ by more than {100 * ESTIMATE_TOLERANCE:.0f} points.
--trainable-blocks all trains the whole backbone, stem included (on a GPU; mixed precision
on CUDA). The feature cache and a checkpoint after every epoch live in --work-dir, so a
killed run continues with --resume."""

EPILOG = """\
examples:
  nearcat train --data photos/ --val labelled/ --out var/models/photos-arcface
  nearcat train --data ../shared/datasets/clothing/images.csv --path-template 'images/{}.jpg' \\
      --exclude-label 'Not sure' --exclude-label Other --exclude-label Skip \\
      --group-column sender_id --holdout 4 --out var/models/clothing-arcface
  nearcat train ... --recipe fast     # a quick try: the last block on cached features
  nearcat train ... --resume          # continue a killed run from its last finished epoch
  nearcat train ... --device cuda --trainable-blocks all --workers 12 --epochs 30
                                      # best's recipe, whole network, on a GPU
"""

# flag destinations that are TrainOptions fields: None until given, then the recipe decides
OPTION_FIELDS = (
    "base", "name", "embedding_dim", "head_init", "margin", "scale", "subcenters", "epochs",
    "freeze_epochs", "warmup_epochs", "patience", "batch_size", "m_per_class", "lr_head",
    "lr_backbone", "lr_loss", "weight_decay", "held_out_tolerance", "k", "trainable_blocks",
    "augment", "cached_views", "workers", "device",
)  # fmt: skip


def _default(field: str) -> str:
    """What a flag left out becomes: each recipe's value, or the one default for all."""
    from dataclasses import MISSING, fields

    from embedder.training import RECIPES, TrainOptions

    default = next(f.default for f in fields(TrainOptions) if f.name == field)
    assert default is not MISSING
    if not any(field in recipe.options for recipe in RECIPES.values()):
        return f" (default: {default})"
    values = ", ".join(f"{n} {r.options.get(field, default)}" for n, r in RECIPES.items())
    return f" (recipe {values})"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and shows every default that is a value."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not any(default is nothing for nothing in (None, False, argparse.SUPPRESS))
        if shown and default != [] and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "train",
        help="fine-tune the embedding with ArcFace into a new model artifact",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=_HelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, required=True, metavar="SRC", help="folder tree or CSV")
    data.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="new artifact")
    data.add_argument(
        "--group-column",
        help="CSV column whose rows stay on one side of the split (e.g. sender); without it, "
        "near-duplicate shots of one product are found by similarity and kept together",
    )
    data.add_argument(
        "--val",
        type=Path,
        metavar="SRC",
        help="labelled photos that are not in --data (traffic a person labelled): they choose "
        "the epoch and guard the held-out categories, and the split's own val part trains",
    )
    data.add_argument(
        "--max-group-share",
        type=float,
        default=MAX_GROUP_SHARE,
        metavar="F",
        help="a group bigger than this share of val or test goes to train (as `nearcat eval`; "
        "default: %(default)s; 1: only a group bigger than a whole part)",
    )
    held = data.add_mutually_exclusive_group()
    held.add_argument(
        "--holdout",
        type=int,
        metavar="N",
        help="hold N random categories out of training (default: a quarter of the categories "
        "with enough images; 0 trains on all, which leaves the open-set promise unmeasured)",
    )
    held.add_argument("--holdout-categories", metavar="A,B", help="categories to hold out")
    data.add_argument("--seed", type=int, default=0, help="split, sampling and augmentation seed")
    add_csv_arguments(parser.add_argument_group("CSV sources (as for `nearcat import`)"))

    recipe = parser.add_argument_group("recipe (the description says what each trains)")
    recipe.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=DEFAULT_RECIPE,
        help="the settings every flag below starts from; a flag given explicitly wins",
    )

    model = parser.add_argument_group("model and loss")
    model.add_argument(
        "--base",
        help="registered model name or artifact directory to start from" + _default("base"),
    )
    model.add_argument("--name", help="name of the new model (default: <base>-arcface)")
    model.add_argument(
        "--embedding-dim", type=int, help="projection head output" + _default("embedding_dim")
    )
    model.add_argument(
        "--head-init",
        choices=("pca", "random"),
        help="start the projection at the frozen features' principal directions (keeps the "
        "frozen geometry that unseen categories rely on), or at random" + _default("head_init"),
    )
    model.add_argument(
        "--margin", type=float, help="ArcFace angular margin in degrees" + _default("margin")
    )
    model.add_argument("--scale", type=float, help="ArcFace logit scale" + _default("scale"))
    model.add_argument(
        "--subcenters",
        type=int,
        help="centres per class (>1: SubCenterArcFace)" + _default("subcenters"),
    )
    model.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="for --base")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument(
        "--epochs", type=int, help="at most; early stopping may end sooner" + _default("epochs")
    )
    schedule.add_argument(
        "--freeze-epochs",
        type=int,
        help="epochs that train only the head first" + _default("freeze_epochs"),
    )
    schedule.add_argument(
        "--warmup-epochs",
        type=int,
        help="epochs over which the learning rates rise from 0, then follow a cosine to 0"
        + _default("warmup_epochs"),
    )
    schedule.add_argument(
        "--patience",
        type=int,
        help="stop after this many epochs without a better one" + _default("patience"),
    )
    schedule.add_argument(
        "--batch-size",
        type=int,
        help="images per step, at most; rounded down to whole classes of --m-per-class"
        + _default("batch_size"),
    )
    schedule.add_argument(
        "--m-per-class", type=int, help="images per class per batch" + _default("m_per_class")
    )
    schedule.add_argument(
        "--lr-head",
        type=float,
        help="AdamW learning rate of the projection head" + _default("lr_head"),
    )
    schedule.add_argument(
        "--lr-backbone",
        type=float,
        help="AdamW learning rate of the backbone blocks that train" + _default("lr_backbone"),
    )
    schedule.add_argument(
        "--lr-loss", type=float, help="for the class centres" + _default("lr_loss")
    )
    schedule.add_argument(
        "--weight-decay",
        type=float,
        help="AdamW weight decay (head and backbone)" + _default("weight_decay"),
    )
    schedule.add_argument(
        "--held-out-tolerance",
        type=float,
        help="how far held-out val accuracy may fall below the frozen model's"
        + _default("held_out_tolerance"),
    )
    schedule.add_argument("--k", type=int, help="neighbours in the validation kNN" + _default("k"))

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--trainable-blocks",
        type=_blocks,
        metavar="N|all",
        help="last backbone blocks that train; 'all': every block and the stem"
        + _default("trainable_blocks"),
    )
    runtime.add_argument(
        "--augment",
        choices=("cached", "online"),
        help="cached: --cached-views augmented views per image through the frozen blocks once; "
        "online: a fresh augmented view per image every epoch, the frozen blocks run on every "
        "batch" + _default("augment"),
    )
    runtime.add_argument(
        "--cached-views",
        type=int,
        help="augmented views cached per training image (--augment cached)"
        + _default("cached_views"),
    )
    runtime.add_argument("--workers", type=int, help="data-loader processes" + _default("workers"))
    runtime.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto: a CUDA GPU when PyTorch sees one, else the CPU" + _default("device"),
    )
    runtime.add_argument(
        "--work-dir", type=Path, help="feature cache and checkpoints (default: MODEL_DIR.work)"
    )
    runtime.add_argument(
        "--resume",
        action="store_true",
        help="continue the run checkpointed in --work-dir (with the same recipe and flags)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from embedder.errors import ArtifactError, WeightsError
    from embedder.splits import FOLDS, Split, split_dataset
    from embedder.training import train
    from indexer.vote import VoteConfig
    from server.evaluation.evaluate import served_classifier

    if args.out.exists():
        raise CommandError(f"{args.out} already exists; delete it or choose another --out")
    dataset = load_source(args.data, args, "--data")

    holdout: int | list[str]
    if args.holdout_categories:
        holdout = [c.strip() for c in args.holdout_categories.split(",") if c.strip()]
    elif args.holdout is not None:
        holdout = args.holdout
    else:
        holdout = _default_holdout(dataset.images, 2 * FOLDS)
        if holdout:
            print(
                f"holding out {holdout} categories to measure the open-set promise "
                "(--holdout 0 trains on all)",
                file=sys.stderr,
            )
        else:
            print(
                f"warning: too few categories with {2 * FOLDS}+ images to hold any out; "
                "categories never trained on are not measured",
                file=sys.stderr,
            )
    images = dataset.images
    if args.group_column is None:
        images = _shoots(images, args)
    try:
        split = split_dataset(
            images, args.seed, grouped=True, holdout=holdout, max_group_share=args.max_group_share
        )
        if args.val is not None:  # labelled traffic judges the epochs; the val part trains
            labelled = load_source(args.val, args, "--val").images
            split = Split(split.train + split.val, labelled, split.test, split.held_out)
        options = options_from(args)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(f"split: {split.summary()}", file=sys.stderr)
    provenance = {
        "data": str(args.data),
        "path_template": args.path_template,
        "group_column": args.group_column,
        "grouped_by": args.group_column or "shoots (near-duplicate shots, by the frozen model)",
        "val": str(args.val) if args.val else None,
        "max_group_share": args.max_group_share,
        "exclude_labels": args.exclude_label,
        "recipe": options.recipe,
        "flags_over_recipe": [f for f in OPTION_FIELDS if getattr(args, f) is not None],
        "command": shlex.join(["nearcat", *sys.argv[1:]]),
    }
    try:
        result = train(
            split,
            options,
            args.out,
            models_dir=args.models_dir,
            work_dir=args.work_dir,
            resume=args.resume,
            provenance=provenance,
            labelled_val=args.val is not None,
            log=tqdm.write,
            classify=served_classifier(VoteConfig(k=options.k)),
        )
    except (ValueError, FileExistsError, FileNotFoundError, ArtifactError, WeightsError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"wrote {result.artifact}. Next: `nearcat export {result.artifact}` adds its ONNX "
        "export, which the server runs 2-3x faster on a CPU than the PyTorch weights; then "
        f"`nearcat reindex --model {result.artifact}` switches a running server to it (the "
        "model path as the server sees it)"
    )


def options_from(args: argparse.Namespace) -> TrainOptions:
    """The run's options: --recipe's values, and every flag given explicitly over them."""
    from embedder.training import TrainOptions

    return TrainOptions.from_recipe(
        args.recipe, **{field: getattr(args, field) for field in OPTION_FIELDS}
    )


def _shoots(images: list[LabeledImage], args: argparse.Namespace) -> list[LabeledImage]:
    """The images grouped into shoots by the frozen packaged model, so that near-duplicate
    shots of one product never sit on both sides of the split (as eval --data does)."""
    from embedder.artifact import load_artifact, resolve_model
    from server.evaluation.evaluate import FROZEN_BASELINE, grouped_by_shoots

    print(
        "no --group-column: grouping near-duplicate shots into shoots (frozen "
        f"{FROZEN_BASELINE}), so the validation is not judged by an image's own burst",
        file=sys.stderr,
    )
    frozen = load_artifact(resolve_model(FROZEN_BASELINE, args.models_dir))
    return grouped_by_shoots(images, frozen)


def _blocks(value: str) -> int | Literal["all"]:
    if value == "all":
        return "all"
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number of blocks or 'all', got {value!r}"
        ) from None


def _default_holdout(images: list[LabeledImage], min_images: int) -> int:
    """A quarter of the categories with enough images to be measured."""
    counts: dict[str, int] = {}
    for image in images:
        counts[image.category] = counts.get(image.category, 0) + 1
    return sum(1 for n in counts.values() if n >= min_images) // 4
