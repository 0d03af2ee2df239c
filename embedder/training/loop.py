"""The training run: cache frozen features, fit head (then last blocks, or the whole
backbone) with ArcFace, select the checkpoint on validation kNN accuracy, write a nearcat
model artifact."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning.samplers import MPerClassSampler
from torch import nn
from torch.utils.data import DataLoader

from embedder.artifact import TRAINING_FILE, load_network, resolve_model, write_artifact
from embedder.atomic import replace_file
from embedder.config import ModelConfig
from embedder.datasets import LabeledImage
from embedder.network import EmbeddingNetwork, build_network
from embedder.splits import Split
from embedder.training.backbone import Prefix, Tail, split, tail_parameters
from embedder.training.checkpoint import load_checkpoint, remove_checkpoint, save_checkpoint
from embedder.training.features import CachedViews, PathViews, cache_views, seed_worker
from embedder.training.loss import build_loss
from embedder.training.options import TrainOptions
from embedder.training.validation import (
    Classifier,
    EstimateCheck,
    SplitAccuracy,
    check_estimate,
    selection_score,
    split_accuracy,
)

FEATURES_FILE = "features.pt"
EMBED_BATCH = 128


@dataclass(frozen=True)
class TrainResult:
    artifact: Path
    metadata: dict[str, Any]  # what training.json in the artifact holds


def train(
    data: Split,
    options: TrainOptions,
    out_dir: Path,
    *,
    classify: Classifier,
    models_dir: Path = Path("var/models"),
    work_dir: Path | None = None,
    resume: bool = False,
    provenance: dict[str, Any] | None = None,
    labelled_val: bool = False,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Fine-tune `options.base` on `data.trainable()` and write the best epoch to `out_dir`.

    `work_dir` (default `<out_dir>.work`) keeps the feature cache and a checkpoint after every
    epoch; with `resume` a killed run continues after its last finished epoch. `provenance`
    (data source, command) is recorded in the artifact's training.json. `classify` answers
    the validation queries from the training images (the command gives the served answer).
    `labelled_val`: `data.val` is labelled traffic (`--val`), not a part of the split; it
    only changes how a disagreement between validation and test is explained.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it or choose another --out")
    work_dir = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".work")
    state = load_checkpoint(work_dir)
    if state is not None and not resume:
        raise FileExistsError(
            f"{work_dir} holds a checkpoint of an unfinished run: pass --resume to continue "
            "it, or delete the directory to start over"
        )
    fingerprint = data.fingerprint()  # of the split as given, before unreadable images go
    if state is not None and state.get("split") != fingerprint:
        raise ValueError(
            f"cannot resume {work_dir}: the data split differs from the interrupted run's "
            "(other data, labels left out, --seed, --group-column or --max-group-share); "
            "split as it did, or delete the directory to start over"
        )
    held_out = sorted(data.held_out)  # the fingerprint covers the parts, not this choice
    # (a checkpoint written before held_out was recorded cannot tell: it resumes as before)
    if state is not None and state.get("held_out", held_out) != held_out:
        before, now = (", ".join(c) or "nothing" for c in (state["held_out"], held_out))
        raise ValueError(
            f"cannot resume {work_dir}: the interrupted run held out {before}, this one {now} "
            "(--holdout, --holdout-categories or --seed); hold out the same, or delete the "
            "directory to start over"
        )
    if state is not None and state["options"] != options.to_dict():
        changed = sorted(k for k, v in options.to_dict().items() if state["options"].get(k) != v)
        raise ValueError(
            f"cannot resume {work_dir}: options differ from the interrupted run's ({changed}); "
            "use the same options, or delete the directory to start over"
        )
    work_dir.mkdir(parents=True, exist_ok=True)
    session_start = time.monotonic()  # wall time counts every session, feature caching included
    device = _device(options.device)
    _seed_everything(options.seed)

    base_path = resolve_model(options.base, models_dir)
    base, base_config, base_version = load_network(base_path)
    config = _output_config(base_config, options)
    network = _initial_network(base, base_config, config)
    network.to(device).to(memory_format=torch.channels_last)
    network.eval()  # BatchNorm keeps its pretrained statistics; gradients still flow
    prefix, tail = split(network, options.trainable_blocks)
    base_head = base.head.to(device)

    classes = sorted({i.category for i in data.trainable()})
    if len(classes) < 2:
        raise ValueError(f"training needs at least 2 trainable categories, got {classes}")
    cache = _features(data, config, options, base_version, prefix, work_dir, device, log)
    data, problems = drop_unreadable(data, cache)
    for problem in problems:
        log(f"warning: {problem}")
    trainable = [i for i, image in enumerate(data.train) if image.category in set(classes)]
    labels = torch.tensor([classes.index(data.train[i].category) for i in trainable])
    online, views = None, []
    if options.augment == "online":
        online = PathViews([data.train[i].path for i in trainable], config, augment=True)
    else:
        views = [cache["train"].features[trainable], *(v.features for v in cache["augmented"])]

    # Caching features draws random numbers and reading them from the cache does not: the
    # loss's weights start from the seed either way, so one seed gives one run.
    _seed_everything(options.seed)
    loss_fn = build_loss(options, len(classes)).to(device)
    batch_size = min(options.batch_size, options.m_per_class * len(classes))
    batch_size -= batch_size % options.m_per_class
    steps_per_epoch = max(1, len(labels) // batch_size)
    optimizer = torch.optim.AdamW(
        [
            {"params": list(network.head.parameters()), "lr": options.lr_head},
            {"params": tail_parameters(network, tail), "lr": options.lr_backbone},
            {"params": list(loss_fn.parameters()), "lr": options.lr_loss, "weight_decay": 0.0},
        ],
        weight_decay=options.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        _warmup_cosine(options.warmup_epochs * steps_per_epoch, options.epochs * steps_per_epoch),
    )
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")

    def accuracy(part: str, head: nn.Module, use_tail: Tail | None = None) -> SplitAccuracy:
        return _accuracy(classify, data, cache, part, use_tail or tail, head, device)

    if state is None:
        baseline_val = accuracy("val", base_head)
        if options.head_init == "pca" and base_config.projection_dim != options.embedding_dim:
            trained_rows = cache["train"].features[trainable]
            principal_directions(network.head, _pooled(trained_rows, tail, device))
        state = {
            "options": options.to_dict(),
            "split": fingerprint,
            "held_out": held_out,
            "epoch": 0,
            "history": [],
            "baseline_val": baseline_val.to_dict(),
            "best_score": -math.inf,
            "best_epoch": 0,
            "best_state": copy.deepcopy(network.state_dict()),
            "stale": 0,
            "elapsed_s": 0.0,
        }
        log(f"frozen baseline on val: {_describe(baseline_val)}")
    else:
        network.load_state_dict(state["network"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        log(f"resuming after epoch {state['epoch']} of {options.epochs}")
    floor = state["baseline_val"]["held_out_top1"]
    floor = None if floor is None else floor - options.held_out_tolerance

    stopped_early = False
    for epoch in range(state["epoch"], options.epochs):
        if state["stale"] >= options.patience:
            stopped_early = True
            break
        _seed_everything(options.seed + 1 + epoch)  # an epoch replays the same after a resume
        frozen = epoch < options.freeze_epochs
        for p in tail_parameters(network, tail):
            p.requires_grad_(not frozen)
        order = _batch_order(labels, batch_size, steps_per_epoch, options.m_per_class)
        encode: nn.Module = nn.Identity()  # cached features are the prefix's output
        if online is None:
            batches = _cached_batches(views, labels, order)
        else:
            batches, encode = _online_batches(online, labels, order, options, device), prefix
        loss = _run_epoch(
            epoch, frozen, batches, len(order), encode, network, tail, loss_fn, optimizer,
            scheduler, scaler, device,
        )  # fmt: skip
        val = accuracy("val", network.head)
        score = selection_score(val, floor)
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_epoch=epoch + 1, stale=0)
            state["best_state"] = copy.deepcopy(network.state_dict())
        else:
            state["stale"] += 1
        state["history"].append(
            {"epoch": epoch + 1, "stage": "head" if frozen else "head+blocks", "loss": loss,
             **val.to_dict(), "score": score}
        )  # fmt: skip
        state.update(
            epoch=epoch + 1,
            network=network.state_dict(),
            loss=loss_fn.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(),
            elapsed_s=state["elapsed_s"] + time.monotonic() - session_start,
        )
        session_start = time.monotonic()
        save_checkpoint(work_dir, state)
        log(
            f"epoch {epoch + 1}/{options.epochs} ({'head' if frozen else 'head+blocks'}) "
            f"loss {loss:.3f}  val {_describe(val)}  score {score:.4f}"
            + ("  best" if improved else f"  (no better for {state['stale']})")
        )

    network.load_state_dict(state["best_state"])
    final_val = accuracy("val", network.head)
    final_test = accuracy("test", network.head)
    frozen_tail = split(base.to(device), options.trainable_blocks)[1]
    baseline_test = accuracy("test", base_head, frozen_tail)
    wall_s = state["elapsed_s"] + time.monotonic() - session_start
    log(f"best epoch {state['best_epoch']}: val {_describe(final_val)}")
    log(f"test (once, at the end): {_describe(final_test)}")
    log(f"frozen baseline on test: {_describe(baseline_test)}")
    estimate = check_estimate(final_val, final_test)
    for line in _estimate_report(estimate, labelled_val):
        log(line)
    metadata = {
        "base": {"spec": options.base, "version": base_version},
        "options": options.to_dict(),
        "provenance": provenance or {},
        "split": {**data.summary(), "fingerprint": fingerprint},  # as split, as eval splits
        "held_out_categories": list(data.held_out),
        "trained_categories": classes,
        "problems": problems,
        "device": str(device),
        "batch_size": batch_size,
        "epochs_run": state["epoch"],
        "stopped_early": stopped_early,
        "best_epoch": state["best_epoch"],
        "selection": (
            "seen-category val top-1, provided held-out val top-1 >= frozen baseline's "
            f"- {options.held_out_tolerance}"
        ),
        "history": state["history"],
        "frozen_baseline": {"val": state["baseline_val"], "test": baseline_test.to_dict()},
        "val": final_val.to_dict(),
        "test": final_test.to_dict(),
        "estimate": {**estimate.to_dict(), "val_source": "labelled" if labelled_val else "split"},
        "wall_time_s": round(wall_s, 1),
    }
    network.to("cpu")
    write_artifact(network, config, out_dir, {TRAINING_FILE: json.dumps(metadata, indent=2) + "\n"})
    remove_checkpoint(work_dir)
    log(f"the feature cache stays in {work_dir} for runs with other hyper-parameters")
    return TrainResult(out_dir, metadata)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _output_config(base: ModelConfig, options: TrainOptions) -> ModelConfig:
    return replace(
        base,
        name=options.name or f"{base.name}-arcface",
        projection_dim=options.embedding_dim,
        description=(
            f"{base.name} fine-tuned with ArcFace metric learning, projection to "
            f"{options.embedding_dim} dimensions; see training.json for data, split and metrics."
        ),
    )


def _initial_network(
    base: EmbeddingNetwork, base_config: ModelConfig, config: ModelConfig
) -> EmbeddingNetwork:
    """The base backbone with a projection head (the base's own when it has one that fits)."""
    network = build_network(config)
    network.backbone.load_state_dict(base.backbone.state_dict())
    if base_config.projection_dim == config.projection_dim:
        network.head.load_state_dict(base.head.state_dict())
    return network


@torch.inference_mode()
def _pooled(features: torch.Tensor, tail: Tail, device: torch.device) -> torch.Tensor:
    chunks = [
        tail(features[start : start + EMBED_BATCH].to(device).float()).float().cpu()
        for start in range(0, len(features), EMBED_BATCH)
    ]
    return torch.cat(chunks)


@torch.no_grad()
def principal_directions(head: nn.Module, pooled: torch.Tensor) -> None:
    """Set the projection to the centred top principal directions of the frozen features.

    Training then starts from (nearly) the frozen model's geometry instead of a random one,
    which is what categories it never trains on rely on. Only trained categories' images
    are used: held-out ones must not shape the model.
    """
    assert isinstance(head, nn.Linear)
    mean = pooled.mean(dim=0)
    _, _, directions = torch.linalg.svd(pooled - mean, full_matrices=False)
    kept = min(head.out_features, len(directions))
    head.weight.zero_()
    head.weight[:kept] = directions[:kept].to(head.weight)
    head.bias.copy_(-(head.weight @ mean.to(head.weight)))


def _warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _batch_order(
    labels: torch.Tensor, batch_size: int, steps: int, m_per_class: int
) -> list[list[int]]:
    """`steps` class-balanced batches of positions in `labels` (m_per_class per class)."""
    sampler = MPerClassSampler(
        labels, m_per_class, batch_size=batch_size, length_before_new_iter=len(labels)
    )
    order = list(iter(sampler))[: steps * batch_size]
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


Batches = Iterator[tuple[torch.Tensor, torch.Tensor]]


def _cached_batches(
    views: Sequence[torch.Tensor], labels: torch.Tensor, order: list[list[int]]
) -> Batches:
    """(cached prefix features, labels) per batch, each image as a random one of its views."""
    view_of = torch.randint(len(views), (sum(len(b) for b in order),)).tolist()
    offset = 0
    for batch in order:
        chosen = view_of[offset : offset + len(batch)]
        offset += len(batch)
        yield torch.stack([views[v][i] for v, i in zip(chosen, batch, strict=True)]), labels[batch]


def _online_batches(
    views: PathViews,
    labels: torch.Tensor,
    order: list[list[int]],
    options: TrainOptions,
    device: torch.device,
) -> Batches:
    """(freshly decoded and augmented pixels, labels) per batch, from loader processes."""
    loader = DataLoader(
        views,
        batch_sampler=order,
        num_workers=options.workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(int(torch.randint(2**31, ()))),
        pin_memory=device.type == "cuda",
    )
    for (pixels, ok), batch in zip(loader, order, strict=True):
        # an image whose plain view decoded is left out only if this read fails
        yield pixels[ok], labels[batch][ok]


def _run_epoch(
    epoch: int,
    frozen: bool,
    batches: Batches,
    steps: int,
    encode: nn.Module,
    network: EmbeddingNetwork,
    tail: Tail,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    device: torch.device,
) -> float:
    """One pass over `batches`: `encode` (the frozen prefix for pixels, nothing for cached
    features) without gradients, then the tail (if not `frozen`) and head with them."""
    from tqdm import tqdm

    autocast = (
        torch.autocast("cuda", dtype=torch.float16)
        if device.type == "cuda"
        else contextlib.nullcontext()
    )
    total = 0.0
    bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False)
    for step, (inputs, targets) in enumerate(bar):
        inputs = inputs.to(device, non_blocking=True).float()
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast:
            with torch.no_grad():
                features = encode(inputs)
            with torch.set_grad_enabled(not frozen):
                pooled = tail(features)
            embeddings = network.head(pooled)
        loss = loss_fn(embeddings.float(), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total += float(loss.detach())
        bar.set_postfix(loss=f"{total / (step + 1):.3f}")
    return total / steps


@torch.inference_mode()
def _embed(features: torch.Tensor, tail: Tail, head: nn.Module, device: torch.device) -> np.ndarray:
    out = []
    for start in range(0, len(features), EMBED_BATCH):
        batch = features[start : start + EMBED_BATCH].to(device).float()
        vectors = head(tail(batch.contiguous(memory_format=torch.channels_last)))
        out.append(F.normalize(vectors.float(), dim=-1).cpu())
    return torch.cat(out).numpy()


def _accuracy(
    classify: Classifier,
    data: Split,
    cache: dict[str, Any],
    part: str,
    tail: Tail,
    head: nn.Module,
    device: torch.device,
) -> SplitAccuracy:
    """Top-1 of `part`'s images against all training images (held-out ones included)."""
    queries: list[LabeledImage] = getattr(data, part)
    return split_accuracy(
        classify,
        _embed(cache["train"].features, tail, head, device),
        [i.category for i in data.train],
        _embed(cache[part].features, tail, head, device),
        [i.category for i in queries],
        data.held_out,
    )


def _describe(accuracy: SplitAccuracy) -> str:
    held = "n/a" if accuracy.held_out is None else f"{accuracy.held_out:.1%}"
    return f"seen {accuracy.seen:.1%}, held-out {held}"


def _estimate_report(check: EstimateCheck, labelled_val: bool) -> list[str]:
    """The estimate beside the test part's top-1, and a warning when they disagree."""
    source = "the labelled photos (--val)" if labelled_val else "the split's val part"
    if check.estimate is None or check.measured is None or check.gap is None:
        return [f"estimate not checked: {source} or the test part holds no image"]
    lines = [
        f"validation estimate (kept epoch, {source}): top-1 {check.estimate:.1%}; test part, "
        f"measured once: top-1 {check.measured:.1%} ({100 * check.gap:+.1f} points)"
    ]
    if check.agrees:
        return lines
    apart = f"the validation estimate and the test part differ by {100 * abs(check.gap):.1f} "
    apart += f"points (more than {100 * check.tolerance:.0f})"
    if labelled_val and check.gap < 0:
        meaning = (
            "the test part is drawn from --data like the training images and likely holds "
            "near-duplicates of them (bursts, one sender's photos), so it is inflated: expect "
            "traffic like the --val photos to score the estimate; --group-column with what "
            "ties such images together gives a test part to trust"
        )
    elif labelled_val:
        meaning = (
            "the --val photos score above the test part drawn from --data: they are few, or "
            "unlike --data (another mix of categories); the estimate holds for traffic like them"
        )
    elif check.gap > 0:
        meaning = (
            "val likely holds near-duplicates of training images (bursts, one sender's "
            "photos), so the estimate is inflated and real traffic will score lower; pass "
            "--val with labelled traffic, or --group-column with what ties such images together"
        )
    else:
        meaning = (
            "val and test hold unlike images (few of them, or near-duplicates of training "
            "images on the test side); pass --val with labelled traffic, or --group-column "
            "with what ties such images together"
        )
    return [*lines, f"warning: {apart}: {meaning}"]


def _features(
    data: Split,
    config: ModelConfig,
    options: TrainOptions,
    base_version: str,
    prefix: Prefix,
    work_dir: Path,
    device: torch.device,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Prefix outputs of every image's plain view and of trainable images' augmented views
    (none with online augmentation), read from `work_dir` when an earlier run with the same
    inputs cached them. With an empty prefix (all blocks train) they are the pixels."""
    trainable = data.trainable()
    cached_views = options.cached_views if options.augment == "cached" else 0
    key = {
        "base": base_version,
        "trainable_blocks": options.trainable_blocks,
        "cached_views": cached_views,
        "seed": options.seed,
        "images": [[str(i.path) for i in part] for part in (data.train, data.val, data.test)],
        "trainable": [str(i.path) for i in trainable],
    }
    fingerprint = hashlib.sha256(json.dumps(key).encode()).hexdigest()
    path = work_dir / FEATURES_FILE
    if path.is_file():
        try:
            cached: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # cut short: EOFError, RuntimeError or OSError, by where
            log(f"warning: {path} cannot be read ({exc}); caching the features again")
        else:
            if cached.get("fingerprint") == fingerprint:
                log(f"using cached features from {path}")
                return cached
    started = time.monotonic()

    def run(images: Sequence[LabeledImage], augment: bool, seed: int, desc: str) -> CachedViews:
        return cache_views(
            [i.path for i in images], config, prefix, augment=augment, seed=seed,
            workers=options.workers, device=device, desc=desc,
        )  # fmt: skip

    cache: dict[str, Any] = {
        "fingerprint": fingerprint,
        "train": run(data.train, False, options.seed, "caching train"),
        "val": run(data.val, False, options.seed, "caching val"),
        "test": run(data.test, False, options.seed, "caching test"),
        "augmented": [
            run(trainable, True, options.seed + 1 + v, f"caching augmented view {v + 1}")
            for v in range(cached_views)
        ],
    }
    count = len(data.train) + len(data.val) + len(data.test) + len(trainable) * cached_views
    log(f"cached frozen features of {count} views in {time.monotonic() - started:.0f} s")
    replace_file(path, lambda f: torch.save(cache, f))  # a kill mid-write leaves no half file
    return cache


def drop_unreadable(data: Split, cache: dict[str, Any]) -> tuple[Split, list[str]]:
    """The split without images that failed to decode (and their cached rows). A training
    image whose plain or any augmented view failed goes from every view: one mask for all
    keeps their rows aligned with each other and with the labels."""
    held_out = set(data.held_out)
    trainable = torch.tensor([i.category not in held_out for i in data.train], dtype=torch.bool)
    train_ok = cache["train"].ok.clone()
    for view in cache["augmented"]:
        train_ok[trainable] &= view.ok
    problems: list[str] = []
    parts: dict[str, list[LabeledImage]] = {}
    for part in ("train", "val", "test"):
        images: list[LabeledImage] = getattr(data, part)
        ok = train_ok if part == "train" else cache[part].ok
        problems += [
            f"{i.path} could not be decoded; skipped"
            for i, good in zip(images, ok.tolist(), strict=True)
            if not good
        ]
        parts[part] = [i for i, good in zip(images, ok.tolist(), strict=True) if good]
        cache[part] = CachedViews(cache[part].features[ok], ok[ok])
    trainable_ok = train_ok[trainable]
    if not bool(trainable_ok.all()):
        cache["augmented"] = [
            CachedViews(view.features[trainable_ok], view.ok[trainable_ok])
            for view in cache["augmented"]
        ]
    return Split(parts["train"], parts["val"], parts["test"], list(data.held_out)), problems
