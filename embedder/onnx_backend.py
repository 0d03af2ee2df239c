"""ONNX Runtime inference for an exported artifact: the serving path (torch is the fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from embedder.backends import available_cores
from embedder.errors import ArtifactError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def available_providers() -> list[str]:
    """The execution providers this onnxruntime build has (CUDA only with onnxruntime-gpu)."""
    return list(ort.get_available_providers())


def default_providers() -> list[str]:
    """CUDA first where onnxruntime-gpu offers it, the CPU always as the fallback."""
    if CUDA_PROVIDER in available_providers():
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return [CPU_PROVIDER]


def session_options(num_threads: int | None = None) -> ort.SessionOptions:
    """One op at a time, each spread over every core this process may use, fully optimised.

    A CNN is a chain of ops, so inter-op parallelism only adds thread hand-offs. Idle worker
    threads do not spin. EfficientNet-Lite0, 2 cores, batch 1: 7.6-8.3 ms spinning vs
    9.3-9.4 ms not when the cores are quiet, but 17-25 ms vs 11-16 ms beside one busy thread
    (as the server's image decoding is); batch 32 the same either way.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or available_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxBackend:
    """Runs `model.onnx` with ONNX Runtime: (n, 3, H, W) float32 -> (n, dim) unit vectors, and
    (n, semantic_dim) semantic vectors when the graph has the zero-shot head's output."""

    # Images per forward pass. Unlike eager PyTorch's, ORT's throughput does not drop with the
    # batch: EfficientNet-Lite0 on 2 quiet cores did 107-155 images/s in batches of 4,
    # 117-130 of 8, 121-142 of 16, 121-139 of 32 and 127-160 of 64.
    max_batch = 32

    def __init__(
        self,
        path: Path,
        num_threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        try:
            self.session = ort.InferenceSession(
                str(path),
                session_options(num_threads),
                providers=providers or default_providers(),
            )
        except Exception as exc:  # ORT's errors (InvalidProtobuf, Fail, ...) share no base
            raise ArtifactError(f"ONNX Runtime cannot load {path}: {exc}") from exc
        self._input = self.session.get_inputs()[0].name
        outputs = self.session.get_outputs()
        self._vectors = outputs[0].name
        # A model with a zero-shot head has a second output, its semantic vectors.
        self.semantic_dim = int(outputs[1].shape[1]) if len(outputs) > 1 else 0

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually got, in priority order."""
        return list(self.session.get_providers())

    def run(self, pixels: np.ndarray) -> np.ndarray:
        vectors: np.ndarray = self.session.run([self._vectors], {self._input: pixels})[0]
        return vectors

    def run_with_semantics(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.semantic_dim:
            raise ValueError("this ONNX model has no zero-shot head output")
        vectors, semantics = self.session.run(None, {self._input: pixels})
        return vectors, semantics
