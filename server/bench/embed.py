"""`nearcat bench embed`: the model alone, images/s per runtime and batch size, beside the
machine's GEMM speed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from server.bench.common import images_per_second, machine, print_table


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

    from embedder.backends import TORCH_PRECISIONS

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

    from embedder.artifact import load_network

    network, config, _ = load_network(artifact)
    size = config.preprocess.input_size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        network(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops()) / 1e9


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
    from embedder.artifact import load_network
    from embedder.backends import TorchBackend
    from embedder.model import Embedder

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
                rate, median_ms = images_per_second(run, pixels[:batch], seconds)
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
