"""The human side of an evaluation: a confusion matrix, a reliability diagram, a summary.

`write_report(evaluation, out_dir)` writes `confusion.png`, `reliability.png` (and, with a
fitted calibration, `reliability_calibrated.png` and `automation.png`) and `summary.md`
(which links them). Plots use matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from server.evaluation.evaluate import (
    Accepted,
    AutomationPoint,
    ConfidenceReport,
    Evaluation,
    MethodResult,
    ReliabilityBin,
)
from server.evaluation.metrics import ancestry

CONFUSION_FILE = "confusion.png"
RELIABILITY_FILE = "reliability.png"
CALIBRATED_FILE = "reliability_calibrated.png"
AUTOMATION_FILE = "automation.png"
SUMMARY_FILE = "summary.md"
ANNOTATE_UP_TO = 30  # categories; beyond this, cell percentages would be unreadable


def write_report(evaluation: Evaluation, out_dir: Path) -> list[Path]:
    """Write the plots and the summary into `out_dir`; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    confusion = out_dir / CONFUSION_FILE
    reliability = out_dir / RELIABILITY_FILE
    summary = out_dir / SUMMARY_FILE
    plot_confusion(evaluation, confusion)
    plot_reliability(evaluation.knn.metrics.reliability, evaluation.knn.metrics.ece, reliability)
    written = [confusion, reliability]
    if evaluation.confidence is not None:
        confidence = evaluation.confidence
        served = served_confidence(confidence)
        plot_reliability(
            confidence.reliability_after, confidence.ece_after, out_dir / CALIBRATED_FILE, served
        )
        plot_automation(
            confidence.automation,
            confidence.chosen["threshold"],
            out_dir / AUTOMATION_FILE,
            served,
        )
        written += [out_dir / CALIBRATED_FILE, out_dir / AUTOMATION_FILE]
    summary.write_text(summary_markdown(evaluation))
    return [*written, summary]


def served_confidence(confidence: ConfidenceReport) -> str:
    """What the figures after calibration were measured on: the answer's probability."""
    return f"answer's probability at temperature {confidence.calibration.temperature:.2f}"


def confusion_matrix(
    truths: Sequence[str], predictions: Sequence[str | None], labels: Sequence[str]
) -> np.ndarray:
    """Counts: row = true category, column = predicted category, in the order of `labels`."""
    position = {name: i for i, name in enumerate(labels)}
    counts = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for truth, predicted in zip(truths, predictions, strict=True):
        if predicted is not None:
            counts[position[truth], position[predicted]] += 1
    return counts


def plot_confusion(evaluation: Evaluation, path: Path) -> None:
    """Row-normalised confusion matrix of the model's top-1 answers; siblings sit together."""
    import matplotlib.pyplot as plt

    answers = evaluation.knn.answers
    names = {a.truth for a in answers} | {a.predicted for a in answers if a.predicted}
    labels = sorted(names, key=lambda name: ancestry(name, evaluation.parents))
    counts = confusion_matrix(
        [a.truth for a in answers], [a.predicted for a in answers], labels
    ).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.full_like(counts, np.nan), where=totals > 0)

    size = max(6.0, 0.42 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the row")
    ticks = np.arange(len(labels))
    ax.set_xticks(ticks, labels, rotation=60, ha="right", rotation_mode="anchor")
    ax.set_yticks(
        ticks, [f"{name} ({int(n)})" for name, n in zip(labels, totals[:, 0], strict=True)]
    )
    ax.set_xlabel("predicted category")
    ax.set_ylabel("true category (queries)")
    if len(labels) <= ANNOTATE_UP_TO:
        for row, col in zip(*np.nonzero(counts), strict=True):
            rate = rates[row, col]
            ax.text(
                col,
                row,
                f"{rate * 100:.0f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rate > 0.5 else "black",
            )
    metrics = evaluation.knn.metrics
    ax.set_title(
        f"{evaluation.model_version}: top-1 {metrics.top1:.1%}, macro {metrics.macro_top1:.1%}\n"
        "rows normalised, cells in % of the true category's queries"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(
    bins: Sequence[ReliabilityBin],
    ece: float,
    path: Path,
    what: str = "top-1 score before calibration",
) -> None:
    """Accuracy against confidence per bin (with query counts), and how queries spread."""
    import matplotlib.pyplot as plt

    width = bins[0].upper - bins[0].lower
    centres = [(b.lower + b.upper) / 2 for b in bins]
    filled = [b for b in bins if b.count]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    top.bar(
        [(b.lower + b.upper) / 2 for b in filled],
        [b.accuracy or 0.0 for b in filled],
        width=width * 0.9,
        color="tab:blue",
        edgecolor="black",
        label="accuracy",
    )
    top.scatter(
        [(b.lower + b.upper) / 2 for b in filled],
        [b.confidence for b in filled],
        marker="_",
        s=400,
        linewidths=2.5,
        color="tab:orange",
        zorder=3,
        label="mean confidence in the bin",
    )
    for b in filled:
        top.annotate(
            f"n={b.count}",
            ((b.lower + b.upper) / 2, b.accuracy or 0.0),
            textcoords="offset points",
            xytext=(0, 3),
            ha="center",
            fontsize=7,
        )
    top.set_ylim(0, 1.08)
    top.set_ylabel("accuracy of top-1")
    top.set_title(f"Reliability, {what}: ECE {ece:.3f} ({len(bins)} bins)")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(centres, [b.count for b in bins], width=width * 0.9, color="tab:grey")
    bottom.set_yscale("symlog")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel(f"confidence ({what})")
    bottom.set_ylabel("queries")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_automation(
    points: Sequence[AutomationPoint], chosen: float, path: Path, what: str
) -> None:
    """Share auto-accepted against how often the auto-accepted are right, as the threshold
    moves; the threshold chosen on calibration data is marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot([p.coverage for p in points], [p.precision for p in points], color="tab:blue")
    ax.axhline(0.98, linestyle="--", color="grey", label="target precision")
    picked = [p for p in points if p.threshold >= chosen]
    if picked:
        last = picked[-1]
        ax.scatter([last.coverage], [last.precision], color="tab:red", zorder=3)
        ax.annotate(
            f"threshold {chosen:.3f}: {last.coverage:.0%} accepted, {last.precision:.1%} right",
            (last.coverage, last.precision),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=8,
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(min(0.5, min((p.precision for p in points), default=0.5)), 1.01)
    ax.set_xlabel("share of images auto-accepted")
    ax.set_ylabel("precision of the auto-accepted")
    ax.set_title(f"Automation curve on the queries ({what})")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def summary_markdown(evaluation: Evaluation) -> str:
    """Headline metrics against the baselines, held-out vs seen, worst categories, leakage."""
    methods: list[tuple[str, MethodResult]] = [("model kNN", evaluation.knn)]
    methods += [(name, result) for name, result in evaluation.baselines.items()]
    lines = [
        f"# Evaluation of {evaluation.model_name}",
        "",
        f"Model version `{evaluation.model_version}`; {evaluation.references} references, "
        f"{evaluation.queries} queries, {evaluation.categories} categories, "
        f"{len(evaluation.skipped)} images skipped. Vote: k={evaluation.vote.k}, "
        f"{evaluation.vote.votes_per_category} votes per category, "
        f"temperature {evaluation.vote.temperature}.",
        "",
    ]
    if evaluation.leakage.found:
        lines += [f"> **Warning: leakage.** {_leakage_sentence(evaluation)}", ""]
    lines += [
        "| method | top-1 | top-3 | macro top-1 | ECE |",
        "|---|---|---|---|---|",
    ]
    for name, result in methods:
        m = result.metrics
        label = f"{name} (= model)" if result.same_as_model else name
        lines.append(
            f"| {label} | {m.top1:.1%} | {m.top3:.1%} | {m.macro_top1:.1%} | {m.ece:.3f} |"
        )
    if evaluation.held_out:
        lines += [
            "",
            f"Held out of training: {', '.join(evaluation.held_out)}.",
            "",
            "| method | held-out top-1 | held-out macro | seen top-1 | seen macro |",
            "|---|---|---|---|---|",
        ]
        for name, result in methods:
            held, seen = result.metrics.held_out, result.metrics.seen
            cells = [
                _percent(part.top1 if part else None)
                + " | "
                + _percent(part.macro_top1 if part else None)
                for part in (held, seen)
            ]
            lines.append(f"| {name} | {' | '.join(cells)} |")
    metrics = evaluation.knn.metrics
    if len(metrics.hierarchy) > 1:
        levels = ", ".join(f"{level} {value:.1%}" for level, value in metrics.hierarchy.items())
        lines += ["", f"Top-1 by taxonomy level: {levels}."]
    lines += ["", "## Worst categories", "", "| category | queries | top-1 | top-3 |"]
    lines.append("|---|---|---|---|")
    for name in metrics.worst_categories:
        c = metrics.per_category[name]
        lines.append(f"| {name} | {c.n} | {c.top1:.1%} | {c.top3:.1%} |")
    if evaluation.confidence is not None:
        lines += ["", "## Confidence", "", *_confidence_lines(evaluation)]
    lines += ["", "## Leakage", "", _leakage_sentence(evaluation)]
    for pair in evaluation.leakage.examples:
        kind = "identical" if pair.identical else f"cosine {pair.similarity:.3f}"
        lines.append(f"- `{pair.query}` ~ `{pair.reference}` ({kind})")
    lines += [
        "",
        "## Plots",
        "",
        f"![confusion matrix]({CONFUSION_FILE})",
        "",
        f"![reliability diagram]({RELIABILITY_FILE})",
        "",
    ]
    if evaluation.confidence is not None:
        lines += [
            f"![reliability after calibration]({CALIBRATED_FILE})",
            "",
            f"![automation curve]({AUTOMATION_FILE})",
            "",
        ]
    return "\n".join(lines)


def _confidence_lines(evaluation: Evaluation) -> list[str]:
    c = evaluation.confidence
    assert c is not None
    chosen = c.chosen
    lines = [
        f"Calibration fitted on {c.calibration.source}: temperature "
        f"{c.calibration.temperature:.3f}; ECE on the queries {c.ece_before:.3f} before, "
        f"{c.ece_after:.3f} after. Open-set threshold: nearest similarity below "
        f"{c.calibration.unknown_below:.3f} is `unknown`.",
        "",
        f"Auto-accept threshold earned on the calibration data for "
        f"{c.calibration.bound.precision:.0%} precision ({c.calibration.bound.level:.0%} "
        f"lower bound): "
        + (
            f"{chosen['threshold']:.3f}; on the queries it auto-accepts {accepted_text(chosen)}."
            if c.calibration.auto_accept_at is not None
            else f"none ({c.calibration.reason})."
        ),
        "",
        "| band | share | accuracy |",
        "|---|---|---|",
    ]
    lines += [
        f"| {band} | {v['share']:.1%} | "
        + ("-" if v["accuracy"] is None else f"{v['accuracy']:.1%}")
        + " |"
        for band, v in c.bands.items()
    ]
    return lines


def accepted_text(at: Accepted) -> str:
    """How many a threshold auto-accepts and how often rightly; "nothing" when none."""
    if at["precision"] is None:
        return "nothing"
    return f"{at['coverage']:.1%} at {at['precision']:.1%} precision"


def _leakage_sentence(evaluation: Evaluation) -> str:
    leakage = evaluation.leakage
    if not leakage.found:
        return (
            f"No query has an identical or near-identical reference "
            f"(frozen-feature cosine ≥ {leakage.threshold})."
        )
    return (
        f"{leakage.identical} of {evaluation.queries} queries are byte-identical to a reference "
        f"and {leakage.near_identical} more nearly so (frozen-feature cosine ≥ "
        f"{leakage.threshold}): the accuracy is overstated."
    )
