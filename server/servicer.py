"""gRPC servicer: proto -> catalogue call -> proto. No domain logic lives here."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from indexer.calibration import Calibration
from indexer.decision import Decision
from indexer.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NearcatError,
    NotFound,
    Unavailable,
)
from indexer.index import Hit
from indexer.review_store import ReviewItem, VerdictRecord
from indexer.store import Category, Reference
from indexer.taxonomy import LevelScore
from server.call_context import CLIENT_NAME, CLIENT_ROLE, REQUEST_ID
from server.catalog import AddResult, Catalog, Prediction, ReferenceInput, ScoredCategory
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from server.ray_engine import RayOptions
from server.reindex import Reindexer, ReindexJob, ReindexState
from server.review import Caller, Offered, Reviews, ReviewStats

log = logging.getLogger(__name__)

STATUS_OF: dict[type[NearcatError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}

Response = TypeVar("Response")


def status_code(error: NearcatError) -> grpc.StatusCode:
    for kind in type(error).__mro__:
        if kind in STATUS_OF:
            return STATUS_OF[kind]
    return grpc.StatusCode.INTERNAL


def rpc(method: Callable[..., Response]) -> Callable[..., Response]:
    """Turn domain errors into gRPC statuses; log anything unexpected as INTERNAL."""

    @functools.wraps(method)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Response:
        try:
            return method(self, request, context)
        except NearcatError as exc:
            context.abort(status_code(exc), str(exc))
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


def deadline_of(context: grpc.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


DECISION: dict[Decision, pb.Decision] = {
    Decision.AUTO_ACCEPT: pb.AUTO_ACCEPT,
    Decision.FLAG: pb.FLAG,
    Decision.REVIEW: pb.REVIEW,
    Decision.UNKNOWN: pb.UNKNOWN,
}


def _category(category: Category, path: list[str]) -> pb.Category:
    return pb.Category(
        name=category.name,
        parent=category.parent or "",
        metadata=category.metadata,
        created_at_ms=category.created_at_ms,
        reference_count=category.reference_count,
        path=path,
        prompts=category.prompts,
    )


def _reference(reference: Reference) -> pb.Reference:
    return pb.Reference(
        id=reference.id,
        category=reference.category,
        sha256=reference.sha256,
        metadata=reference.metadata,
        created_at_ms=reference.created_at_ms,
        attributes=reference.attributes,
    )


def _scores(categories: list[ScoredCategory]) -> list[pb.CategoryScore]:
    return [pb.CategoryScore(category=c.category, score=c.score, path=c.path) for c in categories]


def _neighbors(hits: list[Hit]) -> list[pb.Neighbor]:
    return [
        pb.Neighbor(reference_id=h.reference_id, category=h.category, similarity=h.similarity)
        for h in hits
    ]


def _level(level: LevelScore) -> pb.LevelScore:
    return pb.LevelScore(depth=level.depth, category=level.category, score=level.score)


def _classification(prediction: Prediction) -> pb.Classification:
    return pb.Classification(
        categories=_scores(prediction.categories),
        neighbors=_neighbors(prediction.neighbors),
        decision=DECISION[prediction.decision],
        confidence=prediction.confidence,
        levels=[_level(level) for level in prediction.levels],
        confident_ancestor=(
            _level(prediction.confident_ancestor) if prediction.confident_ancestor else None
        ),
        attributes=[
            pb.AttributeScore(
                name=a.name,
                values=[pb.AttributeValue(value=v, probability=p) for v, p in a.values],
                voters=a.voters,
            )
            for a in prediction.attributes
        ],
    )


def calibration_message(calibration: Calibration, head_current: bool) -> pb.Calibration:
    return pb.Calibration(
        temperature=calibration.temperature,
        unknown_below=calibration.unknown_below,
        examples=calibration.examples,
        ece_before=calibration.ece_before or 0.0,
        ece_after=calibration.ece_after or 0.0,
        source=calibration.source,
        fitted_at_ms=calibration.fitted_at_ms,
        accuracy=calibration.extra.get("accuracy", 0.0),
        head_categories=len(calibration.head.categories) if calibration.head else 0,
        head_current=head_current,
        has_auto_accept=calibration.auto_accept_at is not None,
        auto_accept_threshold=calibration.auto_accept_at or 0.0,
        target_precision=calibration.bound.precision,
        bound_level=calibration.bound.level,
        precision_bound=calibration.precision_bound or 0.0,
        accepted_share=calibration.accepted_share,
        no_auto_accept_reason=calibration.reason,
        labelled_needed=calibration.labelled_needed,
        attributes=[
            pb.AttributeFit(
                name=name,
                temperature=fit["temperature"],
                examples=int(fit["examples"]),
                accuracy=fit["accuracy"],
                ece_before=fit["ece_before"],
                ece_after=fit["ece_after"],
                source=fit.get("source", ""),
            )
            for name, fit in sorted(calibration.attributes.items())
        ],
    )


def _references(request_references: Any) -> list[ReferenceInput]:
    return [
        ReferenceInput(image=r.image, metadata=dict(r.metadata), attributes=dict(r.attributes))
        for r in request_references
    ]


def _added(result: AddResult) -> list[pb.AddedReference]:
    return [
        pb.AddedReference(reference_id=r.reference_id, sha256=r.sha256, duplicate=r.duplicate)
        for r in result.references
    ]


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


REINDEX_STATE: dict[ReindexState, pb.ReindexState] = {
    ReindexState.RUNNING: pb.REINDEX_RUNNING,
    ReindexState.VALIDATING: pb.REINDEX_VALIDATING,
    ReindexState.DONE: pb.REINDEX_DONE,
    ReindexState.REFUSED: pb.REINDEX_REFUSED,
    ReindexState.FAILED: pb.REINDEX_FAILED,
}


def _reindex_status(job: ReindexJob | None, active: str) -> pb.ReindexStatus:
    if job is None:
        return pb.ReindexStatus(state=pb.REINDEX_STATE_NONE, active_version=active)
    return pb.ReindexStatus(
        state=REINDEX_STATE[job.state],
        target_version=job.target,
        previous_version=job.previous,
        active_version=active,
        done=job.done,
        total=job.total,
        resumed_from=job.resumed_from,
        started_at_ms=job.started_at_ms,
        finished_at_ms=job.finished_at_ms,
        message=job.message,
        validated=job.accuracy_after is not None,
        accuracy_before=job.accuracy_before or 0.0,
        accuracy_after=job.accuracy_after or 0.0,
        validation_examples=job.validation_examples,
        max_accuracy_drop=job.max_accuracy_drop,
        rollback=job.rollback,
        engine=job.engine,
    )


def _version_of(results: list[Prediction | NearcatError], catalog: Catalog) -> str:
    """The version that answered (every prediction of one call has the same)."""
    versions = {r.model_version for r in results if isinstance(r, Prediction)}
    return versions.pop() if len(versions) == 1 else catalog.serving.version


class NearcatServicer(pb_grpc.NearcatServicer):
    def __init__(
        self,
        catalog: Catalog,
        reindexer: Reindexer | None = None,
        reviews: Reviews | None = None,
    ) -> None:
        self.catalog = catalog
        self.reindexer = reindexer
        self.reviews = reviews

    def _reviews(self) -> Reviews:
        if self.reviews is None:
            raise FailedPrecondition("this server was started without a review queue")
        return self.reviews

    def _offer(
        self, result: Prediction, image: bytes, message: pb.Classification, caller: Caller
    ) -> Offered:
        """Queue the answer for a person when it needs one."""
        if self.reviews is None:
            return Offered()
        return self.reviews.offer(result, image, message.SerializeToString(), caller)

    def _reindexer(self) -> Reindexer:
        if self.reindexer is None:
            raise FailedPrecondition("this server was started without reindexing")
        return self.reindexer

    @rpc
    def Classify(
        self, request: pb.ClassifyRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyResponse:
        started = time.perf_counter()
        [result] = self.catalog.classify(
            [request.image],
            request.options.top_n,
            request.options.k,
            deadline_of(context),
            request.options.within,
        )
        if isinstance(result, NearcatError):
            raise result
        message = _classification(result)
        caller = Caller(
            request.item_id, dict(request.metadata), REQUEST_ID.get(), request.skip_review
        )
        offered = self._offer(result, request.image, message, caller)
        return pb.ClassifyResponse(
            classification=message,
            model_version=result.model_version,
            processing_ms=_elapsed_ms(started),
            item_id=request.item_id,
            metadata=request.metadata,
            review_id=offered.review_id,
            review_unqueued=offered.unqueued,
        )

    @rpc
    def ClassifyBatch(
        self, request: pb.ClassifyBatchRequest, context: grpc.ServicerContext
    ) -> pb.ClassifyBatchResponse:
        started = time.perf_counter()
        if request.images and request.items:
            raise InvalidArgument("send images or items, not both")
        inputs = list(request.items) or [pb.ClassifyItem(image=i) for i in request.images]
        results = self.catalog.classify(
            [i.image for i in inputs],
            request.options.top_n,
            request.options.k,
            deadline_of(context),
            request.options.within,
        )
        items = []
        for given, r in zip(inputs, results, strict=True):
            echo = {"item_id": given.item_id, "metadata": given.metadata}
            if isinstance(r, NearcatError):
                error = pb.ItemError(code=status_code(r).name, message=str(r))
                items.append(pb.ClassifyBatchItem(error=error, **echo))
                continue
            message = _classification(r)
            caller = Caller(
                given.item_id, dict(given.metadata), REQUEST_ID.get(), request.skip_review
            )
            offered = self._offer(r, given.image, message, caller)
            items.append(
                pb.ClassifyBatchItem(
                    classification=message,
                    review_id=offered.review_id,
                    review_unqueued=offered.unqueued,
                    **echo,
                )
            )
        return pb.ClassifyBatchResponse(
            results=items,
            model_version=_version_of(results, self.catalog),
            processing_ms=_elapsed_ms(started),
        )

    @rpc
    def AddCategory(
        self, request: pb.AddCategoryRequest, context: grpc.ServicerContext
    ) -> pb.AddCategoryResponse:
        result = self.catalog.add_category(
            request.name,
            request.parent or None,
            dict(request.metadata),
            _references(request.references),
            deadline_of(context),
            list(request.prompts),
        )
        # The response has no field for warnings (a name that differs only in case from
        # another category's): the catalogue logs them.
        return pb.AddCategoryResponse(
            category=_category(result.category, self.catalog.path(result.category.name)),
            references=_added(result),
        )

    @rpc
    def AddReferences(
        self, request: pb.AddReferencesRequest, context: grpc.ServicerContext
    ) -> pb.AddReferencesResponse:
        result = self.catalog.add_references(
            request.category, _references(request.references), deadline_of(context)
        )
        duplicates = sum(r.duplicate for r in result.references)
        return pb.AddReferencesResponse(
            category=_category(result.category, self.catalog.path(result.category.name)),
            references=_added(result),
            added=len(result.references) - duplicates,
            duplicates=duplicates,
        )

    @rpc
    def RemoveReferences(
        self, request: pb.RemoveReferencesRequest, context: grpc.ServicerContext
    ) -> pb.RemoveReferencesResponse:
        removed = self.catalog.remove_references(list(request.reference_ids))
        return pb.RemoveReferencesResponse(removed=removed)

    @rpc
    def DeleteCategory(
        self, request: pb.DeleteCategoryRequest, context: grpc.ServicerContext
    ) -> pb.DeleteCategoryResponse:
        removed = self.catalog.delete_category(request.name)
        return pb.DeleteCategoryResponse(references_removed=removed)

    @rpc
    def ListCategories(
        self, request: pb.ListCategoriesRequest, context: grpc.ServicerContext
    ) -> pb.ListCategoriesResponse:
        return pb.ListCategoriesResponse(
            categories=[
                _category(c, self.catalog.path(c.name)) for c in self.catalog.list_categories()
            ]
        )

    @rpc
    def GetCategory(
        self, request: pb.GetCategoryRequest, context: grpc.ServicerContext
    ) -> pb.GetCategoryResponse:
        category = self.catalog.get_category(request.name)
        references = (
            self.catalog.references(category.name, request.offset, request.limit)
            if request.include_references
            else []
        )
        return pb.GetCategoryResponse(
            category=_category(category, self.catalog.path(category.name)),
            references=[_reference(r) for r in references],
        )

    @rpc
    def GetStatus(
        self, request: pb.GetStatusRequest, context: grpc.ServicerContext
    ) -> pb.GetStatusResponse:
        status = self.catalog.status()
        return pb.GetStatusResponse(
            model_version=status.model_version,
            embedding_dim=status.embedding_dim,
            index_size=status.index_size,
            category_count=status.category_count,
            images_embedded=status.images_embedded,
            vectors_loaded_at_start=status.vectors_loaded_at_start,
            started_at_ms=status.started_at_ms,
            calibration=calibration_message(status.calibration, status.head_current),
            text_model=status.text_model,
            review=_review_stats(self.reviews.stats()) if self.reviews is not None else None,
            server_id=status.server_id,
            change_position=status.change_position,
            change_lag=status.change_lag,
            change_lag_seconds=status.change_lag_s,
        )

    @rpc
    def ZeroShot(
        self, request: pb.ZeroShotRequest, context: grpc.ServicerContext
    ) -> pb.ZeroShotResponse:
        answer = self.catalog.zero_shot(request.image, list(request.labels))
        return pb.ZeroShotResponse(
            labels=[pb.LabelScore(label=s.label, score=s.score) for s in answer.labels],
            model_version=answer.model_version,
        )

    @rpc
    def SearchByText(
        self, request: pb.SearchByTextRequest, context: grpc.ServicerContext
    ) -> pb.SearchByTextResponse:
        found = self.catalog.search_by_text(request.text, request.top_n, request.k)
        return pb.SearchByTextResponse(
            categories=_scores(found.categories),
            references=_neighbors(found.references),
            model_version=found.model_version,
        )

    @rpc
    def Calibrate(
        self, request: pb.CalibrateRequest, context: grpc.ServicerContext
    ) -> pb.CalibrateResponse:
        calibration = self.catalog.calibrate(request.group_by_metadata or None)
        return pb.CalibrateResponse(
            calibration=calibration_message(calibration, self.catalog.head_current())
        )

    @rpc
    def AddLabelled(
        self, request: pb.AddLabelledRequest, context: grpc.ServicerContext
    ) -> pb.AddLabelledResponse:
        added = self.catalog.add_labelled(
            [(item.image, item.category) for item in request.images],
            request.source,
            deadline_of(context),
            [dict(item.attributes) for item in request.images],
        )
        return pb.AddLabelledResponse(added=added, total=self.catalog.labelled_count())

    @rpc
    def Reindex(
        self, request: pb.ReindexRequest, context: grpc.ServicerContext
    ) -> pb.ReindexStatus:
        metrics = None
        if request.metrics_json:
            try:
                metrics = json.loads(request.metrics_json)
            except ValueError as exc:
                raise InvalidArgument(f"metrics_json is not JSON: {exc}") from exc
            if not isinstance(metrics, dict):
                raise InvalidArgument("metrics_json must be a JSON object")
        job = self._reindexer().start(
            request.model,
            metrics,
            request.max_accuracy_drop if request.HasField("max_accuracy_drop") else None,
            validate=not request.skip_validation,
            engine=request.engine,
            ray=RayOptions(
                request.ray_address,
                request.ray_workers,
                request.ray_cpus_per_worker if request.HasField("ray_cpus_per_worker") else None,
                request.ray_gpus_per_worker if request.HasField("ray_gpus_per_worker") else None,
            ),
        )
        return _reindex_status(job, self.catalog.serving.version)

    @rpc
    def GetReindexStatus(
        self, request: pb.GetReindexStatusRequest, context: grpc.ServicerContext
    ) -> pb.ReindexStatus:
        return _reindex_status(self._reindexer().status(), self.catalog.serving.version)

    @rpc
    def Rollback(
        self, request: pb.RollbackRequest, context: grpc.ServicerContext
    ) -> pb.ReindexStatus:
        return _reindex_status(self._reindexer().rollback(), self.catalog.serving.version)

    @rpc
    def UpdateCategory(
        self, request: pb.UpdateCategoryRequest, context: grpc.ServicerContext
    ) -> pb.UpdateCategoryResponse:
        category = self.catalog.update_category(
            request.name,
            new_name=request.new_name if request.HasField("new_name") else None,
            parent=request.parent if request.HasField("parent") else None,
            prompts=list(request.prompts) if request.set_prompts else None,
            metadata=dict(request.metadata) if request.set_metadata else None,
        )
        return pb.UpdateCategoryResponse(
            category=_category(category, self.catalog.path(category.name))
        )

    @rpc
    def GetReferenceImage(
        self, request: pb.GetReferenceImageRequest, context: grpc.ServicerContext
    ) -> pb.GetReferenceImageResponse:
        reference, image = self.catalog.reference_image(request.reference_id)
        return pb.GetReferenceImageResponse(image=image, reference=_reference(reference))

    @rpc
    def ClaimReviews(
        self, request: pb.ClaimReviewsRequest, context: grpc.ServicerContext
    ) -> pb.ClaimReviewsResponse:
        reviews = self._reviews()
        items = reviews.claim(
            _reviewer(request.reviewer),
            request.max_items,
            category=request.category,
            decision=_decision_filter(request.decision),
            audit=request.audit if request.HasField("audit") else None,
            lease_s=request.lease_seconds,
            peek=request.peek,
        )
        return pb.ClaimReviewsResponse(
            items=[_review_item(i) for i in items], pending=reviews.stats().counts.pending
        )

    @rpc
    def SubmitVerdict(
        self, request: pb.SubmitVerdictRequest, context: grpc.ServicerContext
    ) -> pb.SubmitVerdictResponse:
        reviews = self._reviews()
        reviewer = _reviewer(request.reviewer)
        which = request.WhichOneof("verdict")
        if which == "skip":
            record = reviews.skip(request.review_id, reviewer)
        elif which == "category":
            record = reviews.decide(request.review_id, reviewer, request.category)
        elif which == "none_of_these":
            none = request.none_of_these
            record = reviews.decide(
                request.review_id,
                reviewer,
                none.new_category,
                none_of_these=True,
                parent=none.parent,
            )
        else:
            raise InvalidArgument("a verdict needs one of: category, none_of_these, skip")
        return _verdict(record)

    @rpc
    def GetReviewStats(
        self, request: pb.GetReviewStatsRequest, context: grpc.ServicerContext
    ) -> pb.ReviewStats:
        return _review_stats(self._reviews().stats())

    @rpc
    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.WhoAmIResponse:
        name = CLIENT_NAME.get()
        if not name:
            return pb.WhoAmIResponse(name="anyone", role="admin", auth_enabled=False)
        return pb.WhoAmIResponse(name=name, role=CLIENT_ROLE.get(), auth_enabled=True)


DECISION_OF = {value: key for key, value in DECISION.items()}


def _decision_filter(value: int) -> str:
    if not value:
        return ""
    if value not in DECISION_OF:
        raise InvalidArgument(f"unknown decision {value}; use AUTO_ACCEPT, FLAG, REVIEW or UNKNOWN")
    return str(DECISION_OF[value])  # type: ignore[index]


def _reviewer(given: str) -> str:
    """The token's name; without auth, what the caller says (else 'anonymous')."""
    return CLIENT_NAME.get() or given.strip()[:100] or "anonymous"


def _review_item(item: ReviewItem) -> pb.ReviewItem:
    return pb.ReviewItem(
        id=item.id,
        image=item.image,
        classification=pb.Classification.FromString(item.answer),
        model_version=item.model_version,
        request_id=item.request_id,
        created_at_ms=item.created_at_ms,
        item_id=item.item_id,
        metadata=item.metadata,
        audit=item.audit,
        leased_to=item.leased_to,
        lease_until_ms=item.lease_until_ms,
    )


def _verdict(record: VerdictRecord) -> pb.SubmitVerdictResponse:
    return pb.SubmitVerdictResponse(
        review_id=record.review_id,
        category=record.category,
        model_was_right=record.model_was_right,
        labelled=record.labelled,
        reference_id=record.reference_id,
        category_created=record.category_created,
        message=record.message,
    )


def _review_stats(stats: ReviewStats) -> pb.ReviewStats:
    counts, audit = stats.counts, stats.audit
    return pb.ReviewStats(
        pending=counts.pending,
        leased=counts.leased,
        reviewed=counts.get("reviewed"),
        skipped=counts.get("skipped"),
        dropped_full=counts.get("dropped_full"),
        dropped_expired=counts.get("dropped_expired"),
        reviewed_per_day=[pb.DayCount(day=d, count=n) for d, n in counts.per_day],
        agreement=stats.agreement,
        audit=pb.AuditPrecision(
            reviewed=audit.reviewed,
            right=audit.right,
            precision=audit.precision,
            lower=audit.lower,
            upper=audit.upper,
            target=audit.target,
            needed=audit.needed,
            below_target=audit.below_target,
            guard_active=audit.guard_active,
        ),
        max_items=stats.config.max_items,
        audit_share=stats.config.audit_share,
    )
