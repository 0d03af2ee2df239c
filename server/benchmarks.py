"""Benchmarks behind `nearcat bench`: each returns a JSON-able dict and prints a table.

Numbers are only comparable on the same machine: every result records the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from indexer.ids import faiss_id, reference_id
from indexer.index import IndexConfig, VectorIndex


def machine() -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": _cpu_model(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[_format(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# -- index -----------------------------------------------------------------------------------


def catalogue_vectors(n: int, dim: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like a catalogue's embeddings, and held-out query photos.

    Categories (one per 1,000 vectors) are made of products (one per 10 vectors), each seen
    in several photos; a query is another photo of an indexed product. Uniformly random
    vectors would be a misleading benchmark: in high dimension all their distances are nearly
    equal, so no approximate index can find "the" neighbours.
    """
    rng = np.random.default_rng(seed)
    scale = 1 / np.sqrt(dim)  # noise of norm about 1 per unit of `scale`, in any dimension
    categories = rng.standard_normal((max(10, n // 1000), dim)).astype(np.float32) * scale
    products = categories[rng.integers(0, len(categories), max(1, n // 10))]
    products += rng.standard_normal(products.shape).astype(np.float32) * (0.7 * scale)

    def photos(count: int) -> np.ndarray:
        out = np.empty((count, dim), dtype=np.float32)
        for start in range(0, count, 100_000):  # in chunks, to bound peak memory at 1M
            stop = min(count, start + 100_000)
            chunk = products[rng.integers(0, len(products), stop - start)]
            chunk += rng.standard_normal(chunk.shape).astype(np.float32) * (0.35 * scale)
            out[start:stop] = chunk / np.linalg.norm(chunk, axis=1, keepdims=True)
        return out

    return photos(n), photos(queries)


def _ids_of(index: Any) -> Callable[[np.ndarray, int], np.ndarray]:
    return lambda queries, k: index.search(queries, k)[1]


def _search_all(
    search: Callable[[np.ndarray, int], np.ndarray], queries: np.ndarray, k: int, batch: int
) -> tuple[np.ndarray, float]:
    """Ids found for every query, searched `batch` at a time as the server does; queries/s."""
    found = []
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        found.append(search(queries[start : start + batch], k))
    return np.concatenate(found), len(queries) / (time.perf_counter() - started)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth, strict=True)]))


def _timed_build(make: Callable[[], Any]) -> tuple[Any, float, float]:
    """The built index, seconds taken, and resident memory it added (MB)."""
    before = rss_bytes()
    started = time.perf_counter()
    index = make()
    return index, time.perf_counter() - started, (rss_bytes() - before) / 2**20


def bench_index(
    sizes: Sequence[int],
    dim: int = 512,
    queries: int = 500,
    k: int = 10,
    batch: int = 32,
    nprobes: Sequence[int] = (8, 16, 32, 64),
    ef_searches: Sequence[int] = (32, 64, 128),
    hnsw_m: int = 32,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Flat vs IVF vs HNSW on clustered unit vectors: build time, memory, queries/s, recall@k
    against flat, and how long after `add` a new vector is found (flat and IVF are the
    service's own `VectorIndex`; HNSW is measured as FAISS's IndexHNSWFlat)."""
    rows: list[dict[str, Any]] = []
    for n in sizes:
        progress(f"index bench: {n:,} vectors of dimension {dim}")
        rows += _bench_size(n, dim, queries, k, batch, nprobes, ef_searches, hnsw_m)
    columns = ["size", "index", "params", "build_s", "memory_mb", "qps", "recall", "speedup"]
    print_table(rows, [*columns, "add_to_found_ms"])
    return {
        "bench": "index",
        "machine": machine(),
        "dim": dim,
        "queries": queries,
        "k": k,
        "query_batch": batch,
        "data": "synthetic catalogue: 1 category per 1,000 vectors, 1 product per 10; "
        "queries are other photos of indexed products (see catalogue_vectors)",
        "results": rows,
    }


def _bench_size(
    n: int,
    dim: int,
    queries: int,
    k: int,
    batch: int,
    nprobes: Sequence[int],
    ef_searches: Sequence[int],
    hnsw_m: int,
) -> list[dict[str, Any]]:
    data, query = catalogue_vectors(n, dim, queries, seed=n)
    reference_ids = [reference_id("bench", str(i)) for i in range(n)]
    position = {faiss_id(r): i for i, r in enumerate(reference_ids)}

    def positions(found: np.ndarray) -> np.ndarray:
        return np.array([[position.get(int(i), -1) for i in row] for row in found])

    rows: list[dict[str, Any]] = []
    flat_qps = 0.0
    truth = np.zeros((0, k), dtype=np.int64)
    for kind, sweep in (("flat", [0]), ("ivf", list(nprobes))):
        config = IndexConfig(kind)
        index, build_s, memory_mb = _timed_build(
            lambda: VectorIndex.build(dim, reference_ids, ["c"] * n, data, config, use_gpu=False)  # noqa: B023
        )
        add_ms = _add_to_found_ms(index, dim)
        raw = index._index
        for nprobe in sweep:
            if kind == "ivf":
                raw.nprobe = nprobe
            found, qps = _search_all(_ids_of(raw), query, k, batch)
            if kind == "flat":
                truth, flat_qps = positions(found), qps
            rows.append(
                {
                    "size": n,
                    "index": kind,
                    "params": f"nlist={raw.nlist} nprobe={nprobe}" if kind == "ivf" else "",
                    "build_s": build_s,
                    "memory_mb": memory_mb,
                    "qps": qps,
                    "recall": _recall(positions(found), truth),
                    "speedup": qps / flat_qps,
                    "add_to_found_ms": add_ms,
                }
            )
        del index, raw

    import faiss

    hnsw, build_s, memory_mb = _timed_build(lambda: _hnsw(faiss, data, hnsw_m))
    for ef in ef_searches:
        hnsw.hnsw.efSearch = ef
        found, qps = _search_all(_ids_of(hnsw), query, k, batch)
        rows.append(
            {
                "size": n,
                "index": "hnsw",
                "params": f"M={hnsw_m} efSearch={ef}",
                "build_s": build_s,
                "memory_mb": memory_mb,
                "qps": qps,
                "recall": _recall(found, truth),  # HNSW ids are positions already
                "speedup": qps / flat_qps,
            }
        )
    return rows


def _hnsw(faiss: Any, data: np.ndarray, m: int) -> Any:
    index = faiss.IndexHNSWFlat(data.shape[1], m, faiss.METRIC_INNER_PRODUCT)
    index.add(data)
    return index


def _add_to_found_ms(index: VectorIndex, dim: int) -> float:
    """Time from add() of a new vector until a search returns it as the nearest."""
    vector, _ = catalogue_vectors(1, dim, 0, seed=12345)
    new_id = reference_id("bench-new", "1")
    started = time.perf_counter()
    index.add([new_id], ["new"], vector)
    [[hit, *_]] = index.search(vector, 1)
    elapsed = (time.perf_counter() - started) * 1000
    if hit.reference_id != new_id:
        raise AssertionError("the vector just added was not found")
    return elapsed


# -- embed -----------------------------------------------------------------------------------


def gemm_gflops(
    size: int = 2048,
    rounds: int = 5,
    seconds: float = 1.0,
    device: str = "cpu",
    precision: str = "fp32",
) -> float:
    """Measured matrix-multiply speed (best round, as the model's runs are compared at their
    best too): the compute ceiling of this machine. On CUDA, float32 is true float32 (no
    TF32), and each round ends with a synchronisation."""
    import torch

    from embedder.model import TORCH_PRECISIONS

    dtype = TORCH_PRECISIONS[precision] or torch.float32
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    cuda = a.device.type == "cuda"
    allow_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        torch.mm(a, b)  # warm-up
        best = 0.0
        for _ in range(rounds):
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                torch.mm(a, b)
                runs += 1
                if cuda and runs % 10 == 0:
                    torch.cuda.synchronize()
            if cuda:
                torch.cuda.synchronize()
            best = max(best, 2 * size**3 * runs / (time.perf_counter() - started) / 1e9)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    return best


def gflop_per_image(artifact: Any) -> float:
    """FLOPs of one forward pass (multiply and add counted separately), from PyTorch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from embedder.model import load_network

    network, config, _ = load_network(artifact)
    size = config.preprocess.input_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops()) / 1e9


def _images_per_second(
    run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, seconds: float, rounds: int = 3
) -> tuple[float, float]:
    """(images/s of the best round, median ms per call) running `run` on the same batch.

    The best round, as for GEMM: on a shared machine the slow rounds measure the neighbours.
    """
    run(pixels)  # warm-up
    timings: list[float] = []
    best = 0.0
    for _ in range(rounds):
        this_round: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds / rounds or len(this_round) < 2:
            began = time.perf_counter()
            run(pixels)
            this_round.append(time.perf_counter() - began)
        best = max(best, len(pixels) * len(this_round) / sum(this_round))
        timings += this_round
    return best, float(np.median(timings) * 1000)


def _model_cpu_s_per_image(
    run: Callable[[np.ndarray], np.ndarray], pixels: np.ndarray, seconds: float
) -> float:
    """CPU seconds (this process, all its threads) the model alone spends per image."""
    run(pixels)  # warm-up
    images = 0
    cpu, started = time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        run(pixels)
        images += len(pixels)
    return (time.process_time() - cpu) / images


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads, not its children) process `pid` has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _gpu() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "multiprocessors": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


def _variants(runtime: str, device: str) -> list[dict[str, Any]]:
    """The configurations a runtime is measured in: on CUDA, PyTorch in each precision and
    memory layout; otherwise the serving configuration alone."""
    if runtime == "torch" and device == "cuda":
        return [
            {"precision": precision, "channels_last": channels_last}
            for precision in ("fp32", "fp16", "bf16")
            for channels_last in (False, True)
        ]
    return [{"precision": "fp32", "channels_last": runtime == "torch"}]


def _load_embedder(artifact: Any, runtime: str, device: str, variant: dict[str, Any]) -> Any:
    """The artifact's Embedder for one measured configuration; ValueError if unavailable."""
    from embedder import load_artifact
    from embedder.model import Embedder, TorchBackend, load_network

    if device == "cpu":
        return load_artifact(artifact, runtime=runtime)
    if runtime == "torch":
        network, config, version = load_network(artifact)
        return Embedder(TorchBackend(network, device=device, **variant), config, version)
    import onnxruntime as ort

    from embedder.onnx_backend import CUDA_PROVIDER, OnnxBackend

    if CUDA_PROVIDER not in ort.get_available_providers():
        raise ValueError(
            f"onnxruntime {ort.__version__} offers {ort.get_available_providers()}, no "
            f"{CUDA_PROVIDER} (that needs the onnxruntime-gpu package and its CUDA libraries)"
        )
    cpu = load_artifact(artifact, runtime="onnx")  # verifies the checksums
    backend = OnnxBackend(Path(artifact) / "model.onnx", providers=[CUDA_PROVIDER])
    backend.max_batch = max(backend.max_batch, 256)
    return Embedder(backend, cpu.config, cpu.version)


def bench_embed(
    model: str,
    models_dir: Any,
    batches: Sequence[int] = (1, 32),
    runtimes: Sequence[str] = ("torch", "onnx"),
    seconds: float = 5.0,
    device: str = "cpu",
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Model-only images/s per runtime and batch size, against measured GEMM speed.

    On `device` "cuda" PyTorch is measured in fp32, fp16 and bf16 autocast, each with and
    without channels_last, from host pixels to host vectors (what a server would pay);
    fp32 rows are compared with float32 GEMM, fp16/bf16 rows with bf16 GEMM. A runtime that
    cannot run there is listed under "not_measured" with the reason.
    """
    from embedder import resolve_model

    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    gemm: dict[str, float] = {}
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
        progress("measuring float32 and bf16 GEMM speed on the GPU")
        gemm["fp32"] = gemm_gflops(8192, device="cuda")
        gemm["bf16"] = gemm_gflops(8192, device="cuda", precision="bf16")
        gemm["fp16"] = gemm["bf16"]
    else:
        progress("measuring float32 GEMM speed")
        gemm["fp32"] = gemm_gflops()
    artifact = resolve_model(model, models_dir)
    gflop = gflop_per_image(artifact)
    rows: list[dict[str, Any]] = []
    not_measured: list[dict[str, str]] = []
    version = ""
    reference: np.ndarray | None = None
    for runtime in runtimes:
        for variant in _variants(runtime, device):
            try:
                embedder = _load_embedder(artifact, runtime, device, variant)
            except ValueError as exc:
                not_measured.append({"runtime": runtime, "device": device, "why": str(exc)})
                progress(f"{runtime} on {device}: not measured: {exc}")
                continue
            version = embedder.version
            size = embedder.config.preprocess.input_size
            pixels = np.random.default_rng(0).standard_normal((max(batches), 3, size, size))
            pixels = pixels.astype(np.float32)
            vectors = embedder.embed_pixels(pixels)
            if reference is None:
                reference = vectors  # the first configuration measured: fp32
            # how far a configuration's vectors are from fp32's (they share one index)
            agreement = float(np.min(np.sum(vectors * reference, axis=1)))
            for batch in batches:
                progress(f"{runtime} {device} {variant}, batch {batch}")
                run = embedder.embed_pixels
                rate, median_ms = _images_per_second(run, pixels[:batch], seconds)
                rows.append(
                    {
                        "runtime": runtime,
                        "device": device,
                        **variant,
                        "batch": batch,
                        "images_per_s": rate,
                        "ms_per_batch": median_ms,
                        "gflops": rate * gflop,
                        "compute_ratio": rate * gflop / gemm[variant["precision"]],
                        "min_cosine_vs_first": agreement,
                    }
                )
            del embedder
    gemm_text = ", ".join(f"{k} {v:,.0f}" for k, v in gemm.items() if k != "fp16")
    print(f"model {version}: {gflop:.2f} GFLOP per image; GEMM GFLOP/s: {gemm_text}")
    columns = ["runtime", "batch", "images_per_s", "ms_per_batch", "gflops", "compute_ratio"]
    if device == "cuda":
        columns[1:1] = ["precision", "channels_last"]
    print_table(rows, columns)
    for skipped in not_measured:
        print(f"not measured: {skipped['runtime']} on {device}: {skipped['why']}")
    return {
        "bench": "embed",
        "machine": machine(),
        **({"gpu": _gpu()} if device == "cuda" else {}),
        "device": device,
        "model": version,
        "gflop_per_image": gflop,
        "gemm_gflops": gemm["fp32"],
        **({"gemm_gflops_bf16": gemm["bf16"]} if "bf16" in gemm else {}),
        "results": rows,
        "not_measured": not_measured,
    }


# -- serve -----------------------------------------------------------------------------------


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


def _add_catalogue(stub: Any, references: Mapping[str, Sequence[bytes]]) -> None:
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
) -> dict[str, Any]:
    """End-to-end Classify throughput and latency of a real server, against the model-only
    speed of the same artifact on the same runtime and device, measured in the same run."""
    import tempfile

    from embedder import load_artifact, resolve_model
    from server.process import ServerProcess
    from server.proto.nearcat.v1 import nearcat_pb2 as pb

    artifact = resolve_model(model, models_dir)
    embedder = load_artifact(artifact, runtime=runtime, device=device)
    size = embedder.config.preprocess.input_size
    pixels = np.random.default_rng(0).standard_normal((32, 3, size, size)).astype(np.float32)
    progress("model-only speed (batch 32, batch 1)")
    before, _ = _images_per_second(embedder.embed_pixels, pixels, seconds=5)
    _, model_batch1_ms = _images_per_second(embedder.embed_pixels, pixels[:1], seconds=3)
    model_cpu = _model_cpu_s_per_image(embedder.embed_pixels, pixels, seconds=3)

    with tempfile.TemporaryDirectory(prefix="nearcat-bench-") as tmp:
        server = ServerProcess(
            Path(tmp) / "data",
            artifact,
            ["--runtime", runtime, "--device", device, *server_args],
        ).start()
        try:
            stub = server.stub()
            _add_catalogue(stub, references)
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
    after, _ = _images_per_second(embedder.embed_pixels, pixels, seconds=5)
    model_rate = max(before, after)
    version = embedder.version
    batch1 = _percentiles(single)
    result = {
        "bench": "serve",
        "machine": machine(),
        "model": version,
        "runtime": type(embedder.backend).__name__,
        "device": device,
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


# -- reindex ---------------------------------------------------------------------------------


def renamed_artifact(source: Path, out_dir: Path, name: str) -> Path:
    """`source` under another name: the same files (linked), so the same speed and vectors,
    but another version, which a reindex embeds from scratch. Each run of the reindex bench
    reindexes to a fresh one."""
    import json
    import shutil

    from embedder.model import CONFIG_FILE

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
    from embedder.model import artifact_version
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
            _add_catalogue(stub, references)
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
