"""`nearcat eval`: measure a model's kNN classification on labelled images, in-process.

A thin layer over `server.evaluation` (the measuring and the plots).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedder.config import DEFAULT_MODEL
from embedder.splits import MAX_GROUP_SHARE
from server.commands import CommandError, write_json
from server.commands.sources import add_csv_arguments, load_source

if TYPE_CHECKING:
    from embedder.datasets import LabeledImage
    from indexer.vote import VoteConfig
    from server.evaluation.embedding import EmbeddingCache
    from server.evaluation.evaluate import Evaluation

    # references, queries, parents, held-out categories, split summary, calibration images
    Chosen = tuple[
        list[LabeledImage],
        list[LabeledImage],
        dict[str, str | None],
        list[str],
        dict[str, Any] | None,
        list[LabeledImage],
    ]

DEFAULT_MODELS_DIR = Path("var/models")
SKIPPED_SHOWN = 10

DESCRIPTION = """\
Measure how well a model classifies images by their nearest references, without a server:
embed the references, build the index, classify every query as a calibrated server does (its
kNN vote blended with the head the calibration fits on the references), and report
top-1/top-3, per-category and per-taxonomy-level accuracy, calibration (ECE), held-out vs
seen categories, the same metrics for the baselines (the vote alone, the frozen
efficientnet_lite0 backbone with kNN, and a linear probe on its features), and a leakage
check for queries whose identical or near-identical twin is among the references.

Give the references and queries as two sources, or one source with --data to split it
(stratified; grouped by --group-column so one contributor's photos stay on one side; with
--holdout, some categories are marked as never trained on — they stay in the references).
To evaluate a model trained on a split, pass the same --seed, --group-column,
--max-group-share and --holdout that training used, so no query was ever trained on; with
--data, a model trained by `nearcat train` is checked against its training.json and another
split is refused.
A source is a folder tree (category folders, nested folders are parents) or a CSV.

With --zero-shot, no reference image is used: every query is classified among all the
categories from their names alone, by the model's text tower and zero-shot head (the packaged
efficientnet_lite0: ImageNet classifier + MiniLM; open_clip models: CLIP's text encoder), and
top-1/top-3, macro and per-category accuracy and ECE are reported. Give --data (the --split
part is queried) or --queries."""

EPILOG = """\
examples:
  nearcat eval --references refs/ --queries queries/ --json eval.json
  nearcat eval --data ../shared/datasets/clothing/images.csv --path-template 'images/{}.jpg' \\
      --exclude-label 'Not sure' --exclude-label Other --exclude-label Skip \\
      --group-column sender_id --holdout 4 --seed 0 1 2 3 4 --report reports/eval
  nearcat eval --data photos/ --split val --model var/models/my-finetuned
  nearcat eval --zero-shot --data ../shared/datasets/clothing/images.csv \\
      --path-template 'images/{}.jpg' --exclude-label 'Not sure' --exclude-label Other \\
      --exclude-label Skip --group-column sender_id --json zero-shot.json
"""


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "eval",
        help="measure a model's accuracy on labelled images (no server needed)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sources = parser.add_argument_group("images (either --references and --queries, or --data)")
    sources.add_argument("--references", type=Path, metavar="SRC", help="reference images")
    sources.add_argument("--queries", type=Path, metavar="SRC", help="images to classify")
    sources.add_argument(
        "--labelled",
        type=Path,
        metavar="SRC",
        help="labelled photos that are not references (as `nearcat calibrate --labelled` "
        "stores them): the calibration and the auto-accept threshold are fitted on them; "
        "without, by leave-one-shoot-out over the references, as a server without labelled "
        "traffic does",
    )
    sources.add_argument("--data", type=Path, metavar="SRC", help="one source to split")
    sources.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="with --data: which part to query; choose models on val, report test once",
    )
    sources.add_argument(
        "--group-column", help="with --data: CSV column whose rows stay on one side of the split"
    )
    sources.add_argument(
        "--max-group-share",
        type=float,
        default=MAX_GROUP_SHARE,
        metavar="F",
        help="with --group-column: a group bigger than this share of a query part goes to "
        "train (the references), so no one contributor dominates val or test "
        "(default: %(default)s; 1: only a sender bigger than a whole part)",
    )
    held = sources.add_mutually_exclusive_group()
    held.add_argument(
        "--holdout",
        type=int,
        default=0,
        metavar="N",
        help="with --data: hold N random categories out of training (references only)",
    )
    held.add_argument(
        "--holdout-categories",
        metavar="A,B",
        help="categories held out of training, reported apart from the seen ones",
    )
    sources.add_argument(
        "--seed",
        type=int,
        nargs="+",
        default=[0],
        metavar="SEED",
        help="with --data: split seed; several (e.g. --seed 0 1 2 3 4) evaluate each split "
        "and report the mean and spread of every headline figure, each image embedded once",
    )
    sources.add_argument(
        "--zero-shot",
        action="store_true",
        help="classify the queries from the category names alone (text prompts, no "
        "references); needs a model with a zero-shot head",
    )

    csv = parser.add_argument_group("CSV sources (as for `nearcat import`)")
    add_csv_arguments(csv)

    model = parser.add_argument_group("model and vote")
    model.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"registered model name or model artifact directory (default: {DEFAULT_MODEL})",
    )
    model.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help=f"where registered models are materialised (default: {DEFAULT_MODELS_DIR})",
    )
    # Defaults (None) mean the server's own VoteConfig defaults, resolved when the command
    # runs: importing the index here would slow down every `nearcat` command.
    model.add_argument(
        "--k", type=int, help="nearest references that vote (default: the server's, 10)"
    )
    model.add_argument(
        "--votes-per-category",
        type=int,
        help="votes counted per category at most (default: the server's, 3)",
    )
    model.add_argument(
        "--temperature",
        type=float,
        help="softness of the similarity weights (default: the server's, 0.05)",
    )
    model.add_argument(
        "--runtime",
        choices=("auto", "onnx", "torch"),
        default="auto",
        help="run the model with ONNX Runtime or PyTorch; auto: ONNX Runtime when the "
        "artifact has been exported, as the server does (default: auto)",
    )
    model.add_argument("--batch-size", type=int, default=32, help="images decoded per batch")
    model.add_argument(
        "--embedding-cache",
        type=Path,
        metavar="FILE",
        help="keep every vector in this .npz file, by model version and file hash: a later "
        "run on the same images embeds nothing again",
    )
    model.add_argument(
        "--auto-accept-precision",
        type=float,
        default=0.98,
        help="as `nearcat serve`'s: the precision the auto-accept band must prove "
        "(default: %(default)s)",
    )
    model.add_argument(
        "--auto-accept-confidence",
        type=float,
        default=0.9,
        help="one-sided confidence of that proof (default: %(default)s)",
    )
    model.add_argument(
        "--open-set-share",
        type=float,
        default=0.01,
        help="share of traffic assumed to belong to no category (default: %(default)s)",
    )

    output = parser.add_argument_group("output")
    output.add_argument("--json", type=Path, metavar="FILE", help="write the full results here")
    output.add_argument(
        "--report",
        type=Path,
        metavar="DIR",
        help="write confusion.png, reliability.png and summary.md here",
    )
    output.add_argument(
        "--leakage-threshold",
        type=float,
        default=0.98,
        help="frozen-feature cosine at which a query and a reference count as near-identical",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.zero_shot:
        run_zero_shot(args)
        return
    from indexer.calibration import Bound
    from server.evaluation.embedding import EmbeddingCache
    from server.evaluation.evaluate import evaluate, load_models, over_seeds
    from server.evaluation.report import write_report

    if len(args.seed) > 1 and args.data is None:
        raise CommandError("several --seed values split one source: give --data")
    if len(set(args.seed)) < len(args.seed):
        raise CommandError(f"--seed: each seed once, got {' '.join(map(str, args.seed))}")
    vote = vote_config(args)
    try:
        model, frozen = load_models(args.model, args.models_dir, args.runtime)
    except (ValueError, OSError) as exc:
        raise CommandError(f"--model {args.model}: {exc}") from exc
    trained = trained_split(Path(model.path)) if args.data and model.path else None
    cache = EmbeddingCache.load(args.embedding_cache) if args.embedding_cache else EmbeddingCache()
    reports: dict[int, dict[str, Any]] = {}
    for seed, chosen in zip(args.seed, choose_images(args, args.seed, cache), strict=True):
        references, queries, parents, held_out, split, calibration = chosen
        if trained is not None and split is not None:
            check_split(trained, split, held_out)
        try:
            evaluation = evaluate(
                references,
                queries,
                model,
                frozen,
                parents=parents,
                held_out=held_out,
                vote=vote,
                leakage_threshold=args.leakage_threshold,
                batch_size=args.batch_size,
                labelled=calibration,
                bound=Bound(
                    args.auto_accept_precision, args.auto_accept_confidence, args.open_set_share
                ),
                cache=cache,
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        evaluation.split = split
        if args.embedding_cache:
            cache.save(args.embedding_cache)
        if len(args.seed) > 1:
            print(f"-- seed {seed}")
        print_summary(evaluation)
        reports[seed] = evaluation.to_dict()
        if args.report:
            folder = args.report / f"seed-{seed}" if len(args.seed) > 1 else args.report
            for path in write_report(evaluation, folder):
                print(f"wrote {path}")
    if len(reports) == 1:
        write_json(next(iter(reports.values())), args.json)
        return
    summary = over_seeds(reports)
    print_over_seeds(summary, len(reports))
    write_json({"over_seeds": summary, "seeds": reports}, args.json)


@dataclass(frozen=True)
class TrainedSplit:
    """The split a model was trained on, as its training.json records it."""

    fingerprint: str
    held_out: list[str]
    command: str


def trained_split(model_dir: Path) -> TrainedSplit | None:
    """The split of a model trained by `nearcat train` (None for any other model): it may
    only be evaluated on that split, since on another some queries are images it trained on.
    A model trained before splits had fingerprints is refused: its split cannot be checked."""
    from embedder.artifact import TRAINING_FILE

    record_file = model_dir / TRAINING_FILE
    if not record_file.exists():
        return None
    record = json.loads(record_file.read_text())
    command = record.get("provenance", {}).get("command", "its training command")
    fingerprint = record.get("split", {}).get("fingerprint")
    if fingerprint is None:
        raise CommandError(
            f"{model_dir} was trained by an earlier version of nearcat, whose split this one "
            "cannot check or rebuild; evaluate it with --references and --queries (images it "
            "never trained on), or train it again"
        )
    held_out = [str(c) for c in record.get("held_out_categories", [])]
    return TrainedSplit(fingerprint, held_out, command)


def check_split(trained: TrainedSplit, split: dict[str, Any], held_out: list[str]) -> None:
    """Refuse an evaluation split other than the model's training split."""
    if split.get("fingerprint") != trained.fingerprint:
        raise CommandError(
            "the model was trained on another split of this data (a different --seed, "
            "--group-column, --max-group-share, labels left out or data): its queries would "
            f"include images it trained on. Split as training did: {trained.command}"
        )
    if sorted(held_out) != sorted(trained.held_out):
        same = (
            f"--holdout-categories {','.join(trained.held_out)}"
            if trained.held_out
            else "--holdout 0"
        )
        raise CommandError(
            f"the model held out {', '.join(trained.held_out) or 'nothing'} in training; "
            f"report the same: {same}"
        )


def print_over_seeds(summary: dict[str, dict[str, Any]], seeds: int) -> None:
    """The headline figures over the seeds' splits: mean ± standard deviation [min, max], and
    on how many splits when some had no such figure."""
    print(f"-- over {seeds} seeds: mean ± sd [min, max]")
    for name, f in summary.items():
        sd = f["sd"] if f["sd"] is not None else float("nan")
        some = f"  ({f['n']} of {seeds} splits)" if f["n"] < seeds else ""
        if name.startswith("ece"):
            line = f"{f['mean']:6.3f} ± {sd:.3f} [{f['min']:.3f}, {f['max']:.3f}]"
        else:
            line = f"{f['mean']:6.1%} ± {sd * 100:.1f} [{f['min']:.1%}, {f['max']:.1%}]"
        print(f"{name:<24} {line}{some}")


def run_zero_shot(args: argparse.Namespace) -> None:
    """`eval --zero-shot`: the queries among all categories, from their names alone."""
    from embedder import load_artifact, resolve_model
    from server.evaluation.embedding import EmbeddingCache
    from server.evaluation.zero_shot import evaluate_zero_shot

    if args.report:
        raise CommandError("--report draws the kNN evaluation; with --zero-shot use --json")
    if args.data is None and args.references is None and args.queries is not None:
        dataset = load_source(args.queries, args, "--queries")
        queries, parents, split = dataset.images, dataset.parents, None
        labels = sorted(parents)
    else:
        if len(args.seed) > 1:
            raise CommandError("--zero-shot takes one --seed")
        references, queries, parents, _, split, _ = next(
            choose_images(args, args.seed, EmbeddingCache())
        )
        labels = sorted({i.category for i in [*references, *queries]})
    try:
        model = load_artifact(resolve_model(args.model, args.models_dir), runtime=args.runtime)
    except (ValueError, OSError) as exc:
        raise CommandError(f"--model {args.model}: {exc}") from exc
    try:
        evaluation = evaluate_zero_shot(
            queries, model, labels, parents=parents, batch_size=args.batch_size
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    evaluation.split = split

    m = evaluation.metrics
    print(
        f"{evaluation.tower_version}: zero-shot from {len(evaluation.labels)} category names, "
        f"{m.queries} queries (chance {1 / len(evaluation.labels):.1%})"
    )
    print(f"{'method':<16} {'top-1':>7} {'top-3':>7} {'macro':>7} {'ECE':>6}")
    print(f"{'zero-shot':<16} {m.top1:>7.1%} {m.top3:>7.1%} {m.macro_top1:>7.1%} {m.ece:>6.3f}")
    print(f"{'category':<16} {'n':>5} {'top-1':>7} {'top-3':>7}")
    for name, c in m.per_category.items():
        print(f"{name:<16} {c.n:>5} {c.top1:>7.1%} {c.top3:>7.1%}")
    for skipped in evaluation.skipped[:SKIPPED_SHOWN]:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    write_json(evaluation.to_dict(), args.json)


def vote_config(args: argparse.Namespace) -> VoteConfig:
    """The server's vote, with what the flags change."""
    from indexer.vote import VoteConfig

    given = {
        name: value
        for name in ("k", "votes_per_category", "temperature")
        if (value := getattr(args, name)) is not None
    }
    vote = VoteConfig(**given)
    if vote.k < 1 or vote.votes_per_category < 1 or vote.temperature <= 0:
        raise CommandError("--k and --votes-per-category must be >= 1, --temperature > 0")
    return vote


def choose_images(
    args: argparse.Namespace, seeds: Sequence[int], cache: EmbeddingCache
) -> Iterator[Chosen]:
    """For each seed: (references, queries, parents, held-out categories, split summary,
    labelled images) from the flags, the sources read once. Calibration is fitted on the
    validation part when the test part is queried, on --labelled with two sources, else by
    leave-one-shoot-out over the references."""
    from embedder.splits import split_dataset

    named = [c.strip() for c in (args.holdout_categories or "").split(",") if c.strip()]
    if args.data is None:
        yield _two_sources(args, named)
        return
    if args.references or args.queries:
        raise CommandError("give either --data, or --references and --queries, not both")
    dataset = load_source(args.data, args, "--data")
    images = dataset.images
    if args.group_column is None:  # as `nearcat train` does: bursts stay on one side
        from embedder.artifact import load_artifact, resolve_model
        from server.evaluation.evaluate import FROZEN_BASELINE, grouped_by_shoots

        frozen = load_artifact(resolve_model(FROZEN_BASELINE, args.models_dir))
        images = grouped_by_shoots(images, frozen, cache)
    for seed in seeds:
        try:
            split = split_dataset(
                images,
                seed=seed,
                grouped=True,
                holdout=named or args.holdout,
                max_group_share=args.max_group_share,
            )
        except ValueError as exc:
            raise CommandError(f"--data {args.data}: {exc}") from exc
        summary = {**split.summary(), "queried": args.split, "seed": seed}
        summary["group_column"] = args.group_column
        summary["max_group_share"] = args.max_group_share
        if args.split == "test":
            yield split.train, split.test, dataset.parents, split.held_out, summary, split.val
        else:
            yield split.train, split.val, dataset.parents, split.held_out, summary, []


def _two_sources(args: argparse.Namespace, named: list[str]) -> Chosen:
    """--references and --queries, as given."""
    if args.references is None or args.queries is None:
        raise CommandError("give --references SRC and --queries SRC, or --data SRC to split one")
    if args.holdout:
        raise CommandError("--holdout N picks categories of a split: use it with --data")
    references = load_source(args.references, args, "--references")
    queries = load_source(args.queries, args, "--queries")
    labelled = load_source(args.labelled, args, "--labelled").images if args.labelled else []
    unknown = sorted(set(named) - {i.category for i in references.images})
    if unknown:
        raise CommandError(f"--holdout-categories: not among the references: {', '.join(unknown)}")
    parents = {**queries.parents, **references.parents}
    return references.images, queries.images, parents, sorted(named), None, labelled


def print_summary(evaluation: Evaluation) -> None:
    """A table of the model against the baselines, then held-out, worst categories, warnings."""
    from server.evaluation.report import accepted_text

    rows = [("model kNN", evaluation.knn)] + list(evaluation.baselines.items())
    print(
        f"{evaluation.model_version}: {evaluation.references} references, "
        f"{evaluation.queries} queries, {evaluation.categories} categories"
    )
    print(f"{'method':<16} {'top-1':>7} {'top-3':>7} {'macro':>7} {'ECE':>6}")
    for name, result in rows:
        m = result.metrics
        note = "  (same as model)" if result.same_as_model else ""
        print(f"{name:<16} {m.top1:>7.1%} {m.top3:>7.1%} {m.macro_top1:>7.1%} {m.ece:>6.3f}{note}")
    metrics = evaluation.knn.metrics
    if metrics.held_out and metrics.seen:
        print(
            f"held out ({', '.join(evaluation.held_out)}): top-1 {metrics.held_out.top1:.1%}, "
            f"macro {metrics.held_out.macro_top1:.1%}; seen: top-1 {metrics.seen.top1:.1%}, "
            f"macro {metrics.seen.macro_top1:.1%}"
        )
    if len(metrics.hierarchy) > 1:
        print("by level: " + ", ".join(f"{k} {v:.1%}" for k, v in metrics.hierarchy.items()))
    if evaluation.confidence is not None:
        c = evaluation.confidence
        print(f"calibration ({c.calibration.source}): ECE {c.ece_before:.3f} -> {c.ece_after:.3f}")
        if c.calibration.auto_accept_at is None:
            print(f"auto-accept: none earned ({c.calibration.reason})")
        else:
            bound = c.calibration.precision_bound or 0.0
            print(
                f"auto-accept at >= {c.calibration.auto_accept_at:.4f} (earned: precision >= "
                f"{bound:.1%} at {c.calibration.bound.level:.0%} confidence): "
                f"{accepted_text(c.chosen)}"
            )
    worst = ", ".join(
        f"{name} {metrics.per_category[name].top1:.0%}" for name in metrics.worst_categories
    )
    print(f"worst: {worst}")

    for skipped in evaluation.skipped[:SKIPPED_SHOWN]:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if len(evaluation.skipped) > SKIPPED_SHOWN:
        print(f"... {len(evaluation.skipped)} images skipped in all", file=sys.stderr)
    if evaluation.unknown_query_categories:
        print(
            "warning: queries of categories with no references can never be right: "
            + ", ".join(evaluation.unknown_query_categories),
            file=sys.stderr,
        )
    leakage = evaluation.leakage
    if leakage.found:
        print(
            f"WARNING: LEAKAGE: {leakage.identical} queries are identical to a reference and "
            f"{leakage.near_identical} near-identical (cosine >= {leakage.threshold}); "
            "the accuracy above is overstated. Examples:",
            file=sys.stderr,
        )
        for pair in leakage.examples:
            print(f"  {pair.query} ~ {pair.reference} ({pair.similarity:.3f})", file=sys.stderr)
