"""Reindex: re-embed every reference with another model version, in the background of a
running server, validate, and switch atomically; also rollback to the previous version.

The job's state lives in the store (`reindex`), updated after every batch, and every batch's
vectors are stored (`vec:<version>`) before the next is embedded; so a server killed during
a reindex resumes it on its next start, embedding only references still without a vector of
the new version. Classification never waits for it: it runs beside the serving state with a
model worker of its own (server.serving), and the catalogue swaps the two in one step.

What embeds the references is the job's engine: that model worker, in the server's process
(the default), or model workers on a Ray cluster (server.ray_engine); either way the
server stores each batch, validates and switches, and a resumed job keeps its engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from embedder import ArtifactError, WeightsError
from embedder.artifact import resolve_model
from embedder.registry import ModelRegistry
from indexer.calibration import Bound, Calibration, LabelledExample, fit_calibration
from indexer.errors import FailedPrecondition, InvalidArgument, NearcatError
from indexer.head import ConfidenceHead
from server.ray_engine import RayEngine, RayOptions, require_ray

if TYPE_CHECKING:
    from embedder import Embedder
    from embedder.text import TextTower
    from server.catalog import Catalog
    from server.serving import Serving

log = logging.getLogger(__name__)

ModelOpener = Callable[[Path], "tuple[Embedder, TextTower | None]"]


class ReindexState(StrEnum):
    RUNNING = "running"  # embedding the references
    VALIDATING = "validating"  # both versions' top-1 on the same held-out examples
    DONE = "done"  # switched
    REFUSED = "refused"  # validation dropped past the margin: still on the previous version
    FAILED = "failed"  # an error; still on the previous version


UNFINISHED = (ReindexState.RUNNING, ReindexState.VALIDATING)

IN_PROCESS = "in-process"  # the engines a reindex can run on (ReindexRequest.engine)
RAY = "ray"


@dataclass(frozen=True)
class ReindexConfig:
    max_accuracy_drop: float = 0.02  # refuse to switch when accuracy falls by more
    batch_size: int = 32  # references embedded (and stored) per step
    validation_examples: int = 2000  # references sampled for a leave-one-shoot-out check
    group_by: str = "group"  # metadata key whose references must not vote for each other
    runtime: str = "auto"  # the server's --runtime and --device: Ray workers run the model
    device: str = "auto"  # as the server would (GPU workers by default on a cuda server)


@dataclass
class ReindexJob:
    """One reindex (or rollback), as the store records it."""

    target: str
    previous: str
    state: ReindexState = ReindexState.RUNNING
    done: int = 0
    total: int = 0
    resumed_from: int = 0  # references that had a vector of `target` when this run began
    started_at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    finished_at_ms: int = 0
    message: str = ""
    validate: bool = True
    max_accuracy_drop: float = 0.02
    accuracy_before: float | None = None
    accuracy_after: float | None = None
    validation_examples: int = 0
    rollback: bool = False
    # The model as it was asked for (an artifact directory or a registered name): what
    # another replica registers to follow the switch.
    source: str = ""
    ray: RayOptions | None = None  # embedded on Ray with these (resolved) options

    @property
    def engine(self) -> str:
        return RAY if self.ray is not None else IN_PROCESS

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "state": self.state.value}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReindexJob:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["state"] = ReindexState(values.get("state", "failed"))
        if isinstance(values.get("ray"), dict):
            values["ray"] = RayOptions(**values["ray"])
        return cls(**values)

    @property
    def unfinished(self) -> bool:
        return self.state in UNFINISHED


class Reindexer:
    """Runs at most one reindex at a time in a background thread of the server."""

    def __init__(
        self,
        catalog: Catalog,
        registry: ModelRegistry,
        models_dir: Path,
        open_model: ModelOpener,
        config: ReindexConfig | None = None,
    ) -> None:
        self.catalog = catalog
        self.store = catalog.store
        self.registry = registry
        self.models_dir = models_dir
        self.open_model = open_model
        self.config = config or ReindexConfig()
        self._lock = threading.Lock()
        self._job: ReindexJob | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- requests ------------------------------------------------------------------------

    def start(
        self,
        model: str,
        metrics: dict[str, Any] | None = None,
        max_accuracy_drop: float | None = None,
        validate: bool = True,
        engine: str = IN_PROCESS,
        ray: RayOptions | None = None,
    ) -> ReindexJob:
        """Begin re-embedding every reference with `model` (an artifact directory on the
        server, a registered model name, or a version in the registry), on `engine`."""
        if not model:
            raise InvalidArgument("no model given: pass an artifact directory or a model name")
        drop = self.config.max_accuracy_drop if max_accuracy_drop is None else max_accuracy_drop
        if not 0 <= drop <= 1:
            raise InvalidArgument(f"max_accuracy_drop must be between 0 and 1, got {drop}")
        on_ray = self._ray_options(engine, ray)
        with self._lock:
            self._refuse_if_running()  # at once, before copying or building anything
        # Outside the lock: registering may copy an artifact or build a named model, and
        # `status` must keep answering meanwhile.
        version = self._register(model, metrics)
        with self._lock:
            self._refuse_if_running()
            current = self.catalog.serving.version
            if version == current:
                raise FailedPrecondition(f"model {version} is already the one served")
            job = ReindexJob(
                version,
                current,
                validate=validate,
                max_accuracy_drop=drop,
                source=model,
                ray=on_ray,
            )
            self._launch(job)
            return job

    def rollback(self) -> ReindexJob:
        """Return to the previous model version (its vectors are still stored: only
        references added since are embedded); not validated."""
        with self._lock:
            self._refuse_if_running()
            recorded = self.store.get_model()
            if recorded is None or not recorded.previous:
                raise FailedPrecondition("there is no previous model version to roll back to")
            job = ReindexJob(
                recorded.previous, self.catalog.serving.version, validate=False, rollback=True
            )
            self._launch(job)
            return job

    def follow_switch(self, active: str) -> None:
        """Another server switched the model to `active` (a reindex or a rollback): switch
        here too. Its vectors are in the store, so this loads them (embedding only what was
        added here meanwhile); the model is registered from what the reindex was asked for,
        when this server's registry lacks it."""
        if active == self.catalog.serving.version:
            return
        if not self.registry.has(active):
            job = self.status()
            source = job.source if job is not None and job.target == active else ""
            if not source or self._register(source, None) != active:
                raise FailedPrecondition(
                    f"another server switched to model {active}, which this server cannot "
                    f"find ({source or 'no source recorded'}): give every replica the same "
                    "models (a registered name, or an artifact path all of them can read)"
                )
        log.info("another server switched to %s: following", active)
        embedder, text = self.open_model(self.registry.get(active).path)
        new = self.catalog.new_serving(embedder, text)
        try:
            self.catalog.fill(new)
            self.catalog.switch(new, commit=lambda: None)
        except BaseException:
            new.close()
            raise

    def status(self) -> ReindexJob | None:
        """The running job, else the last one the store recorded."""
        with self._lock:
            if self._job is not None:
                return self._job
        data = self.store.get_reindex()
        return ReindexJob.from_json(data) if data else None

    def resume(self) -> None:
        """At start-up: continue a reindex that a crash or a stop interrupted."""
        data = self.store.get_reindex()
        if not data:
            return
        job = ReindexJob.from_json(data)
        if not job.unfinished:
            return
        if job.target == self.catalog.serving.version:  # the switch was recorded
            job.state = ReindexState.DONE
            self.store.put_reindex(job.to_json())
            return
        log.info(
            "resuming the reindex to %s (%d of %d done, %s)",
            job.target,
            job.done,
            job.total,
            job.engine,
        )
        job.state = ReindexState.RUNNING
        with self._lock:
            self._launch(job)

    def close(self) -> None:
        """Stop after the current batch; an unfinished job resumes at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    # -- the job -------------------------------------------------------------------------

    def _ray_options(self, engine: str, ray: RayOptions | None) -> RayOptions | None:
        """The Ray options a job runs with, None for the in-process engine; refused at once
        when they cannot be used (an unknown engine, Ray options without Ray, no Ray)."""
        if engine in ("", IN_PROCESS):
            if ray is not None and ray != RayOptions():
                raise InvalidArgument(
                    "ray_address, ray_workers, ray_cpus_per_worker and ray_gpus_per_worker "
                    f"are for engine {RAY!r} only: add --engine {RAY}"
                )
            return None
        if engine != RAY:
            raise InvalidArgument(
                f"unknown reindex engine {engine!r}: give {IN_PROCESS!r} (the default) or {RAY!r}"
            )
        require_ray()
        return (ray or RayOptions()).resolved(self.config.device)

    def _refuse_if_running(self) -> None:
        job = self._job
        if job is not None and job.unfinished:
            raise FailedPrecondition(
                f"a reindex to {job.target} is {job.state.value} ({job.done} of {job.total} "
                "references); wait for it to end (`nearcat reindex --status`)"
            )

    def _register(self, model: str, metrics: dict[str, Any] | None) -> str:
        if self.registry.has(model):
            if metrics:
                self.registry.record_metrics(model, metrics)
            return model
        try:  # checksums verified here, before anything starts
            path = resolve_model(model, self.models_dir)
            return self.registry.register(path, {"eval": metrics} if metrics else None).version
        except (ValueError, FileNotFoundError, ArtifactError, WeightsError) as exc:
            raise InvalidArgument(f"cannot use model {model!r}: {exc}") from exc

    def _launch(self, job: ReindexJob) -> None:
        self._job = job
        self.store.put_reindex(job.to_json())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(job,), name="reindex", daemon=True)
        self._thread.start()

    def _save(self, job: ReindexJob) -> None:
        self.store.put_reindex(job.to_json())

    def _run(self, job: ReindexJob) -> None:
        pending: Serving | None = None
        try:
            embedder, text = self.open_model(self.registry.get(job.target).path)
            pending = self.catalog.new_serving(embedder, text)
            self.catalog.begin_reindex(pending)
            self._embed_all(job, pending)
            if self._stop.is_set():
                log.info("reindex to %s paused at %d of %d", job.target, job.done, job.total)
                self.catalog.end_reindex()
                pending.close()
                return
            if job.validate and not self._validate(job, pending):
                return
            # The store records "done" in the switch's own write; the job that `status` shows
            # says so only once the switch has happened, never before.
            finished = replace(
                job,
                state=ReindexState.DONE,
                finished_at_ms=int(time.time() * 1000),
                message=job.message or f"now serving {job.target}",
            )
            previous = self.catalog.serving.version
            self.catalog.switch(
                pending,
                commit=lambda: self.store.switch_model(job.target, previous, finished.to_json()),
            )
            job.state, job.finished_at_ms = finished.state, finished.finished_at_ms
            job.message = finished.message
            log.info("reindex to %s done: %s", job.target, job.message)
        except Exception as exc:
            log.exception("reindex to %s failed", job.target)
            job.state = ReindexState.FAILED
            job.finished_at_ms = int(time.time() * 1000)
            job.message = str(exc) if isinstance(exc, NearcatError | ArtifactError) else repr(exc)
            if pending is not None and self.catalog.pending is pending:
                self.catalog.end_reindex()
                pending.close()
            try:
                self._save(job)
            except NearcatError:
                log.warning("could not record the failed reindex: the store is unreachable")
        finally:
            with self._lock:
                if self._job is job:
                    self._job = None if job.unfinished else job

    def _embed_all(self, job: ReindexJob, pending: Serving) -> None:
        first = True

        def progress(done: int, total: int) -> None:
            nonlocal first
            if first:
                job.resumed_from, first = done, False
            job.done, job.total = done, total
            self._save(job)

        engine = None
        if job.ray is not None:
            artifact = self.registry.get(job.target).path
            engine = RayEngine(job.ray, artifact, self.config.runtime, self.store, self._stop)
        self.catalog.fill(pending, progress, self.config.batch_size, self._stop, engine)
        if not self._stop.is_set():
            self.catalog.calibrating.embed_labelled(pending)

    def _validate(self, job: ReindexJob, pending: Serving) -> bool:
        """Top-1 of the answer each version would serve, on the same honest examples
        (`Calibrating.honest_examples`: the labelled traffic when there is enough, else
        leave-one-shoot-out over the same sampled references); False (refused) when the new
        one is worse by more than the margin. The new version keeps the calibration fitted
        on its examples."""
        job.state = ReindexState.VALIDATING
        self._save(job)
        group_by = self.config.group_by or None
        examples = self.config.validation_examples
        self.catalog.sync_index(pending)  # adds and removes since it was filled
        try:
            before = self.catalog.calibrating.honest_examples(
                self.catalog.serving, group_by, examples
            )
            after = self.catalog.calibrating.honest_examples(pending, group_by, examples)
        except FailedPrecondition as exc:
            job.message = f"not validated ({exc})"
            return True
        fitted_after = _fitted(*after, self.catalog.bound)
        job.accuracy_before, job.accuracy_after = _accuracy(before[0]), _accuracy(after[0])
        job.validation_examples = sum(not e.open_set for e in after[0])
        self.registry.record_metrics(
            job.target,
            {
                "validation": {
                    "accuracy": job.accuracy_after,
                    "previous_version": job.previous,
                    "previous_accuracy": job.accuracy_before,
                    "examples": job.validation_examples,
                    "method": after[2] + "; the answer as served (indexer.answer.evidence)",
                    "at_ms": int(time.time() * 1000),
                }
            },
        )
        figures = (
            f"top-1 {job.accuracy_before:.1%} with {job.previous}, {job.accuracy_after:.1%} "
            f"with {job.target} ({after[2]})"
        )
        if job.accuracy_after < job.accuracy_before - job.max_accuracy_drop:
            # Dropped before the job says "refused": whoever reads that sees no pending state.
            self.catalog.end_reindex()
            pending.close()
            job.state = ReindexState.REFUSED
            job.finished_at_ms = int(time.time() * 1000)
            job.message = (
                f"refused to switch: {figures}, a drop of more than the allowed "
                f"{job.max_accuracy_drop:.1%}; still serving {job.previous}"
            )
            self._save(job)
            log.warning("reindex to %s %s", job.target, job.message)
            return False
        job.message = f"switched: {figures}"
        if fitted_after is not None:  # else too few to fit on: the new version goes uncalibrated
            self.catalog.calibrating.keep(pending, fitted_after, group_by)
        return True


def _fitted(
    examples: list[LabelledExample], head: ConfidenceHead | None, how: str, bound: Bound
) -> Calibration | None:
    """The calibration these examples give, None when they are too few."""
    try:
        return fit_calibration(examples, how, bound, head)
    except ValueError:
        return None


def _accuracy(examples: list[LabelledExample]) -> float:
    inside = [e for e in examples if not e.open_set]
    return sum(e.correct for e in inside) / len(inside) if inside else 0.0
