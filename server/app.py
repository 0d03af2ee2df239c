"""Wiring: open the store, load the model, build the index, serve gRPC, stop gracefully."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder import ArtifactError, DecodeLimits, Embedder, load_artifact, resolve_model
from embedder.artifact import artifact_version
from embedder.backends import available_cores
from embedder.registry import ModelRegistry
from embedder.text import TextTower, load_text_tower
from indexer.blobs import Blobs
from indexer.calibration import Bound
from indexer.decision import DecisionPolicy, Thresholds
from indexer.embedded import EmbeddedValkey, dropped_connection_retry
from indexer.index import IndexConfig
from indexer.review_store import ReviewStore
from indexer.store import BlobStoreMismatch, Store, bind_blobs
from indexer.vote import VoteConfig
from server.auth import AuthInterceptor, TokenTable, load_tokens
from server.catalog import Catalog, Limits
from server.drift import DriftMonitor
from server.follower import Follower
from server.interceptors import DefaultDeadlineInterceptor, Metadata, ObserveInterceptor
from server.metrics import Metrics
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from server.ratelimit import RateLimitInterceptor, TokenBuckets
from server.recalibrate import Recalibrator
from server.reindex import ModelOpener, ReindexConfig, Reindexer
from server.review import ReviewConfig, Reviews
from server.servicer import NearcatServicer
from server.serving import Batching, model_layout
from server.settings import Settings
from server.tls import server_credentials

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Nearcat"].full_name
# Health of the calls that write to the store: NOT_SERVING while the store does not answer
# (Classify and the other reads from memory go on, so "" and SERVICE_NAME stay SERVING).
WRITE_SERVICE_NAME = f"{SERVICE_NAME}/write"


@dataclass
class StoreHandle:
    """A connected store, and what to call it in the start-up banner."""

    client: redis.Redis
    description: str


def open_store(settings: Settings, started: ExitStack) -> StoreHandle:
    """The external Redis/Valkey at --redis-url, or an embedded Valkey under the data dir.

    Its clean-up joins `started` before the store starts, so a stop signal at any moment of
    the start still closes the embedded Valkey (a child process that would outlive us).
    """
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.store_timeout_s,
            socket_connect_timeout=settings.store_timeout_s,
            retry=dropped_connection_retry(),
        )
        started.callback(client.close)
        try:
            client.ping()
        except redis.RedisError as exc:
            raise StoreUnreachable(
                f"cannot reach the store at {settings.redis_url}: {exc}; check the URL and that "
                "the server is up, or leave --redis-url out to use the embedded one"
            ) from exc
        warn_if_not_durable(client)
        return StoreHandle(client, settings.redis_url)
    embedded = EmbeddedValkey(settings.data_dir, settings.store_timeout_s)
    started.callback(embedded.stop)  # a no-op for whatever did not start yet
    return StoreHandle(embedded.start(), f"embedded Valkey in {embedded.store_dir}")


def open_blob_store(settings: Settings, client: redis.Redis) -> Blobs:
    try:
        return bind_blobs(
            client, settings.key_prefix, settings.blob_url, str(settings.data_dir / "blobs")
        )
    except ValueError as exc:  # a malformed --blob-url, or s3:// without boto3
        raise BlobStoreMismatch(str(exc)) from exc


def tidy_blobs(store: Store) -> None:
    """Move images earlier versions kept in Redis to the blob store; delete bytes a crash
    left that no reference records."""
    moved = store.migrate_images()
    if moved:
        log.info(
            "moved %d images (references, labelled photos) from Redis to %s", moved, store.blobs.url
        )
    swept = store.sweep_blobs()
    if swept:
        log.info("deleted %d image files no reference records (left by a crash)", swept)


class StoreUnreachable(ConnectionError):
    """--redis-url does not answer at start-up."""


def warn_if_not_durable(client: redis.Redis) -> None:
    try:
        config = client.config_get("append*")
    except redis.ResponseError as exc:  # managed services and ACLs often refuse CONFIG
        log.warning(
            "cannot check the external store's durability (CONFIG GET refused: %s); make sure "
            "it runs with appendonly yes and appendfsync always",
            exc,
        )
        return
    if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
        log.warning(
            "the external store runs with appendonly=%s appendfsync=%s: acknowledged writes "
            "can be lost in a crash; set appendonly yes and appendfsync always for nearcat's "
            "durability promise",
            config.get("appendonly"),
            config.get("appendfsync"),
        )


def model_opener(settings: Settings, threads: int | None) -> ModelOpener:
    """How this server loads a model version: checksums verified, with its text tower, on
    `threads` cores each run (None: all; see server.serving.model_layout)."""
    limits = DecodeLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)

    def open_model(path: Path) -> tuple[Embedder, TextTower | None]:
        embedder = load_artifact(
            path, limits, threads, runtime=settings.runtime, device=settings.device
        )
        return embedder, load_text_tower(embedder)

    return open_model


def active_model(settings: Settings, store: Store, registry: ModelRegistry) -> Path:
    """The artifact to serve: the store's active model version. `--model` only seeds it on
    the first start against a store; afterwards the store wins (a restart keeps serving what
    the last reindex or rollback switched to), and `nearcat reindex` changes it."""
    models_dir = settings.data_dir / "models"
    recorded = store.get_model()
    if recorded is None:
        entry = registry.register(resolve_model(settings.model, models_dir))
        recorded = store.seed_model(entry.version)
        log.info(
            "model: first start, --model %s is the active version %s", settings.model, entry.version
        )
    elif not registry.has(recorded.active):
        # A replica with its own data dir, or a fresh one: --model may be the active version.
        artifact = resolve_model(settings.model, models_dir)
        if artifact_version(artifact) != recorded.active:
            raise ArtifactError(
                f"the store's active model version {recorded.active} is not in {registry.root}, "
                f"and --model {settings.model} is version {artifact_version(artifact)}: pass "
                f"--model pointing at the artifact of {recorded.active}"
            )
        registry.register(artifact)
    else:
        given = _version_if_known(settings.model, models_dir)
        if given is not None and given != recorded.active:
            log.warning(
                "model: serving %s, the store's active version; --model %s (version %s) is "
                "used only on a first start: switch to it with `nearcat reindex --model %s`",
                recorded.active,
                settings.model,
                given,
                settings.model,
            )
        else:
            log.info("model: serving %s, the store's active version", recorded.active)
    return registry.get(recorded.active).path


def _version_if_known(spec: str, models_dir: Path) -> str | None:
    """The version `spec` names if that can be read without building anything."""
    for path in (Path(spec), models_dir / spec):
        if path.is_dir():
            try:
                return artifact_version(path)
            except (ArtifactError, FileNotFoundError):
                return None
    return None


def build_catalog(
    settings: Settings,
    client: redis.Redis,
    on_batch: Callable[[int], None] | None = None,
    progress: bool = False,
) -> tuple[Catalog, Reindexer]:
    """The catalogue on the store's active model, its index loaded, and the reindexer (an
    interrupted reindex resumed). Interrupted half-way (a stop signal during the minutes of
    embedding), it closes what it started."""
    store = Store(
        client,
        settings.key_prefix,
        blobs=open_blob_store(settings, client),
        vector_dtype=settings.vector_dtype,
    )
    tidy_blobs(store)
    registry = ModelRegistry(settings.data_dir / "models" / "registry")
    workers, threads = model_layout(settings.model_workers, settings.device)
    open_model = model_opener(settings, threads)
    embedder, text = open_model(active_model(settings, store, registry))
    log.info("model: %d worker(s), %d thread(s) each", workers, threads or available_cores())
    catalog = Catalog(
        store,
        embedder,
        VoteConfig(settings.k, settings.votes_per_category, settings.vote_temperature),
        Limits(max_images_per_request=settings.max_images_per_request),
        Batching(settings.max_batch, settings.max_wait_ms, on_batch, workers),
        IndexConfig(
            settings.index_kind, settings.ivf_threshold, settings.ivf_nlist, settings.ivf_nprobe
        ),
        DecisionPolicy.load(
            Thresholds(flag=settings.flag),
            settings.thresholds_file,
            settings.auto_accept_uncalibrated,
        ),
        text,
        settings.prompt_weight,
        Bound(
            settings.auto_accept_precision,
            settings.auto_accept_confidence,
            settings.open_set_share,
        ),
    )
    try:
        catalog.load(progress=progress)
    except BaseException:
        catalog.close()
        raise
    reindexer = Reindexer(
        catalog,
        registry,
        settings.data_dir / "models",
        open_model,
        ReindexConfig(
            settings.reindex_max_accuracy_drop,
            settings.reindex_batch,
            settings.reindex_validation_examples,
            settings.reindex_group_by,
            settings.runtime,
            settings.device,
        ),
    )
    try:
        reindexer.resume()
    except BaseException:
        reindexer.close()
        catalog.close()
        raise
    return catalog, reindexer


def interceptors(
    settings: Settings, metrics: Metrics, tokens: TokenTable | None
) -> list[grpc.ServerInterceptor]:
    """Outermost first: observe every call (refusals too), auth, rate limit, deadline."""
    auth = AuthInterceptor(tokens) if tokens is not None else None

    def client_name(metadata: Metadata) -> str | None:
        client = auth.client(metadata) if auth else None
        return client.name if client else None

    chain: list[grpc.ServerInterceptor] = [ObserveInterceptor(metrics, client_name)]
    if auth:
        chain.append(auth)
    if settings.rate_limit > 0:
        buckets = TokenBuckets(settings.rate_limit, settings.rate_burst)
        chain.append(RateLimitInterceptor(buckets, client_name))
    if settings.default_deadline_s > 0:
        chain.append(DefaultDeadlineInterceptor(settings.default_deadline_s))
    return chain


def review_config(settings: Settings) -> ReviewConfig:
    return ReviewConfig(
        review_flagged=settings.review_flagged,
        audit_share=settings.audit_share,
        audit_guard=settings.audit_guard,
        max_items=settings.review_max_items,
        max_age_s=settings.review_max_age_s,
        lease_s=settings.review_lease_s,
        learn=settings.learn_from_reviews,
    )


class RunningServer:
    """A started gRPC server with its health service, ready to be stopped."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        metrics: Metrics | None = None,
        tokens: TokenTable | None = None,
        reindexer: Reindexer | None = None,
        credentials: grpc.ServerCredentials | None = None,
    ) -> None:
        self.metrics = metrics or Metrics(DriftMonitor(settings.drift_window))
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
            interceptors=interceptors(settings, self.metrics, tokens),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
                # gRPC shares a port with another process by default (SO_REUSEPORT), so a
                # second server on a busy port would start and silently take half its calls.
                ("grpc.so_reuseport", 0),
            ],
        )
        self.reviews = Reviews(catalog, ReviewStore(catalog.store), review_config(settings))
        pb_grpc.add_NearcatServicer_to_server(
            NearcatServicer(catalog, reindexer, self.reviews), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        address = f"{settings.host}:{settings.port}"
        try:
            if credentials is not None:
                self.port = self.server.add_secure_port(address, credentials)
            else:
                self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:  # how grpc says the address cannot be bound
            raise PortInUse(
                f"cannot listen on {address}: the port is in use or the address is not this "
                "machine's; stop the other server or choose another --port"
            ) from exc
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        catalog.store.breaker.on_change(self._store_available)

    def _store_available(self, available: bool) -> None:
        serving = health_pb2.HealthCheckResponse
        self.health.set(WRITE_SERVICE_NAME, serving.SERVING if available else serving.NOT_SERVING)

    def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish within grace seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


class PortInUse(OSError):
    """The server's address cannot be bound."""


def cli_command() -> str:
    """How the user can call `nearcat`: by name when on PATH, else by the venv's path."""
    if shutil.which("nearcat"):
        return "nearcat"
    return str(Path(sys.executable).parent / "nearcat")


def serve(settings: Settings, announce: Callable[[str], None] = print) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully.

    A signal during start-up (loading the model, embedding references) abandons the start;
    whatever was started by then is closed again, in reverse order.
    """
    stop_requested = threading.Event()
    serving = threading.Event()

    def request_stop(*_: object) -> None:
        # Signals often come twice (Ctrl-C under `make run` reaches nearcat, then make
        # forwards a SIGTERM): only the first signal during start-up interrupts it, and no
        # signal cuts a graceful stop short.
        if serving.is_set() or stop_requested.is_set():
            stop_requested.set()
            return
        stop_requested.set()
        raise KeyboardInterrupt  # still starting: abandon it

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    # Progress bars are for a person at a terminal; a log collector wants JSON lines only
    # (nor the text model's "Loading weights" bar).
    progress = sys.stderr.isatty()
    if not progress:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()

    # Files first: a typo should fail in a second, not after minutes of embedding.
    tokens = load_tokens(settings.auth_tokens_file, settings.auth_tokens)
    credentials = (
        server_credentials(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
        if settings.tls_cert and settings.tls_key
        else None
    )
    metrics = Metrics(DriftMonitor(settings.drift_window))
    with ExitStack() as started:  # closed in reverse order, however serve() ends
        store = open_store(settings, started)
        catalog, reindexer = build_catalog(
            settings, store.client, on_batch=metrics.observe_batch, progress=progress
        )
        started.callback(catalog.close)
        started.callback(reindexer.close)  # an unfinished reindex resumes at the next start
        started.callback(Follower(catalog, on_switch=reindexer.follow_switch).start().close)
        metrics.watch(catalog, reindexer)
        if settings.recalibrate_after_s > 0:
            started.callback(Recalibrator(catalog, settings.recalibrate_after_s).start().close)
        running = RunningServer(settings, catalog, metrics, tokens, reindexer, credentials)
        metrics.watch_reviews(running.reviews)
        started.callback(running.stop, 0)  # no-op after the graceful stop below
        serving.set()  # calls are taken from here on: a stop signal now stops gracefully
        status = catalog.status()
        address = f"{settings.host}:{running.port}"
        announce(f"nearcat listening on {address}")
        announce(
            f"  model {status.model_version}, {status.index_size} references in "
            f"{status.category_count} categories, store: {store.description}"
        )
        security = [
            ("mutual TLS" if settings.tls_client_ca else "TLS") if credentials else "no TLS",
            f"auth on ({len(tokens)} tokens)" if tokens else "no auth",
        ]
        if settings.rate_limit > 0:
            security.append(f"rate limit {settings.rate_limit:g} calls/s per client")
        announce("  " + ", ".join(security))
        if settings.metrics_port is not None:
            metrics_port, stop_metrics = metrics.serve_http(settings.host, settings.metrics_port)
            started.callback(stop_metrics)
            announce(f"  metrics on http://{settings.host}:{metrics_port}/metrics")
        if settings.console_port is not None:
            from server.console import start_console

            console_port, stop_console = start_console(settings, address)
            started.callback(stop_console)
            announce(f"  web console on http://{settings.host}:{console_port}/")
        nearcat = cli_command()
        announce(
            f"  try: {nearcat} import PHOTO_FOLDER --server {address}\n"
            f"       {nearcat} classify photo.jpg --server {address}\n"
            "  stop with Ctrl-C (in-flight calls finish first)"
        )
        # In short waits: a signal may land on another thread, and Python runs its handler
        # only when the main thread wakes; one long wait could sleep through a SIGTERM.
        while not stop_requested.wait(0.5):
            pass
        log.info("stopping: letting in-flight calls finish (up to %.0fs)", settings.grace_seconds)
        running.stop(settings.grace_seconds)
    log.info("stopped")
