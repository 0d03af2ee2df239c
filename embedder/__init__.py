"""nearcat's embedder: image bytes -> L2-normalised vectors, from a versioned model artifact."""

from embedder.config import ModelConfig, PreprocessConfig, get_config, list_models, register_config
from embedder.images import DecodeLimits, ImageDecodeError, decode_image
from embedder.model import (
    ArtifactChecksumError,
    ArtifactError,
    Embedder,
    WeightsError,
    create_artifact,
    load_artifact,
    resolve_model,
)

__all__ = [
    "ArtifactChecksumError",
    "ArtifactError",
    "DecodeLimits",
    "Embedder",
    "ImageDecodeError",
    "ModelConfig",
    "PreprocessConfig",
    "WeightsError",
    "create_artifact",
    "decode_image",
    "get_config",
    "list_models",
    "load_artifact",
    "register_config",
    "resolve_model",
]
