"""People in the loop: which answers go to a person, what a person's verdict does, and the
audited precision of the auto-accept band.

An answer in the REVIEW or UNKNOWN band (FLAG too with --review-flagged) becomes a review
item; so does a random `audit_share` of AUTO_ACCEPT answers, marked as audits. A verdict
becomes labelled traffic (the honest evidence calibration, the reindex check and `train
--val` read) and, when the model was wrong or unsure, a reference of the confirmed category:
the catalogue improves as people work. Reviewed audits measure the band as served; with
--audit-guard, a band whose lower bound falls below the target stops auto-accepting.
"""

from __future__ import annotations

import logging
import math
import random
import threading
from dataclasses import dataclass, replace

from indexer.answer import Prediction
from indexer.calibration import precision_lower_bound
from indexer.decision import Decision
from indexer.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from indexer.names import normalise_name
from indexer.review_store import (
    NewReviewItem,
    QueueCounts,
    ReviewItem,
    ReviewStore,
    VerdictRecord,
    now_ms,
)
from server.catalog import Catalog, ReferenceInput
from server.requests import category_name

log = logging.getLogger("nearcat.review")

MAX_CLAIM = 50
# The label of a photo that belongs to none of the catalogue's categories: labelled
# traffic with it is an out-of-catalogue example for the calibration.
NONE_OF_THESE = "(none of these)"
QUEUED = frozenset({Decision.REVIEW, Decision.UNKNOWN})


@dataclass(frozen=True)
class ReviewConfig:
    review_flagged: bool = False
    audit_share: float = 0.02
    audit_guard: bool = False
    max_items: int = 10_000
    max_age_s: float = 7 * 24 * 3600.0
    lease_s: float = 300.0
    learn: bool = True


@dataclass(frozen=True)
class AuditPrecision:
    reviewed: int
    right: int
    lower: float
    upper: float
    target: float
    needed: int  # audits, all right, before the lower bound can reach the target
    below_target: bool
    guard_active: bool

    @property
    def precision(self) -> float:
        return self.right / self.reviewed if self.reviewed else 0.0


@dataclass(frozen=True)
class ReviewStats:
    counts: QueueCounts
    audit: AuditPrecision
    config: ReviewConfig

    @property
    def agreement(self) -> float:
        judged = self.counts.get("judged")
        return self.counts.get("agreed") / judged if judged else 0.0


@dataclass(frozen=True)
class Caller:
    """What the caller said about an image it sent to Classify."""

    item_id: str = ""
    metadata: dict[str, str] | None = None
    request_id: str = ""
    skip_review: bool = False


def audit_precision(
    reviewed: int, right: int, target: float, level: float, guard: bool
) -> AuditPrecision:
    """The band's live precision: a Clopper-Pearson interval at `level` (the calibration's
    --auto-accept-confidence). It is below target only once there are enough audits for an
    all-right sample to have cleared it: before that, a low bound says "too few", not "bad"."""
    needed = math.ceil(math.log(1 - level) / math.log(target)) if 0 < target < 1 else 0
    lower = precision_lower_bound(right, reviewed, level)
    upper = 1.0 - precision_lower_bound(reviewed - right, reviewed, level) if reviewed else 1.0
    below = reviewed >= needed and lower < target
    return AuditPrecision(reviewed, right, lower, upper, target, needed, below, guard and below)


@dataclass(frozen=True)
class Offered:
    """What became of an answer offered to the review queue."""

    review_id: str = ""  # the review item it became
    unqueued: str = ""  # why an answer a person should see could not be queued


class Reviews:
    """The review queue of one catalogue."""

    def __init__(
        self, catalog: Catalog, store: ReviewStore, config: ReviewConfig, seed: int | None = None
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.config = config
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._guard_checked = 0.0
        self.unqueued = 0  # answers that should have been queued while the store was away

    # -- queueing ------------------------------------------------------------------------

    def wants(self, prediction: Prediction) -> tuple[bool, bool]:
        """(queue it, as an audit) for an answer. While the guard holds auto-accepting back,
        the answers it would have accepted are still audited: that is how the band can prove
        itself again."""
        if self._auto_accepted(prediction):
            with self._lock:
                audit = self._random.random() < self.config.audit_share
            if audit:
                return True, True
        if prediction.decision in QUEUED or (
            self.config.review_flagged and prediction.decision is Decision.FLAG
        ):
            return True, False
        return False, False

    def _auto_accepted(self, prediction: Prediction) -> bool:
        if prediction.decision is Decision.AUTO_ACCEPT:
            return True
        policy = self.catalog.decisions
        if not policy.auto_accept_suspended or prediction.category is None:
            return False
        nearest = prediction.neighbors[0].similarity if prediction.neighbors else -1.0
        unguarded = replace(policy, auto_accept_suspended=False)
        return (
            unguarded.decide(
                prediction.category, prediction.confidence, nearest, self.catalog.calibration
            )
            is Decision.AUTO_ACCEPT
        )

    def band(self) -> str:
        """The auto-accept band audits measure now: the model version and its calibration."""
        return f"{self.catalog.serving.version}@{self.catalog.calibration.fitted_at_ms}"

    def offer(self, prediction: Prediction, image: bytes, answer: bytes, caller: Caller) -> Offered:
        """Queue the answer if a person should see it. `answer` is the answer as served
        (bytes kept for the reviewer)."""
        if caller.skip_review or prediction.category is None:
            return Offered()
        queue, audit = self.wants(prediction)
        if not queue:
            return Offered()
        try:
            self.check_guard()
            return Offered(review_id=self._enqueue(prediction, image, answer, caller, audit))
        except Unavailable as exc:
            # The answer stands (it needs no store); the caller is told, and it is counted.
            with self._lock:
                self.unqueued += 1
            log.warning("answer not queued for review: %s", exc)
            return Offered(unqueued=str(exc))

    def _enqueue(
        self, prediction: Prediction, image: bytes, answer: bytes, caller: Caller, audit: bool
    ) -> str:
        assert prediction.category is not None
        return self.store.enqueue(
            NewReviewItem(
                image=image,
                answer=answer,
                decision=str(prediction.decision),
                top_category=prediction.category,
                model_version=prediction.model_version,
                request_id=caller.request_id,
                item_id=caller.item_id,
                metadata=dict(caller.metadata or {}),
                audit=audit,
                band=self.band() if audit else "",
            ),
            self.config.max_items,
            int(self.config.max_age_s * 1000),
        )

    def claim(
        self,
        reviewer: str,
        max_items: int = 1,
        *,
        category: str = "",
        decision: str = "",
        audit: bool | None = None,
        lease_s: float = 0,
        peek: bool = False,
    ) -> list[ReviewItem]:
        max_items = max_items or 1
        if not 1 <= max_items <= MAX_CLAIM:
            raise InvalidArgument(f"max_items must be between 1 and {MAX_CLAIM}, got {max_items}")
        if lease_s < 0:
            raise InvalidArgument(f"lease_seconds must be positive, got {lease_s}")
        self.store.expire(int(self.config.max_age_s * 1000))
        return self.store.claim(
            reviewer,
            max_items,
            int((lease_s or self.config.lease_s) * 1000),
            category=normalise_name(category),
            decision=decision,
            audit=audit,
            peek=peek,
        )

    # -- verdicts ------------------------------------------------------------------------

    def skip(self, review_id: str, reviewer: str) -> VerdictRecord:
        self._refuse_if_decided(review_id, "skip", "")
        self.store.take(review_id, reviewer, int(self.config.lease_s * 1000))
        self.store.skip(review_id, reviewer)
        return VerdictRecord(
            review_id=review_id,
            kind="skip",
            category="",
            reviewer=reviewer,
            at_ms=now_ms(),
            model_was_right=False,
            labelled=False,
            reference_id="",
            category_created=False,
            message="skipped: the item is back in the queue for someone else",
        )

    def decide(
        self,
        review_id: str,
        reviewer: str,
        category: str = "",
        *,
        none_of_these: bool = False,
        parent: str = "",
    ) -> VerdictRecord:
        """A verdict: `category` is the right one (an existing category), or none of the
        candidates is (`none_of_these`, optionally naming the category, created when it does
        not exist). Its effects (labelled photo, reference, new category) are idempotent and
        come before the verdict is recorded, so a crash in between loses nothing: the retry
        redoes them and records it."""
        category = category.strip()
        kind = "none" if none_of_these else "category"
        if category:
            category = category_name(category, "category")
        elif not none_of_these:
            raise InvalidArgument("a verdict names the right category, none of these, or skip")
        earlier = self._refuse_if_decided(review_id, kind, category)
        if earlier is not None:
            return earlier
        exists = bool(category) and self.catalog.has_category(category)
        if category and not exists and not none_of_these:
            raise NotFound(
                f"category {category!r} does not exist; pick an existing one, or answer "
                "'none of these' naming it to create it"
            )
        if category and not exists and not self.config.learn:
            raise FailedPrecondition(
                f"category {category!r} does not exist and this server does not learn from "
                "reviews (--learn-from-reviews false): create it first"
            )
        item = self.store.take(review_id, reviewer, int(self.config.lease_s * 1000))
        right = bool(category) and category == item.top_category
        unsure = item.decision != str(Decision.AUTO_ACCEPT)
        notes = ["stored as labelled traffic"]
        reference_id, created = "", False
        if category and self.config.learn and (not right or unsure):
            reference_id, created, note = self._learn(item, category, parent, reviewer, exists)
            notes.append(note)
        self.catalog.add_labelled(
            [(item.image, category or NONE_OF_THESE)], source=f"review by {reviewer}"
        )
        record = self.store.close(
            item,
            VerdictRecord(
                review_id=review_id,
                kind=kind,
                category=category,
                reviewer=reviewer,
                at_ms=now_ms(),
                model_was_right=right,
                labelled=True,
                reference_id=reference_id,
                category_created=created,
                message="; ".join(notes),
            ),
        )
        if item.audit:
            self.check_guard(force=True)
        return record

    def _learn(
        self, item: ReviewItem, category: str, parent: str, reviewer: str, exists: bool
    ) -> tuple[str, bool, str]:
        """Add the image as a reference of `category` (creating it if need be), with where it
        came from; returns (reference id, whether the category was created, what was done).
        An image that cannot be a reference (a speck, a sliver: any photo can be classified)
        is not added; the category is still created when the verdict names a new one."""
        provenance = {"source": "review", "reviewer": reviewer, "review_id": item.id}
        if item.item_id:
            provenance["item_id"] = item.item_id
        unfit = self.catalog.reference_problem(item.image)
        references = [] if unfit else [ReferenceInput(item.image, provenance)]
        reference_id, created = "", False
        warnings: tuple[str, ...] = ()
        if not exists:
            try:
                made = self.catalog.add_category(
                    category, parent or None, {"source": "review"}, references
                )
                reference_id = made.references[0].reference_id if references else ""
                created, warnings = True, made.warnings
            except AlreadyExists:  # made meanwhile, or by this verdict's earlier attempt
                pass
        if references and not created:
            added = self.catalog.add_references(category, references)
            reference_id = added.references[0].reference_id
        if unfit:
            note = f"not added as a reference: {unfit}"
            if created:
                note = f"created category {category!r}; {note}"
        elif created:
            note = f"created category {category!r} with this image"
        else:
            note = f"added as a reference of {category!r}"
        return reference_id, created, "; ".join([note, *warnings])

    def _refuse_if_decided(self, review_id: str, kind: str, category: str) -> VerdictRecord | None:
        """The earlier verdict when it is this one again (a retry); ALREADY_EXISTS when it
        differs."""
        earlier = self.store.verdict_of(review_id)
        if earlier is None:
            return None
        if kind != "skip" and earlier.kind == kind and earlier.category == category:
            return earlier
        said = f"{earlier.category!r}" if earlier.category else "none of these"
        raise AlreadyExists(
            f"review item {review_id!r} was already decided by {earlier.reviewer} ({said}); "
            "a verdict cannot be changed here: correct the catalogue instead"
        )

    # -- statistics and the guard --------------------------------------------------------

    def stats(self) -> ReviewStats:
        counts = self.store.counts()
        bound, band = self.catalog.bound, self.band()
        audit = audit_precision(
            counts.get(f"audit_reviewed:{band}"),
            counts.get(f"audit_right:{band}"),
            bound.precision,
            bound.level,
            self.config.audit_guard,
        )
        return ReviewStats(counts, audit, self.config)

    def check_guard(self, force: bool = False, every_s: float = 30.0) -> AuditPrecision | None:
        """Say so loudly when the audited band is below target, and with --audit-guard
        suspend auto-accepting until it holds again. At most every `every_s` unless
        forced (a new audit verdict)."""
        now = now_ms() / 1000
        if not force and now - self._guard_checked < every_s:
            return None
        self._guard_checked = now
        audit = self.stats().audit
        if audit.below_target:
            log.error(
                "the auto-accept band is below target: %d of %d audited answers right, lower "
                "bound %.3f < %.3f%s",
                audit.right,
                audit.reviewed,
                audit.lower,
                audit.target,
                "; auto-accepting stopped (--audit-guard)" if audit.guard_active else "",
            )
        policy = self.catalog.decisions
        if policy.auto_accept_suspended != audit.guard_active:
            self.catalog.decisions = replace(policy, auto_accept_suspended=audit.guard_active)
            if not audit.guard_active:
                log.warning("audit guard: the band holds again; auto-accepting resumed")
        return audit
