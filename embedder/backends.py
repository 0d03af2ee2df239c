"""What runs the network: the Backend protocol the Embedder calls, and PyTorch's
implementation of it (ONNX Runtime's is embedder.onnx_backend)."""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from embedder.network import EmbeddingNetwork


class Backend(Protocol):
    """Runs the network: (n, 3, H, W) float32 pixels -> (n, dim) float32 unit vectors.

    `max_batch` is the chunk size the runtime is fastest with; the Embedder splits larger
    batches into chunks of it.
    """

    max_batch: int

    def run(self, pixels: np.ndarray) -> np.ndarray: ...


TORCH_PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


class SemanticBackend(Backend, Protocol):
    """A backend that also runs the zero-shot head (TorchBackend, OnnxBackend)."""

    def run_with_semantics(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectors and the zero-shot head's semantic vectors, from one forward pass."""
        ...


class TorchBackend:
    """PyTorch eager inference: eval mode, channels_last, one thread per available core.

    On a CUDA `device` the network runs there (pixels copied in, vectors copied back), in
    float32 or under autocast to `precision` "fp16"/"bf16"; the vectors are float32 always.
    """

    # On 2 cores EfficientNet-Lite0 does about 48-66 images/s in chunks of 4 but 31-33 in one
    # forward of 32. A GPU wants whole batches.
    max_batch = 4
    CUDA_MAX_BATCH = 256

    def __init__(
        self,
        network: nn.Module,
        num_threads: int | None = None,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
    ):
        if precision not in TORCH_PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(TORCH_PRECISIONS)}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was asked for, but PyTorch sees no CUDA GPU")
        torch.set_num_threads(num_threads or available_cores())
        self.device = torch.device(device)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.network = network.eval().to(self.device).to(memory_format=self.memory_format)
        self.network.requires_grad_(False)
        self.autocast_dtype = TORCH_PRECISIONS[precision]
        if self.device.type == "cuda":
            self.max_batch = self.CUDA_MAX_BATCH

    def run(self, pixels: np.ndarray) -> np.ndarray:
        vectors: np.ndarray = self._forward(pixels, self.network)[0]
        return vectors

    def run_with_semantics(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(self.network, EmbeddingNetwork) or self.network.semantic is None:
            raise ValueError("this network has no zero-shot head")
        vectors, semantics = self._forward(pixels, self.network.forward_with_semantics)
        return vectors, semantics

    def _forward(self, pixels: np.ndarray, forward: Any) -> list[np.ndarray]:
        """`forward` on the device, in its memory format and precision; float32 numpy out."""
        with torch.inference_mode():
            batch = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            batch = batch.contiguous(memory_format=self.memory_format)
            with torch.autocast(
                self.device.type,
                dtype=self.autocast_dtype,
                enabled=self.autocast_dtype is not None,
            ):
                out = forward(batch)
        outputs = out if isinstance(out, tuple) else (out,)
        return [t.float().cpu().numpy() for t in outputs]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
