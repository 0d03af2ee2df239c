"""Wiring: open the store, load the model, build the index, serve gRPC, stop gracefully."""

from __future__ import annotations

import logging
import shutil
import signal
import sys
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from embedder import DecodeLimits, load_artifact, resolve_model
from embedder.text import load_text_tower
from indexer.decision import DecisionPolicy, Thresholds
from indexer.embedded import EmbeddedValkey
from indexer.index import IndexConfig
from indexer.store import Store
from indexer.vote import VoteConfig
from server.catalog import Batching, Catalog, Limits
from server.proto.nearcat.v1 import nearcat_pb2 as pb
from server.proto.nearcat.v1 import nearcat_pb2_grpc as pb_grpc
from server.servicer import NearcatServicer
from server.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Nearcat"].full_name


@dataclass
class StoreHandle:
    """A connected store and how to let go of it."""

    client: redis.Redis
    description: str
    close: Callable[[], None]


def open_store(settings: Settings) -> StoreHandle:
    """The external Redis/Valkey at --redis-url, or an embedded Valkey under the data dir."""
    if settings.redis_url:
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10.0, socket_connect_timeout=3.0
        )
        client.ping()
        warn_if_not_durable(client)
        return StoreHandle(client, settings.redis_url, client.close)
    embedded = EmbeddedValkey(settings.data_dir)
    client = embedded.start()
    return StoreHandle(client, f"embedded Valkey in {embedded.store_dir}", embedded.stop)


def warn_if_not_durable(client: redis.Redis) -> None:
    config = client.config_get("append*")
    if config.get("appendonly") != "yes" or config.get("appendfsync") != "always":
        log.warning(
            "the external store runs with appendonly=%s appendfsync=%s: acknowledged writes "
            "can be lost in a crash; set appendonly yes and appendfsync always for nearcat's "
            "durability promise",
            config.get("appendonly"),
            config.get("appendfsync"),
        )


def build_catalog(settings: Settings, client: redis.Redis) -> Catalog:
    limits = DecodeLimits(max_bytes=settings.max_image_bytes, max_pixels=settings.max_image_pixels)
    artifact = resolve_model(settings.model, settings.data_dir / "models")
    embedder = load_artifact(artifact, limits=limits, runtime=settings.runtime)
    catalog = Catalog(
        Store(client, settings.key_prefix),
        embedder,
        VoteConfig(settings.k, settings.votes_per_category, settings.vote_temperature),
        Limits(max_images_per_request=settings.max_images_per_request),
        Batching(settings.max_batch, settings.max_wait_ms),
        IndexConfig(
            settings.index_kind, settings.ivf_threshold, settings.ivf_nlist, settings.ivf_nprobe
        ),
        DecisionPolicy.load(
            Thresholds(settings.auto_accept, settings.flag), settings.thresholds_file
        ),
        load_text_tower(embedder),
        settings.prompt_weight,
    )
    catalog.load(progress=True)
    return catalog


class RunningServer:
    """A started gRPC server with its health service, ready to be stopped."""

    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.health = health.HealthServicer()
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="rpc"),
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", settings.max_message_bytes),
            ],
        )
        pb_grpc.add_NearcatServicer_to_server(NearcatServicer(catalog), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(f"{settings.host}:{settings.port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {settings.host}:{settings.port}: is it in use?")
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace: float) -> None:
        """Refuse new calls, let in-flight ones finish within grace seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()


def cli_command() -> str:
    """How the user can call `nearcat`: by name when on PATH, else by the venv's path."""
    if shutil.which("nearcat"):
        return "nearcat"
    return str(Path(sys.executable).parent / "nearcat")


def serve(settings: Settings, announce: Callable[[str], None] = print) -> None:
    """Run until SIGTERM or SIGINT, then stop gracefully."""
    stop_requested = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop_requested.set())

    store = open_store(settings)
    try:
        catalog = build_catalog(settings, store.client)
        running = RunningServer(settings, catalog)
        status = catalog.status()
        address = f"{settings.host}:{running.port}"
        announce(f"nearcat listening on {address}")
        announce(
            f"  model {status.model_version}, {status.index_size} references in "
            f"{status.category_count} categories, store: {store.description}"
        )
        nearcat = cli_command()
        announce(
            f"  try: {nearcat} import PHOTO_FOLDER --server {address}\n"
            f"       {nearcat} classify photo.jpg --server {address}\n"
            "  stop with Ctrl-C (in-flight calls finish first)"
        )
        stop_requested.wait()
        log.info("stopping: letting in-flight calls finish (up to %.0fs)", settings.grace_seconds)
        running.stop(settings.grace_seconds)
        catalog.close()
    finally:
        store.close()
    log.info("stopped")
