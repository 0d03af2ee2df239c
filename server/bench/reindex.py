"""`nearcat bench reindex`: a real server re-embeds one catalogue in process and on Ray with 1
and 2 workers; images/s end to end."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ids import reference_id
from indexer.index import IndexConfig, VectorIndex
from server.bench.common import machine, print_table
from server.bench.serve import add_catalogue


def renamed_artifact(source: Path, out_dir: Path, name: str) -> Path:
    """`source` under another name: the same files (linked), so the same speed and vectors,
    but another version, which a reindex embeds from scratch. Each run of the reindex bench
    reindexes to a fresh one."""
    import json
    import shutil

    from embedder.artifact import CONFIG_FILE

    out_dir.mkdir(parents=True)
    for file in source.iterdir():
        if file.is_file() and file.name != CONFIG_FILE:
            try:
                os.link(file, out_dir / file.name)
            except OSError:
                shutil.copy2(file, out_dir / file.name)
    meta = json.loads((source / CONFIG_FILE).read_text())
    meta["name"] = name
    meta["version"] = f"{name}-{meta['weights_sha256'][:12]}"
    (out_dir / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def _timed_reindex(stub: Any, request: Any, poll_s: float = 0.05) -> dict[str, Any]:
    """One reindex, followed by polling: how long until every reference had its vector, and
    the rate from the first stored batch to the last (what the engine sustains once its
    workers are up)."""
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    began = time.perf_counter()
    status = stub.Reindex(request, timeout=60)
    first: tuple[float, int] | None = None
    embedded_at = None
    while status.state in (pb.REINDEX_RUNNING, pb.REINDEX_VALIDATING):
        now = time.perf_counter()
        if first is None and status.done > 0:
            first = (now, status.done)
        if embedded_at is None and status.total and status.done == status.total:
            embedded_at = now
        time.sleep(poll_s)
        status = stub.GetReindexStatus(pb.GetReindexStatusRequest(), timeout=10)
    if status.state != pb.REINDEX_DONE:
        raise RuntimeError(f"the reindex to {status.target_version} ended {status.message}")
    embedded_at = embedded_at or time.perf_counter()
    total = status.total
    seconds = embedded_at - began
    steady = None
    if first is not None and embedded_at > first[0] and total > first[1]:
        steady = (total - first[1]) / (embedded_at - first[0])
    return {
        "references": total,
        "seconds": seconds,
        "startup_s": (first[0] - began) if first else None,
        "images_per_s": total / seconds,
        "steady_images_per_s": steady,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, range and sample standard deviation; empty for no values (a catalogue that fit
    in one batch has no steady rate)."""
    if not values:
        return {}
    return {
        "mean": float(np.mean(values)),
        "min": float(np.min(values)),
        "max": float(np.max(values)),
        "stdev": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
    }


def bench_reindex(
    model: str,
    models_dir: Any,
    references: Mapping[str, Sequence[bytes]],
    ray_workers: Sequence[int] = (1, 2),
    ray_cpus_per_worker: float = 1.0,
    ray_address: str | None = None,
    repeats: int = 3,
    batch: int = 32,
    runtime: str = "auto",
    device: str = "auto",
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """A real server re-embeds the same catalogue with the same model (under a fresh
    version each run), in process and on Ray with each worker count, the engines taking
    turns in every repeat; images/s from the request to the last vector stored, and
    once the first batch is in. Without `ray_address` a Ray cluster is started here, once,
    as one would already run beside a server."""
    import tempfile

    from embedder import load_artifact, resolve_model
    from embedder.artifact import artifact_version
    from server.process import ServerProcess
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    artifact = resolve_model(model, models_dir)
    engines: list[tuple[str, dict[str, Any]]] = [("in-process", {})]
    if ray_workers:
        ray_address = ray_address or _start_ray()
    for workers in ray_workers:
        options: dict[str, Any] = {
            "engine": "ray",
            "ray_address": ray_address,
            "ray_workers": workers,
            "ray_cpus_per_worker": ray_cpus_per_worker,
        }
        engines.append((f"ray x{workers}", options))
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in engines}
    with tempfile.TemporaryDirectory(prefix="nearcat-bench-") as tmp:
        server = ServerProcess(
            Path(tmp) / "data",
            artifact,
            ["--runtime", runtime, "--device", device, "--reindex-batch", str(batch)],
        ).start()
        try:
            stub = server.stub()
            add_catalogue(stub, references)
            count = 0
            for repeat in range(repeats):
                for label, options in engines:
                    count += 1
                    target = renamed_artifact(
                        artifact, Path(tmp) / f"v{count}", f"{artifact.name}-bench{count}"
                    )
                    progress(f"repeat {repeat + 1}/{repeats}: {label}")
                    request = pb.ReindexRequest(model=str(target), skip_validation=True, **options)
                    runs[label].append(_timed_reindex(stub, request))
        finally:
            server.stop()
    progress(f"the store's side alone: put_vectors of {batch} vectors and the index add")
    dim = load_artifact(artifact, runtime="torch", device="cpu").dim
    write_rate = store_write_rate(dim, batch)
    summary = {
        label: {
            "images_per_s": _spread([r["images_per_s"] for r in done]),
            "steady_images_per_s": _spread(
                [r["steady_images_per_s"] for r in done if r["steady_images_per_s"]]
            ),
            "startup_s": _spread([r["startup_s"] for r in done if r["startup_s"] is not None]),
        }
        for label, done in runs.items()
    }
    print_table(
        [
            {
                "engine": label,
                "images_per_s": s["images_per_s"]["mean"],
                "stdev": s["images_per_s"]["stdev"],
                "steady_images_per_s": s["steady_images_per_s"].get("mean", ""),
                "steady_stdev": s["steady_images_per_s"].get("stdev", ""),
                "startup_s": s["startup_s"].get("mean", ""),
            }
            for label, s in summary.items()
        ],
        ["engine", "images_per_s", "stdev", "steady_images_per_s", "steady_stdev", "startup_s"],
    )
    print(f"storing alone (dim {dim}, batches of {batch}): {write_rate:,.0f} vectors/s")
    return {
        "bench": "reindex",
        "machine": machine(),
        "model": artifact_version(artifact),
        "runtime": runtime,
        "device": device,
        "references": sum(len(r) for r in references.values()),
        "reindex_batch": batch,
        "repeats": repeats,
        "ray_address": ray_address,
        "ray_cpus_per_worker": ray_cpus_per_worker,
        "store_write_vectors_per_s": write_rate,
        "summary": summary,
        "runs": runs,
    }


def store_write_rate(
    dim: int, batch: int, references: int = 4096, prefix: str = "bench-reindex"
) -> float:
    """Vectors/s that a reindex's storing alone sustains, whatever embeds: `put_vectors` of
    `batch` vectors (embedded Valkey, appendfsync always, as served) and the index add, one
    batch after another as `Catalog.fill` does. Past this, more workers add nothing."""
    import tempfile

    from indexer.blobs import DirBlobs
    from indexer.embedded import EmbeddedValkey
    from indexer.ids import image_sha256
    from indexer.store import NewReference, Store

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((references, dim)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="nearcat-bench-writes-") as tmp:
        valkey = EmbeddedValkey(Path(tmp) / "data", timeout_s=60)
        client = valkey.start()
        try:
            store = Store(client, prefix, blobs=DirBlobs(Path(tmp) / "blobs"))
            refs = []
            for i in range(references):
                image = rng.bytes(64)
                sha = image_sha256(image)
                refs.append(NewReference(reference_id("c", sha), sha, image, vectors[i]))
            store.create_category("c", None, {}, refs, "old")
            ids = [r.id for r in refs]
            index = VectorIndex(dim, IndexConfig())
            started = time.perf_counter()
            for start in range(0, references, batch):
                chunk = ids[start : start + batch]
                store.put_vectors(
                    "new", dict(zip(chunk, vectors[start : start + batch], strict=True))
                )
                index.add(chunk, ["c"] * len(chunk), vectors[start : start + batch])
            return references / (time.perf_counter() - started)
        finally:
            valkey.stop()


def _start_ray() -> str:
    """A Ray cluster on this machine for the bench's length (it ends with this process)."""
    from server.ray_engine import require_ray

    ray = require_ray()
    context = ray.init(include_dashboard=False, configure_logging=False, log_to_driver=False)
    return str(context.address_info["gcs_address"])
