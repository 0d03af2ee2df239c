"""Prometheus metrics of one server: calls, the model's batches, the index, predictions, drift.

Each server has its own `CollectorRegistry` (not prometheus_client's global one), so several
servers can live in one process, as they do in tests. `serve_http` exposes it at /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from indexer.errors import NearcatError
from server.drift import DriftMonitor
from server.proto.nearcat.v1 import nearcat_pb2 as pb

if TYPE_CHECKING:
    from server.catalog import Catalog
    from server.reindex import Reindexer
    from server.review import Reviews

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


class Metrics:
    """Every metric nearcat exports, registered in a registry of its own."""

    def __init__(self, drift: DriftMonitor | None = None) -> None:
        self.registry = CollectorRegistry()
        self.drift = drift or DriftMonitor()
        self.rpc_latency = Histogram(
            "nearcat_rpc_duration_seconds",
            "Time from the call's arrival to its answer, per RPC",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rpc_calls = Counter(
            "nearcat_rpc_calls",
            "Calls answered, per RPC and gRPC status code (errors: code != OK)",
            ["method", "code"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "nearcat_model_batch_size",
            "Images per model run (micro-batches of concurrent calls)",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "nearcat_predictions",
            "Classified images, per predicted (top) category",
            ["category"],
            registry=self.registry,
        )
        self.confidence = Histogram(
            "nearcat_prediction_confidence",
            "Score of the top category of each classified image",
            buckets=CONFIDENCE_BUCKETS,
            registry=self.registry,
        )
        self.decisions = Counter(
            "nearcat_decisions",
            "Classified images, per decision band (auto-accept, flag, review, unknown)",
            ["decision"],
            registry=self.registry,
        )
        self.registry.register(_DriftCollector(self.drift))

    def watch(self, catalog: Catalog, reindexer: Reindexer | None = None) -> None:
        """Export the catalogue's live figures (index size, model queue, reindex progress)
        at each scrape."""
        self.registry.register(_CatalogCollector(catalog, reindexer))

    def watch_reviews(self, reviews: Reviews) -> None:
        """Export the review queue and the audited precision of the auto-accept band."""
        self.registry.register(_ReviewCollector(reviews))

    def observe_batch(self, size: int) -> None:
        self.batch_size.observe(size)

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.rpc_latency.labels(method).observe(seconds)
        self.rpc_calls.labels(method, code).inc()

    def record_prediction(self, category: str, confidence: float, decision: str | None) -> None:
        """Count one classified image: its top category, its confidence, its decision band
        (None where the answer carries none); also feeds the drift monitor."""
        self.predictions.labels(category).inc()
        self.confidence.observe(confidence)
        if decision:
            self.decisions.labels(decision).inc()
        self.drift.observe(category, confidence)

    def record_response(self, response: Any) -> None:
        """Record the predictions in a Classify or ClassifyBatch answer (others: nothing)."""
        for category, confidence, decision in predictions_in(response):
            self.record_prediction(category, confidence, decision)

    def serve_http(self, host: str, port: int) -> tuple[int, Callable[[], None]]:
        """Serve /metrics on host:port (0: a free port); returns the port and a stop function."""
        httpd, thread = start_http_server(port, addr=host, registry=self.registry)

        def stop() -> None:
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)

        return int(httpd.server_port), stop


def predictions_in(response: Any) -> list[tuple[str, float, str | None]]:
    """(top category, its score, decision band or None) of each classified image."""
    if isinstance(response, pb.ClassifyResponse):
        classifications = [response.classification] if response.HasField("classification") else []
    elif isinstance(response, pb.ClassifyBatchResponse):
        classifications = [
            r.classification for r in response.results if r.HasField("classification")
        ]
    else:
        return []
    return [
        (c.categories[0].category, c.categories[0].score, decision_of(c))
        for c in classifications
        if c.categories
    ]


def decision_of(classification: Any) -> str | None:
    """The decision band of an answer, e.g. "auto_accept"; None when it has none."""
    if classification.decision == pb.DECISION_UNSPECIFIED:
        return None
    return str(pb.Decision.Name(classification.decision)).lower()


class _CatalogCollector(Collector):
    def __init__(self, catalog: Catalog, reindexer: Reindexer | None) -> None:
        self.catalog = catalog
        self.reindexer = reindexer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        serving, pending = self.catalog.serving, self.catalog.pending
        size = GaugeMetricFamily(
            "nearcat_index_size",
            "References in the index of each model version: the serving one, and the one a "
            "running reindex is building",
            labels=["model_version"],
        )
        size.add_metric([serving.version], len(serving.index))
        if pending is not None and pending.version != serving.version:
            size.add_metric([pending.version], len(pending.index))
        yield size
        yield GaugeMetricFamily(
            "nearcat_model_queue_depth",
            "Images waiting for the model worker",
            value=serving.batcher.queue_depth(),
        )
        try:
            lag = self.catalog.change_lag()
            yield GaugeMetricFamily(
                "nearcat_change_lag_entries",
                "Entries of the store's change stream (other servers' writes) not applied yet",
                value=lag["change_lag"],
            )
            yield GaugeMetricFamily(
                "nearcat_change_lag_seconds",
                "How long the oldest unapplied change-stream entry has waited",
                value=lag["change_lag_s"],
            )
        except NearcatError:  # the store away: no lag figures rather than a failed scrape
            pass
        job = self.reindexer.status() if self.reindexer is not None else None
        running = job is not None and job.unfinished
        yield GaugeMetricFamily(
            "nearcat_reindex_running", "1 while a reindex runs", value=1.0 if running else 0.0
        )
        progress = GaugeMetricFamily(
            "nearcat_reindex_references",
            "References of the running or last reindex: with a vector of the new version "
            "(done), and in all (total)",
            labels=["target_version", "kind"],
        )
        if job is not None:
            progress.add_metric([job.target, "done"], job.done)
            progress.add_metric([job.target, "total"], job.total)
        yield progress


class _ReviewCollector(Collector):
    def __init__(self, reviews: Reviews) -> None:
        self.reviews = reviews

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield CounterMetricFamily(
            "nearcat_review_unqueued",
            "Answers that should have gone to review but could not be queued (store away)",
            value=self.reviews.unqueued,
        )
        try:
            stats = self.reviews.stats()
        except NearcatError:  # the store is away: no figures rather than a failed scrape
            return
        yield GaugeMetricFamily(
            "nearcat_review_pending", "Review items waiting", value=stats.counts.pending
        )
        audit = stats.audit
        yield GaugeMetricFamily(
            "nearcat_audit_reviewed", "Audited AUTO_ACCEPT answers reviewed", value=audit.reviewed
        )
        precision = GaugeMetricFamily(
            "nearcat_audit_precision",
            "Precision of the auto-accept band on reviewed audits: the point estimate and its "
            "Clopper-Pearson bounds at the calibration's level",
            labels=["bound"],
        )
        precision.add_metric(["point"], audit.precision)
        precision.add_metric(["lower"], audit.lower)
        precision.add_metric(["upper"], audit.upper)
        precision.add_metric(["target"], audit.target)
        yield precision
        yield GaugeMetricFamily(
            "nearcat_audit_below_target",
            "1 when enough audits say the auto-accept band is below its target precision",
            value=1.0 if audit.below_target else 0.0,
        )


class _DriftCollector(Collector):
    def __init__(self, drift: DriftMonitor) -> None:
        self.drift = drift

    def collect(self) -> Iterator[GaugeMetricFamily]:
        report = self.drift.report()
        psi = GaugeMetricFamily(
            "nearcat_drift_psi",
            "Population stability index of recent predictions against the baseline window "
            "(0.1-0.25 moderate shift, > 0.25 large); 0 until both windows are full",
            labels=["distribution"],
        )
        psi.add_metric(["category"], report.category_psi if report.ready else 0.0)
        psi.add_metric(["confidence"], report.confidence_psi if report.ready else 0.0)
        yield psi
        yield GaugeMetricFamily(
            "nearcat_drift_ready",
            "1 when the baseline and recent windows are both full",
            value=1.0 if report.ready else 0.0,
        )
