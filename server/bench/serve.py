"""`nearcat bench serve`: a real server's Classify throughput and latency under concurrent
clients, against the model-only speed measured in the same run, and the server's efficiency."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.common import (
    images_per_second,
    machine,
    model_cpu_s_per_image,
    print_table,
    process_cpu_s,
)


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    if not latencies_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {"p50_ms": float(p50), "p95_ms": float(p95), "p99_ms": float(p99)}


def _drive(
    stub: Any, images: Sequence[bytes], clients: int, seconds: float, images_per_call: int = 1
) -> dict[str, Any]:
    """`clients` threads calling back to back for `seconds`: Classify with one image, or
    ClassifyBatch with `images_per_call` (as a catalogue service sending a burst would)."""
    import threading

    import grpc

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    def one(image: bytes) -> Callable[[], int]:
        request = pb.ClassifyRequest(image=image)

        def call() -> int:
            stub.Classify(request, timeout=30)
            return 0  # a bad image raises

        return call

    def many(batch: list[bytes]) -> Callable[[], int]:
        request = pb.ClassifyBatchRequest(images=batch)

        def call() -> int:
            response = stub.ClassifyBatch(request, timeout=30)
            return sum(item.HasField("error") for item in response.results)

        return call

    if images_per_call == 1:
        calls = [one(image) for image in images]
    else:
        calls = [
            many([images[(start + j) % len(images)] for j in range(images_per_call)])
            for start in range(0, len(images), images_per_call)
        ]
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []  # calls that failed, by gRPC status
    image_errors: list[int] = []  # images of a ClassifyBatch that got their own error
    stop_at = time.perf_counter() + seconds

    def client(number: int) -> None:
        i = number
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            try:
                failed = calls[i % len(calls)]()
            except grpc.RpcError as exc:
                errors.append(exc.code().name)
            else:
                latencies[number].append((time.perf_counter() - began) * 1000)
                if failed:
                    image_errors.append(failed)
            i += clients

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    done = [ms for per_client in latencies for ms in per_client]
    return {
        "clients": clients,
        "images_per_call": images_per_call,
        "seconds": elapsed,
        "requests": len(done),
        "errors": len(errors),
        "error_codes": sorted(set(errors)),
        "image_errors": sum(image_errors),
        # Classified images: an image that got its own error in a batch does not count.
        "images_per_s": (len(done) * images_per_call - sum(image_errors)) / elapsed,
        **_percentiles(done),
    }


def add_catalogue(stub: Any, references: Mapping[str, Sequence[bytes]]) -> None:
    """One category per entry, with its reference images."""
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    for name, refs in references.items():
        stub.AddCategory(
            pb.AddCategoryRequest(name=name, references=[pb.ReferenceImage(image=r) for r in refs]),
            timeout=300,
        )


def _calibrate(stub: Any) -> int:
    """Calibrate, as a catalogue is after `nearcat import`, so answers blend in the head; the
    head's categories, 0 when there are too few references to calibrate."""
    import grpc

    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    try:
        fitted = stub.Calibrate(pb.CalibrateRequest(), timeout=300).calibration
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
        return 0
    return int(fitted.head_categories)


def bench_serve(
    model: str,
    models_dir: Any,
    images: Sequence[bytes],
    references: Mapping[str, Sequence[bytes]],
    clients: int = 8,
    seconds: float = 20.0,
    latency_calls: int = 100,
    server_args: Sequence[str] = (),
    progress: Callable[[str], None] = print,
    runtime: str = "auto",
    device: str = "auto",
    images_per_call: int = 1,
    model_workers: int = 0,
) -> dict[str, Any]:
    """End-to-end Classify throughput and latency of a real server, against the model-only
    speed of the same artifact on the same runtime and device, run the way the server runs it
    (`model_workers` side by side, server.serving.model_layout), measured in the same run."""
    import tempfile

    from embedder import load_artifact, resolve_model
    from embedder.backends import available_cores
    from server.batcher import MicroBatcher
    from server.process import ServerProcess
    from server.proto.nearcat.v1 import nearcat_pb2 as pb
    from server.serving import model_layout

    artifact = resolve_model(model, models_dir)
    workers, threads = model_layout(model_workers, device)
    embedder = load_artifact(artifact, num_threads=threads, runtime=runtime, device=device)
    size = embedder.config.preprocess.input_size
    pixels = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)
    progress(f"model-only speed (batch 32 over {workers} worker(s), batch 1)")
    # The server's own batcher, alone: a batch of 32 shared among its workers as it would be.
    model_only = MicroBatcher(embedder.embed_pixels, max_batch=32, max_wait_ms=0, workers=workers)
    before, _ = images_per_second(model_only.run, pixels, seconds=5)
    _, model_batch1_ms = images_per_second(embedder.embed_pixels, pixels[:1], seconds=3)
    model_cpu = model_cpu_s_per_image(model_only.run, pixels, seconds=3)

    with tempfile.TemporaryDirectory(prefix="nearcat-bench-") as tmp:
        server = ServerProcess(
            Path(tmp) / "data",
            artifact,
            [
                *("--runtime", runtime, "--device", device),
                *("--model-workers", str(model_workers)),
                *server_args,
            ],
        ).start()
        try:
            stub = server.stub()
            add_catalogue(stub, references)
            head_categories = _calibrate(stub)
            _drive(stub, images, clients, 2, images_per_call)  # warm-up
            progress(
                f"{clients} concurrent clients, {images_per_call} image(s) per call, "
                f"for {seconds:.0f} s"
            )
            assert server.process is not None
            cpu_before = process_cpu_s(server.process.pid)
            load = _drive(stub, images, clients, seconds, images_per_call)
            server_cpu = process_cpu_s(server.process.pid) - cpu_before
            classified = load["images_per_s"] * load["seconds"]
            progress(f"1 client, {latency_calls} calls")
            single = []
            for i in range(latency_calls):
                began = time.perf_counter()
                stub.Classify(pb.ClassifyRequest(image=images[i % len(images)]), timeout=30)
                single.append((time.perf_counter() - began) * 1000)
        finally:
            server.stop()
    progress("model-only speed again (the best of before and after counts)")
    after, _ = images_per_second(model_only.run, pixels, seconds=5)
    model_only.close()
    model_rate = max(before, after)
    version = embedder.version
    batch1 = _percentiles(single)
    result = {
        "bench": "serve",
        "machine": machine(),
        "model": version,
        "runtime": type(embedder.backend).__name__,
        "device": device,
        "model_workers": workers,
        "model_threads_each": threads or available_cores(),
        "references": sum(len(r) for r in references.values()),
        "head_categories": head_categories,
        "model_only_images_per_s_batch32": model_rate,
        "model_only_images_per_s_batch32_before_after": [before, after],
        "model_only_ms_batch1": model_batch1_ms,
        "concurrent": load,
        "e2e_ratio": load["images_per_s"] / model_rate,
        # The server's own cost, apart from the clients sharing its cores: the model's CPU
        # time per image over the server process's under the same load (1.0: nothing but
        # the model; decoding, batching, search, voting and gRPC make up the rest).
        "model_cpu_ms_per_image": model_cpu * 1000,
        "server_cpu_ms_per_image": server_cpu / classified * 1000 if classified else None,
        "server_efficiency": model_cpu * classified / server_cpu if server_cpu else None,
        "batch1": batch1,
        "batch1_p50_over_model_ms": batch1["p50_ms"] - model_batch1_ms,
    }
    print_table(
        [
            {"run": f"{clients} clients x {images_per_call} image(s)", **load},
            {"run": "1 client", "clients": 1, "requests": len(single), **batch1},
        ],
        ["run", "requests", "errors", "images_per_s", "p50_ms", "p95_ms", "p99_ms"],
    )
    print(
        f"model only: {model_rate:.0f} images/s at batch 32, {model_batch1_ms:.1f} ms at batch 1; "
        f"e2e_ratio {result['e2e_ratio']:.2f}; "
        f"server efficiency {result['server_efficiency'] or float('nan'):.2f}; "
        f"batch-1 p50 is model + {result['batch1_p50_over_model_ms']:.1f} ms"
    )
    return result
