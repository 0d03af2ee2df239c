"""Honest, in-process evaluation of an embedding model for kNN classification.

References are embedded and indexed, and queries voted on, by the same code the server runs
(`VectorIndex`, `indexer.answer`), so the numbers describe what the service will answer. On the
same images it also measures two baselines — the frozen backbone with kNN and a linear
softmax probe on the frozen features — and looks for leakage: queries whose identical or
near-identical twin is among the references, which would make any number look too good.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

from embedder.artifact import artifact_version, load_artifact, resolve_model
from embedder.datasets import LabeledImage
from embedder.model import Embedder
from embedder.training.validation import Classifier
from indexer import answer as served_answer
from indexer.answer import HeadInput, Prediction
from indexer.calibration import (
    Bound,
    Calibration,
    ReliabilityBin,
    ece,
    expected_calibration_error,
    fit_calibration,
    reliability_bins,
)
from indexer.decision import DecisionPolicy
from indexer.holdout import calibration_sample, held_out_examples, served_head, shoots
from indexer.ids import reference_id
from indexer.index import Hit, VectorIndex
from indexer.vote import VoteConfig
from server.evaluation.embedding import (
    EMBED_BATCH,
    EmbeddedImages,
    EmbeddingCache,
    Skipped,
    embed_images,
)
from server.evaluation.metrics import TOP_N, Answer, Metrics, rounded, score

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    pass

FROZEN_BASELINE = "efficientnet_lite0"  # the packaged backbone every model is compared with
LEAKAGE_THRESHOLD = 0.98  # cosine similarity of frozen features that counts as a near-twin
LEAKAGE_EXAMPLES = 10
# Inverse L2 strength of the linear probe. Unit-length features need weak regularisation:
# chosen on the clothing *validation* split (C=1: top-1 76%, ECE 0.16; C=10: 78%, ECE 0.03).
PROBE_C = 10.0


# -- classifiers ---------------------------------------------------------------------------


def knn_answers(
    references: EmbeddedImages, queries: EmbeddedImages, vote: VoteConfig
) -> list[Answer]:
    """Classify each query as the server does: the index it would build over these references
    (exact below its IVF threshold), the nearest `vote.k` of them, voted."""
    ids = [reference_id(c, sha) for c, sha in zip(references.labels, references.shas, strict=True)]
    index = VectorIndex.build(
        references.vectors.shape[1], ids, references.labels, references.vectors
    )
    found = index.search(queries.vectors, vote.k)
    return [
        _voted(image.category, hits, vote)
        for image, hits in zip(queries.images, found, strict=True)
    ]


def _voted(truth: str, hits: Sequence[Hit], vote: VoteConfig) -> Answer:
    """The answer the server's vote alone gives (its evidence without a head), with every
    category that got a vote."""
    ranked = served_answer.evidence(hits, vote)
    return Answer(
        truth,
        tuple(s.category for s in ranked),
        tuple(s.score for s in ranked),
        hits[0].similarity if hits else -1.0,
    )


def linear_probe_answers(references: EmbeddedImages, queries: EmbeddedImages) -> list[Answer]:
    """A multinomial logistic regression fitted on the reference vectors.

    The standard linear-probe baseline: if it beats kNN by far, the embedding holds the
    information but its geometry does not put same-category images together.
    """
    from sklearn.linear_model import LogisticRegression

    classes = sorted(set(references.labels))
    if len(classes) < 2:
        raise ValueError("a linear probe needs references of at least two categories")
    probe = LogisticRegression(C=PROBE_C, max_iter=2000)
    probe.fit(references.vectors, references.labels)
    probabilities = probe.predict_proba(queries.vectors)
    names = [str(c) for c in probe.classes_]
    answers = []
    for image, row in zip(queries.images, probabilities, strict=True):
        best = np.argsort(-row, kind="stable")[:TOP_N]
        answers.append(
            Answer(
                image.category,
                tuple(names[i] for i in best),
                tuple(float(row[i]) for i in best),
            )
        )
    return answers


# -- confidence ----------------------------------------------------------------------------


@dataclass(frozen=True)
class AutomationPoint:
    threshold: float
    coverage: float  # share of images at or above the threshold (auto-accepted)
    precision: float  # how often those are right


def automation_curve(answers: Sequence[Answer]) -> list[AutomationPoint]:
    """Coverage and precision of auto-accepting every answer at or above each confidence."""
    ordered = sorted(answers, key=lambda a: -a.confidence)
    points, right = [], 0
    for n, answer in enumerate(ordered, start=1):
        right += answer.hit(1)
        last = n == len(ordered) or ordered[n].confidence < answer.confidence
        if last:  # ties: a threshold accepts all of them or none
            points.append(AutomationPoint(answer.confidence, n / len(ordered), right / n))
    return points


class Accepted(TypedDict):
    """What auto-accepting every answer at or above `threshold` gives."""

    threshold: float
    coverage: float  # share of the answers accepted
    precision: float | None  # how often those are right; None when none is (not 1.0)


def at_threshold(answers: Sequence[Answer], threshold: float) -> Accepted:
    accepted = [a for a in answers if a.confidence >= threshold]
    return {
        "threshold": threshold,
        "coverage": len(accepted) / len(answers),
        "precision": sum(a.hit(1) for a in accepted) / len(accepted) if accepted else None,
    }


@dataclass
class ConfidenceReport:
    """The calibration the server would fit, and how it does on the queries: ECE before and
    after, the automation curve, the earned auto-accept threshold and each decision band's
    share and precision (with a 95% interval), decided as the server decides."""

    calibration: Calibration
    ece_before: float
    ece_after: float
    reliability_after: list[ReliabilityBin]
    automation: list[AutomationPoint]  # on the queries
    chosen: Accepted  # the earned threshold, and what it gives on the queries
    bands: dict[str, dict[str, Any]]
    decisions: list[str] = field(default_factory=list)  # each query's band, as served

    def to_dict(self) -> dict[str, Any]:
        c = self.calibration
        return rounded(
            {
                "fitted": {
                    "source": c.source,
                    "examples": c.examples,
                    "temperature": c.temperature,
                    "unknown_below": c.unknown_below,
                    "auto_accept_at": c.auto_accept_at,
                    "target_precision": c.bound.precision,
                    "bound_level": c.bound.level,
                    "open_set_share": c.bound.open_set_share,
                    "precision_bound": c.precision_bound,
                    "accepted_share": c.accepted_share,
                    "no_auto_accept_reason": c.reason,
                    "accuracy": c.extra.get("accuracy"),
                },
                "ece_before": self.ece_before,
                "ece_after": self.ece_after,
                "reliability_after": [vars(b) for b in self.reliability_after],
                "automation": {
                    "target_precision": c.bound.precision,
                    "threshold_chosen_on_calibration_data": self.chosen,
                    "best_possible_on_queries": _best_coverage(self.automation, c.bound.precision),
                    "curve": [vars(p) for p in _thinned(self.automation)],
                },
                "bands": self.bands,
            }
        )


def _best_coverage(points: Sequence[AutomationPoint], target: float) -> dict[str, float] | None:
    """Hindsight, for reference only: the most coverage any threshold gives on the queries
    at the target precision. Not a result: choosing it would be tuning on the test set."""
    reaching = [p for p in points if p.precision >= target]
    best = max(reaching, key=lambda p: p.coverage, default=None)
    return vars(best) if best else None


def _thinned(points: Sequence[AutomationPoint], count: int = 50) -> list[AutomationPoint]:
    step = max(1, len(points) // count)
    return list(points[::step]) + ([points[-1]] if points and (len(points) - 1) % step else [])


def band_shares(answers: Sequence[Answer], decisions: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each decision band's share of the images, how often its answers are right, and a 95%
    Clopper-Pearson interval on that (every band is listed, empty ones with share 0)."""
    from scipy.stats import beta

    out: dict[str, dict[str, Any]] = {}
    for band in ("auto_accept", "flag", "review", "unknown"):
        members = [a for a, d in zip(answers, decisions, strict=True) if d == band]
        n, right = len(members), sum(a.hit(1) for a in members)
        low = float(beta.ppf(0.025, right, n - right + 1)) if right else 0.0
        high = float(beta.ppf(0.975, right + 1, n - right)) if right < n else 1.0
        out[band] = {
            "share": n / len(answers),
            "count": n,
            "accuracy": right / n if n else None,
            "interval": [low, high] if n else None,
        }
    return out


def confidence_report(
    answers: Sequence[Answer],
    before: Sequence[Answer],
    decisions: Sequence[str],
    calibration: Calibration,
) -> ConfidenceReport:
    """How the calibration (fitted on other images) does on the queries: `answers` as served,
    `before` the same with the identity temperature, `decisions` the served bands."""
    bins_after = reliability_bins([a.confidence for a in answers], [a.hit(1) for a in answers])
    threshold = calibration.auto_accept_at
    return ConfidenceReport(
        calibration=calibration,
        ece_before=ece([a.confidence for a in before], [a.hit(1) for a in before]),
        ece_after=expected_calibration_error(bins_after),
        reliability_after=bins_after,
        automation=automation_curve(answers),
        chosen=at_threshold(answers, 1.000001 if threshold is None else threshold),
        bands=band_shares(answers, decisions),
        decisions=list(decisions),
    )


# -- leakage -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LeakagePair:
    query: Path
    reference: Path
    similarity: float
    identical: bool
    same_category: bool


@dataclass(frozen=True)
class Leakage:
    """Queries with an identical (same sha256) or near-identical twin among the references."""

    threshold: float
    identical: int
    near_identical: int
    examples: list[LeakagePair]

    @property
    def found(self) -> bool:
        return bool(self.identical or self.near_identical)

    def to_dict(self) -> dict[str, Any]:
        return rounded(
            {
                "found": self.found,
                "threshold": self.threshold,
                "identical": self.identical,
                "near_identical": self.near_identical,
                "examples": [
                    {**vars(e), "query": str(e.query), "reference": str(e.reference)}
                    for e in self.examples
                ],
            }
        )


def find_leakage(
    references: EmbeddedImages,
    queries: EmbeddedImages,
    threshold: float = LEAKAGE_THRESHOLD,
    chunk: int = 1024,
) -> Leakage:
    """Count queries whose file is also a reference (identical) or whose nearest reference
    has cosine similarity >= `threshold` (near-identical: a re-encode, a resize, a burst)."""
    reference_of_sha = dict(zip(references.shas, references.images, strict=True))
    identical: list[LeakagePair] = []
    near: list[LeakagePair] = []
    for start in range(0, len(queries.images), chunk):
        block = queries.vectors[start : start + chunk]
        similarities = block @ references.vectors.T if len(references.images) else None
        for row in range(len(block)):
            query = queries.images[start + row]
            twin = reference_of_sha.get(queries.shas[start + row])
            if twin is not None:
                identical.append(
                    LeakagePair(query.path, twin.path, 1.0, True, twin.category == query.category)
                )
            elif similarities is not None:
                best = int(np.argmax(similarities[row]))
                if similarities[row, best] >= threshold:
                    nearest = references.images[best]
                    near.append(
                        LeakagePair(
                            query.path,
                            nearest.path,
                            float(similarities[row, best]),
                            False,
                            nearest.category == query.category,
                        )
                    )
    near.sort(key=lambda pair: -pair.similarity)
    return Leakage(threshold, len(identical), len(near), (identical + near)[:LEAKAGE_EXAMPLES])


# -- the whole evaluation ------------------------------------------------------------------


@dataclass
class MethodResult:
    """One way of classifying the queries, its answers and their metrics."""

    description: str
    model_version: str
    answers: list[Answer]
    metrics: Metrics
    same_as_model: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "model_version": self.model_version,
            "same_as_model": self.same_as_model,
            **self.metrics.to_dict(),
        }


@dataclass
class Evaluation:
    """The evaluated model's kNN answers and metrics, the baselines, leakage, what was skipped."""

    model_name: str
    model_version: str
    vote: VoteConfig
    references: int
    queries: int
    categories: int
    held_out: list[str]
    parents: dict[str, str | None]
    knn: MethodResult
    baselines: dict[str, MethodResult]
    leakage: Leakage
    skipped: list[Skipped]
    unknown_query_categories: list[str]
    split: dict[str, Any] | None = None
    confidence: ConfidenceReport | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON report: the model's metrics at the top level, then everything else."""
        return {
            "model": {"name": self.model_name, "version": self.model_version},
            "vote": vars(self.vote),
            "counts": {
                "references": self.references,
                "queries": self.queries,
                "categories": self.categories,
                "skipped": len(self.skipped),
            },
            **self.knn.metrics.to_dict(),
            "held_out_categories": self.held_out,
            "unknown_query_categories": self.unknown_query_categories,
            "baselines": {name: result.to_dict() for name, result in self.baselines.items()},
            "leakage": self.leakage.to_dict(),
            "skipped": [{"path": str(s.path), "reason": s.reason} for s in self.skipped],
            **({"split": self.split} if self.split is not None else {}),
            **({"confidence": self.confidence.to_dict()} if self.confidence else {}),
        }


# What `over_seeds` summarises: a name and where it sits in an Evaluation's JSON.
SEED_FIGURES: dict[str, tuple[str, ...]] = {
    "top1": ("top1",),
    "top3": ("top3",),
    "macro_top1": ("macro_top1",),
    "ece": ("ece",),
    "held_out_top1": ("held_out", "held_out", "top1"),
    "seen_top1": ("held_out", "seen", "top1"),
    "vote_only_top1": ("baselines", "vote_only", "top1"),
    "linear_probe_top1": ("baselines", "linear_probe", "top1"),
    "ece_after_calibration": ("confidence", "ece_after"),
    "auto_accepted": (
        "confidence", "automation", "threshold_chosen_on_calibration_data", "coverage"
    ),
    "auto_accepted_precision": (
        "confidence", "automation", "threshold_chosen_on_calibration_data", "precision"
    ),
}  # fmt: skip


def over_seeds(reports: Mapping[int, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample standard deviation, min and max of each headline figure over the splits
    of several seeds (Evaluation.to_dict() of each): one split's figure can be luck. `values`
    names each seed's figure, None where that split has none (e.g. no calibration, or no
    precision because nothing was auto-accepted); `n` counts the others, and sd is None
    below two."""
    summary: dict[str, dict[str, Any]] = {}
    for name, path in SEED_FIGURES.items():
        by_seed = {str(seed): _dig(report, path) for seed, report in reports.items()}
        values = [v for v in by_seed.values() if v is not None]
        if not values:
            continue
        summary[name] = rounded(
            {
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "values": by_seed,
            }
        )
    return summary


def _dig(report: Mapping[str, Any], path: Sequence[str]) -> float | None:
    value: Any = report
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return float(value) if isinstance(value, int | float) else None


def load_models(
    model: str, models_dir: Path, runtime: str = "auto"
) -> tuple[Embedder, Embedder | None]:
    """The model to evaluate and the frozen baseline backbone (None when they are the same),
    run by `runtime` as `load_artifact` takes it, like the server's `--runtime`."""
    embedder = load_artifact(resolve_model(model, models_dir), runtime=runtime)
    frozen_path = resolve_model(FROZEN_BASELINE, models_dir)
    if artifact_version(frozen_path) == embedder.version:
        return embedder, None
    return embedder, load_artifact(frozen_path, runtime=runtime)


def evaluate(
    references: Sequence[LabeledImage],
    queries: Sequence[LabeledImage],
    model: Embedder,
    frozen: Embedder | None = None,
    *,
    parents: Mapping[str, str | None] | None = None,
    held_out: Sequence[str] = (),
    vote: VoteConfig | None = None,
    leakage_threshold: float = LEAKAGE_THRESHOLD,
    batch_size: int = EMBED_BATCH,
    labelled: Sequence[LabeledImage] = (),
    bound: Bound | None = None,
    cache: EmbeddingCache | None = None,
) -> Evaluation:
    """Embed references and queries, classify the queries by kNN, score, and run the baselines.

    `frozen` is the frozen backbone for the baselines and the leakage check; None means
    `model` is that backbone and its vectors are reused. The confidence calibration is fitted
    on `labelled` images (labelled traffic, or a validation part), or when none are given by
    leave-one-shoot-out
    over the references; never on the queries it is measured on. Pass one `cache` to
    several calls (splits of one dataset) to embed each image once.
    """
    vote = vote or VoteConfig()
    parents = dict(parents or {})
    cache = cache or EmbeddingCache()
    refs, skipped = embed_images(model, references, cache, batch_size, "references")
    qs, skipped_queries = embed_images(model, queries, cache, batch_size, "queries")
    skipped += skipped_queries
    if not refs.images:
        raise ValueError("none of the reference images could be read")
    if not qs.images:
        raise ValueError("none of the query images could be read")

    votes = knn_answers(refs, qs, vote)
    answers, confidence = _served(refs, qs, votes, labelled, model, cache, vote, bound)
    blended = answers is not votes  # the head was fitted and blended in
    knn = MethodResult(
        f"{model.config.name} kNN" + (" blended with the head" if blended else ""),
        model.version,
        answers,
        score(answers, parents, held_out),
    )
    baselines: dict[str, MethodResult] = {}
    if blended:
        baselines["vote_only"] = MethodResult(
            f"{model.config.name} kNN vote alone (no head)",
            model.version,
            votes,
            score(votes, parents, held_out),
        )
    if frozen is None:
        frozen_refs, frozen_qs = refs, qs
        frozen_knn = MethodResult(
            f"{model.config.name} kNN vote (the model is the frozen backbone)",
            model.version,
            votes,
            baselines["vote_only"].metrics if blended else knn.metrics,
            same_as_model=not blended,  # with a head, it is the vote_only row
        )
        frozen_version = model.version
    else:
        frozen_refs, _ = embed_images(frozen, references, cache, batch_size, "references, frozen")
        frozen_qs, _ = embed_images(frozen, queries, cache, batch_size, "queries, frozen")
        frozen_answers = knn_answers(frozen_refs, frozen_qs, vote)
        frozen_version = frozen.version
        frozen_knn = MethodResult(
            f"frozen {frozen.config.name} kNN",
            frozen_version,
            frozen_answers,
            score(frozen_answers, parents, held_out),
        )
    baselines["frozen_knn"] = frozen_knn
    if len(set(frozen_refs.labels)) >= 2:
        probe_answers = linear_probe_answers(frozen_refs, frozen_qs)
        baselines["linear_probe"] = MethodResult(
            "logistic regression on frozen features of the references",
            frozen_version,
            probe_answers,
            score(probe_answers, parents, held_out),
        )

    reference_categories = set(refs.labels)
    return Evaluation(
        model_name=model.config.name,
        model_version=model.version,
        vote=vote,
        references=len(refs.images),
        queries=len(qs.images),
        categories=len(reference_categories | set(qs.labels)),
        held_out=sorted(held_out),
        parents=parents,
        knn=knn,
        baselines=baselines,
        leakage=find_leakage(frozen_refs, frozen_qs, leakage_threshold),
        skipped=skipped,
        unknown_query_categories=sorted(set(qs.labels) - reference_categories),
        confidence=confidence,
    )


def _served(
    refs: EmbeddedImages,
    qs: EmbeddedImages,
    votes: list[Answer],
    labelled: Sequence[LabeledImage],
    model: Embedder,
    cache: EmbeddingCache,
    vote: VoteConfig,
    bound: Bound | None,
) -> tuple[list[Answer], ConfidenceReport | None]:
    """The answers as a calibrated server gives them, and how sure they are, computed as the
    server computes them: the same honest examples (`indexer.holdout`: the labelled images
    when given, else leave-one-shoot-out over a sample of the references, drawn as the
    server draws it), the same fit (`fit_calibration`) and the same answer (`answer`)."""
    ids = [reference_id(c, sha) for c, sha in zip(refs.labels, refs.shas, strict=True)]
    index = VectorIndex.build(refs.vectors.shape[1], ids, refs.labels, refs.vectors)
    if labelled:
        held, _ = embed_images(model, labelled, cache, EMBED_BATCH, "labelled")
        examples, head = held_out_examples(
            index, ids, refs.vectors, refs.labels, vote, (held.vectors, held.labels)
        )
        source = f"{len(held.images)} labelled images"
    else:
        groups = {
            ids[i]: image.group for i, image in enumerate(refs.images) if image.group is not None
        }
        examples, head = held_out_examples(
            index, ids, refs.vectors, refs.labels, vote, group_of=groups
        )
        source = f"leave-one-shoot-out over {sum(not e.open_set for e in examples)} references"
    try:
        calibration = fit_calibration(examples, source, bound, head)
    except ValueError as exc:  # too few images to fit on: no calibration, so no head either
        log.warning("no calibration: %s", exc)
        return votes, None
    present = index.categories()
    rows_q = head.probabilities(qs.vectors) if head is not None else None
    found = index.search(qs.vectors, vote.k)
    policy = DecisionPolicy()

    def served(with_calibration: Calibration) -> list[Prediction]:
        return [
            served_answer.answer(
                hits,
                vote=vote,
                calibration=with_calibration,
                policy=policy,
                indexed=present,
                head=HeadInput(head, rows_q[i], head.held(present))
                if head is not None and rows_q is not None
                else None,
            )
            for i, hits in enumerate(found)
        ]

    identity = served(replace(calibration, temperature=1.0))
    before = [_answer(t, p) for t, p in zip(qs.labels, identity, strict=True)]
    predictions = served(calibration)
    answers = [_answer(t, p) for t, p in zip(qs.labels, predictions, strict=True)]
    decisions = [p.decision.value for p in predictions]
    return answers, confidence_report(answers, before, decisions, calibration)


def grouped_by_shoots(
    images: Sequence[LabeledImage], embedder: Embedder, cache: EmbeddingCache | None = None
) -> list[LabeledImage]:
    """The images with each one's shoot as its group (`indexer.holdout.shoots`, by
    `embedder`'s vectors), for splitting a source that names no groups: a burst of shots of
    one product then stays on one side of a split, as a grouped split keeps a sender's photos.
    Images already in a group keep it; an unreadable one is returned ungrouped (the split
    skips it later, as before)."""
    embedded, _ = embed_images(embedder, images, cache, desc="finding shoots")
    ids = [f"{n:016x}" for n in range(len(embedded.images))]
    index = VectorIndex.build(embedder.dim, ids, embedded.labels, embedded.vectors)
    shoot_of = shoots(index, ids, embedded.vectors, embedded.labels)
    by_path = {
        image.path: f"shoot-{shoot_of[i]}" for i, image in zip(ids, embedded.images, strict=True)
    }
    return [
        image if image.group is not None else replace(image, group=by_path.get(image.path))
        for image in images
    ]


def served_classifier(vote: VoteConfig) -> Classifier:
    """Each query's answer as a calibrated server of these references would serve it: the
    vote blended with the head fitted on them (`indexer.answer.evidence`; the temperature
    does not change the ranking). For `nearcat train`'s validation."""

    def classify(
        references: np.ndarray, categories: Sequence[str], queries: np.ndarray
    ) -> list[str]:
        ids = [reference_id(c, f"{n:064x}") for n, c in enumerate(categories)]
        index = VectorIndex.build(references.shape[1], ids, list(categories), references)
        head = served_head(references, categories, calibration_sample(ids, categories))
        rows = head.probabilities(queries) if head is not None else None
        present = index.categories()
        out = []
        for i, hits in enumerate(index.search(queries, vote.k)):
            given = None
            if head is not None and rows is not None:
                given = HeadInput(head, rows[i], head.held(present))
            shares = served_answer.evidence(hits, vote, given)
            out.append(shares[0].category if shares else "")
        return out

    return classify


def _answer(truth: str, prediction: Prediction) -> Answer:
    return Answer(
        truth,
        tuple(c.category for c in prediction.categories),
        tuple(c.score for c in prediction.categories),
        prediction.neighbors[0].similarity if prediction.neighbors else -1.0,
    )
