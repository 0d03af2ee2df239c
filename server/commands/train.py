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
from server.commands import CommandError
from server.commands.sources import add_csv_arguments, load_source

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage

DEFAULT_MODELS_DIR = Path("var/models")

DESCRIPTION = """\
Fine-tune an embedding model with ArcFace metric learning and write the result as a model
artifact that `nearcat eval --model MODEL_DIR` evaluates and `nearcat reindex --model
MODEL_DIR` switches a running server to (`nearcat serve --model MODEL_DIR` for a new store).

The data is split like `nearcat eval --data` does (stratified, grouped by --group-column or,
without one, by shoots: near-duplicate shots of one product found by similarity; same --seed
and --holdout give the same split). With --val, labelled photos that are not in --data judge
the epochs instead of the split's val part: real traffic is never a burst sibling of a
training image, so it is the honest judge. Held-out categories are never trained on:
their training images are only references during validation, so every epoch reports kNN
accuracy on trained ("seen") and on held-out categories. The kept epoch is the one with the
best seen accuracy among those whose held-out accuracy stays within --held-out-tolerance of
the frozen model's: fine-tuning must not buy seen accuracy with the open-set promise.

By default (--augment cached, --trainable-blocks 1, on any device: the recipe for a CPU), the
early backbone blocks stay frozen and run once per image (and per cached augmented view);
only the last --trainable-blocks blocks and the projection head train on those cached
features. On a GPU, --augment online draws a fresh
augmented view of every image each epoch, and --trainable-blocks all trains the whole
backbone, stem included (mixed precision on CUDA). The cache and a checkpoint after every
epoch live in --work-dir, so a killed run continues with --resume. The test split is
measured once, at the end."""

EPILOG = """\
examples:
  nearcat train --data photos/ --out var/models/photos-arcface
  nearcat train --data ../shared/datasets/clothing/images.csv --path-template 'images/{}.jpg' \\
      --exclude-label 'Not sure' --exclude-label Other --exclude-label Skip \\
      --group-column sender_id --holdout 4 --out var/models/clothing-arcface
  nearcat train ... --resume          # continue a killed run from its last finished epoch
  nearcat train ... --device cuda --trainable-blocks all --augment online --workers 12 \\
      --epochs 30 --freeze-epochs 2    # whole network on a GPU, head first
"""


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

    model = parser.add_argument_group("model and loss")
    model.add_argument(
        "--base",
        default="efficientnet_lite0",
        help="registered model name or artifact directory to start from (default: %(default)s)",
    )
    model.add_argument("--name", help="name of the new model (default: <base>-arcface)")
    model.add_argument("--embedding-dim", type=int, default=512, help="projection head output")
    model.add_argument(
        "--head-init",
        choices=("pca", "random"),
        default="pca",
        help="start the projection at the frozen features' principal directions (keeps the "
        "frozen geometry that unseen categories rely on), or at random",
    )
    model.add_argument(
        "--margin", type=float, default=28.6, help="ArcFace angular margin in degrees"
    )
    model.add_argument("--scale", type=float, default=30.0, help="ArcFace logit scale")
    model.add_argument(
        "--subcenters", type=int, default=1, help="centres per class (>1: SubCenterArcFace)"
    )
    model.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR, help="for --base")

    schedule = parser.add_argument_group("schedule")
    schedule.add_argument(
        "--epochs", type=int, default=10, help="at most; early stopping may end sooner"
    )
    schedule.add_argument(
        "--freeze-epochs", type=int, default=1, help="epochs that train only the head first"
    )
    schedule.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        help="epochs over which the learning rates rise from 0, then follow a cosine to 0",
    )
    schedule.add_argument(
        "--patience", type=int, default=4, help="stop after this many epochs without a better one"
    )
    schedule.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="images per step, at most; rounded down to whole classes of --m-per-class",
    )
    schedule.add_argument("--m-per-class", type=int, default=4, help="images per class per batch")
    schedule.add_argument(
        "--lr-head", type=float, default=2e-4, help="AdamW learning rate of the projection head"
    )
    schedule.add_argument(
        "--lr-backbone",
        type=float,
        default=1e-4,
        help="AdamW learning rate of the backbone blocks that train",
    )
    schedule.add_argument("--lr-loss", type=float, default=1e-2, help="for the class centres")
    schedule.add_argument(
        "--weight-decay", type=float, default=1e-4, help="AdamW weight decay (head and backbone)"
    )
    schedule.add_argument(
        "--held-out-tolerance",
        type=float,
        default=0.02,
        help="how far held-out val accuracy may fall below the frozen model's",
    )
    schedule.add_argument("--k", type=int, default=10, help="neighbours in the validation kNN")

    runtime = parser.add_argument_group("runtime")
    runtime.add_argument(
        "--trainable-blocks",
        type=_blocks,
        default=1,
        metavar="N|all",
        help="last backbone blocks that train; 'all': every block and the stem",
    )
    runtime.add_argument(
        "--augment",
        choices=("cached", "online"),
        default="cached",
        help="cached: --cached-views augmented views per image through the frozen blocks once "
        "(CPU); online: a fresh augmented view per image every epoch (GPU)",
    )
    runtime.add_argument(
        "--cached-views",
        type=int,
        default=1,
        help="augmented views cached per training image (--augment cached)",
    )
    runtime.add_argument("--workers", type=int, default=2, help="data-loader processes")
    runtime.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: a CUDA GPU when PyTorch sees one, else the CPU",
    )
    runtime.add_argument(
        "--work-dir", type=Path, help="feature cache and checkpoints (default: MODEL_DIR.work)"
    )
    runtime.add_argument(
        "--resume", action="store_true", help="continue the run checkpointed in --work-dir"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from embedder.model import ArtifactError, WeightsError
    from embedder.splits import FOLDS, Split, split_dataset
    from embedder.training import TrainOptions, train
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
        options = TrainOptions(
            base=args.base,
            name=args.name,
            embedding_dim=args.embedding_dim,
            head_init=args.head_init,
            margin=args.margin,
            scale=args.scale,
            subcenters=args.subcenters,
            epochs=args.epochs,
            freeze_epochs=args.freeze_epochs,
            warmup_epochs=args.warmup_epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            m_per_class=args.m_per_class,
            lr_head=args.lr_head,
            lr_backbone=args.lr_backbone,
            lr_loss=args.lr_loss,
            weight_decay=args.weight_decay,
            trainable_blocks=args.trainable_blocks,
            augment=args.augment,
            cached_views=args.cached_views,
            workers=args.workers,
            k=args.k,
            held_out_tolerance=args.held_out_tolerance,
            seed=args.seed,
            device=args.device,
        )
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
            log=tqdm.write,
            classify=served_classifier(VoteConfig(k=args.k)),
        )
    except (ValueError, FileExistsError, FileNotFoundError, ArtifactError, WeightsError) as exc:
        raise CommandError(str(exc)) from exc
    print(
        f"wrote {result.artifact}. Next: `nearcat export {result.artifact}` adds its ONNX "
        "export, which the server runs 2-3x faster on a CPU than the PyTorch weights; then "
        f"`nearcat reindex --model {result.artifact}` switches a running server to it (the "
        "model path as the server sees it)"
    )


def _shoots(images: list[LabeledImage], args: argparse.Namespace) -> list[LabeledImage]:
    """The images grouped into shoots by the frozen packaged model, so that near-duplicate
    shots of one product never sit on both sides of the split (as eval --data does)."""
    from embedder.model import load_artifact, resolve_model
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
