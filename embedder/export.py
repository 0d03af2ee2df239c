"""Export an artifact's network to ONNX, checked against PyTorch on decoded images.

The whole `EmbeddingNetwork` (backbone, projection head, L2 norm) becomes `model.onnx` with a
dynamic batch axis. Before it joins the artifact, `onnx.checker` must pass and ONNX Runtime
must agree with PyTorch on real decoded images (cosine >= MIN_COSINE per image). Its sha256
goes into config.json, and `load_artifact` verifies it before serving it with ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image, ImageDraw, ImageFilter
from timm.layers import Conv2dSame
from torch import nn

from embedder.artifact import CONFIG_FILE, ONNX_FILE, _read_artifact_config, _sha256, load_network
from embedder.atomic import FILE_MODE, exclusive, fsync_dir, replace_text
from embedder.backends import TorchBackend
from embedder.config import ModelConfig
from embedder.images import ImageDecodeError
from embedder.model import Embedder
from embedder.network import EmbeddingNetwork, WithSemantics

log = logging.getLogger(__name__)

OPSET = 17
MIN_COSINE = 0.999
INPUT_NAME = "pixels"
OUTPUT_NAME = "vectors"
SEMANTIC_OUTPUT_NAME = "semantics"  # second output, when the network has a zero-shot head


class ExportError(Exception):
    """The network could not be exported, or the export does not match PyTorch."""


@dataclass(frozen=True)
class ExportReport:
    """What an export wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    sha256: str
    size_bytes: int
    min_cosine: float
    images_checked: int
    seconds: float


def export_artifact(
    path: Path, images: Sequence[bytes] | None = None, force: bool = False
) -> ExportReport:
    """Export the artifact at `path` to `path/model.onnx` and record its sha256.

    `images` (encoded) are decoded and preprocessed by the artifact's own Embedder for the
    parity check; by default a few generated pictures. An artifact that already has an ONNX
    model is refused unless `force`. An interrupted export leaves the artifact as it was, or
    without its ONNX model (served by PyTorch), never with a half-written or unrecorded one.
    """
    path = Path(path)
    with _artifact_lock(path):
        _, meta = _read_artifact_config(path)
        if "onnx_file" in meta and not force:
            raise FileExistsError(
                f"{path} already has {meta['onnx_file']}; pass --force to export it again"
            )
        return _export(path, images)


def export_if_missing(path: Path) -> ExportReport | None:
    """Export an artifact that has no ONNX model yet; None if it has one or export fails.

    For first start-up: a model the exporter cannot handle is logged and served by PyTorch.
    """
    path = Path(path)
    with _artifact_lock(path):
        _, meta = _read_artifact_config(path)
        if "onnx_file" in meta:
            return None
        try:
            return _export(path, None)
        except (ExportError, OSError) as exc:  # OSError: e.g. a read-only models directory
            log.warning("serving %s with PyTorch: %s", path, exc)
            return None


def _export(path: Path, images: Sequence[bytes] | None) -> ExportReport:
    start = time.perf_counter()
    network, config, version = load_network(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{ONNX_FILE}.tmp-", dir=path)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_network(network, config, tmp)
        semantic_dim = network.semantic.dim if network.semantic is not None else 0
        torch_embedder = Embedder(TorchBackend(network), config, version, semantic_dim=semantic_dim)
        pixels = _decode_all(torch_embedder, images or generated_images())
        if semantic_dim:
            vectors, semantics = torch_embedder.embed_pixels_with_semantics(pixels)
            min_cosine = check_parity(vectors, tmp, pixels, semantics)
        else:
            min_cosine = check_parity(torch_embedder.embed_pixels(pixels), tmp, pixels)
        sha256 = _sha256(tmp)
        _install(path, tmp, sha256)
    finally:
        tmp.unlink(missing_ok=True)
    target = path / ONNX_FILE
    return ExportReport(
        path=target,
        sha256=sha256,
        size_bytes=target.stat().st_size,
        min_cosine=min_cosine,
        images_checked=len(pixels),
        seconds=time.perf_counter() - start,
    )


def export_network(network: EmbeddingNetwork, config: ModelConfig, out: Path) -> None:
    """Write `network` as ONNX (opset OPSET, dynamic batch axis) and run onnx.checker on it.

    A zero-shot head becomes the graph's second output, SEMANTIC_OUTPUT_NAME.

    The TorchScript exporter is used: on torch 2.14 it exports in about a second, against
    7-16 s for the dynamo exporter (which also needs onnxscript), and with TF-style 'same'
    padding made static first, ONNX Runtime optimises both graphs to the same fused one.
    """
    size = config.preprocess.input_size
    exportable = static_same_padding(network, size)
    outputs = [OUTPUT_NAME]
    if network.semantic is not None:
        exportable = WithSemantics(exportable)  # type: ignore[arg-type]
        outputs.append(SEMANTIC_OUTPUT_NAME)
    example = torch.zeros(2, 3, size, size)
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated (see the docstring for why it is used)
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", Warning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
            # ZeroPad2d's pads come out as a reversing Slice; ONNX Runtime folds it instead
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            # shape checks traced as constants; check_parity runs other batch sizes instead
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                exportable,
                (example,),
                str(out),
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=outputs,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            )
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:  # the exporter and checker fail in many types
        raise ExportError(
            f"cannot export {config.family} {config.architecture} to ONNX: "
            f"{type(exc).__name__}: {exc}; serve this model with runtime 'torch'"
        ) from exc


def static_same_padding(network: nn.Module, input_size: int) -> nn.Module:
    """A copy of `network` whose TF-style 'same' convolutions pad by fixed amounts.

    timm's Conv2dSame computes its padding from the input size at run time, which the
    exporter turns into Shape/Ceil/Pad arithmetic that ONNX Runtime cannot fuse into the
    convolution. The input size is fixed by the artifact, so the padding can be too.
    """
    same = {name for name, module in network.named_modules() if isinstance(module, Conv2dSame)}
    if not same:
        return network
    network = copy.deepcopy(network)
    input_sizes: dict[str, tuple[int, int]] = {}
    hooks = [
        network.get_submodule(name).register_forward_pre_hook(
            lambda _, args, name=name: input_sizes.__setitem__(name, tuple(args[0].shape[-2:]))
        )
        for name in same
    ]
    with torch.inference_mode():
        network(torch.zeros(1, 3, input_size, input_size))
    for hook in hooks:
        hook.remove()
    for name, (height, width) in input_sizes.items():
        conv = network.get_submodule(name)
        assert isinstance(conv, Conv2dSame)
        pad_h = _same_padding(height, conv.kernel_size[0], conv.stride[0], conv.dilation[0])
        pad_w = _same_padding(width, conv.kernel_size[1], conv.stride[1], conv.dilation[1])
        plain = nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,  # type: ignore[arg-type]
            conv.stride,  # type: ignore[arg-type]
            0,
            conv.dilation,  # type: ignore[arg-type]
            conv.groups,
            conv.bias is not None,
        )
        plain.weight, plain.bias = conv.weight, conv.bias
        pad = nn.ZeroPad2d((pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        parent, _, attr = name.rpartition(".")
        setattr(network.get_submodule(parent), attr, nn.Sequential(pad, plain))
    return network


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding of TensorFlow's 'SAME' (timm's get_same_padding for an int size)."""
    return max((-(-size // stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def check_parity(
    expected: np.ndarray,
    onnx_path: Path,
    pixels: np.ndarray,
    expected_semantics: np.ndarray | None = None,
) -> float:
    """The lowest per-image cosine between ONNX Runtime's outputs and PyTorch's `expected`
    vectors (and `expected_semantics`, the zero-shot head's output, when given).

    Runs the whole batch and the first image alone, so a graph that only works at the
    example's batch size fails here. Raises ExportError below MIN_COSINE.
    """
    from embedder.onnx_backend import CPU_PROVIDER, OnnxBackend

    pairs = [("vectors", expected)]
    try:
        backend = OnnxBackend(onnx_path, providers=[CPU_PROVIDER])
        if expected_semantics is None:
            runs = [[backend.run(pixels)], [backend.run(pixels[:1])]]
        else:
            pairs.append(("semantic vectors", expected_semantics))
            runs = [list(backend.run_with_semantics(p)) for p in (pixels, pixels[:1])]
    except Exception as exc:  # ArtifactError, or ORT's own errors, which share no base
        raise ExportError(
            f"ONNX Runtime cannot run the exported model: {exc}; "
            "serve this model with runtime 'torch'"
        ) from exc
    worst = 1.0
    for index, (what, want) in enumerate(pairs):
        batch, single = runs[0][index], runs[1][index]
        if batch.shape != want.shape:
            raise ExportError(f"ONNX gives {what} of shape {batch.shape}, PyTorch {want.shape}")
        cosines = np.concatenate([_cosines(batch, want), _cosines(single, want[:1])])
        if not cosines.min() >= MIN_COSINE:  # also catches NaN
            raise ExportError(
                f"ONNX Runtime disagrees with PyTorch: cosine {cosines.min():.6f} < "
                f"{MIN_COSINE} on image {int(cosines.argmin()) % len(pixels)}'s {what}; "
                "serve this model with runtime 'torch'"
            )
        worst = min(worst, float(cosines.min()))
    return worst


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return np.asarray((a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12))


def _decode_all(embedder: Embedder, images: Sequence[bytes]) -> np.ndarray:
    decoded = []
    for index, data in enumerate(images):
        try:
            decoded.append(embedder.decode(data))
        except ImageDecodeError as exc:
            raise exc.at(index) from exc
    return np.stack(decoded)


def generated_images(count: int = 4, seed: int = 0) -> list[bytes]:
    """JPEGs of blurred shapes on gradients, in several sizes and aspect ratios.

    Stand-ins for photos when none are given: they go through the real decode, resize and
    crop, and their features are far from the all-zero input the export traced with.
    """
    rng = np.random.default_rng(seed)
    images = []
    for index in range(count):
        width, height = (int(v) for v in rng.integers(180, 520, 2))
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.uniform(0, 255, 3)
        fall = np.linspace(1, 0, height)[:, None, None] * rng.uniform(0, 255, 3)
        image = Image.fromarray(np.clip(ramp + fall, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for shape_index in range(int(rng.integers(4, 12))):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            r = int(rng.integers(10, max(11, min(width, height) // 3)))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            shape = draw.ellipse if (index + shape_index) % 2 else draw.rectangle
            shape((x - r, y - r, x + r, y + r), fill=colour)
        buffer = io.BytesIO()
        image.filter(ImageFilter.GaussianBlur(1.5)).save(buffer, "JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def _install(path: Path, tmp: Path, sha256: str) -> None:
    """Move the checked ONNX file into place and record it, in an order that survives a crash.

    config.json is the commit point: an old record is dropped before its file is replaced,
    and the new record is written only once the new file is in place.
    """
    config_path = path / CONFIG_FILE
    data = json.loads(config_path.read_text())
    if "onnx_file" in data:
        _write_json(
            config_path, {k: v for k, v in data.items() if k not in ("onnx_file", "onnx_sha256")}
        )
    os.replace(tmp, path / ONNX_FILE)
    fsync_dir(path)
    _write_json(config_path, {**data, "onnx_file": ONNX_FILE, "onnx_sha256": sha256})


def _write_json(path: Path, data: dict[str, object]) -> None:
    replace_text(path, json.dumps(data, indent=2) + "\n")


@contextlib.contextmanager
def _artifact_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the artifact directory: one export at a time per artifact."""
    if not path.is_dir():
        _read_artifact_config(path)  # raises the usual "does not exist" error
    with exclusive(path):
        yield
