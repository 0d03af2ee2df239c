"""nearcat's embedder: image bytes -> L2-normalised vectors, from a versioned model artifact.

The names below load on first use, so that `embedder.datasets` and the client commands do
not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from embedder.artifact import create_artifact, load_artifact, resolve_model
    from embedder.config import (
        ModelConfig,
        PreprocessConfig,
        get_config,
        list_models,
        register_config,
    )
    from embedder.errors import ArtifactChecksumError, ArtifactError, WeightsError
    from embedder.images import DecodeLimits, ImageDecodeError, decode_image
    from embedder.model import Embedder

_MODULE_OF = {
    "ModelConfig": "embedder.config",
    "PreprocessConfig": "embedder.config",
    "get_config": "embedder.config",
    "list_models": "embedder.config",
    "register_config": "embedder.config",
    "DecodeLimits": "embedder.images",
    "ImageDecodeError": "embedder.images",
    "decode_image": "embedder.images",
    "ArtifactChecksumError": "embedder.errors",
    "ArtifactError": "embedder.errors",
    "Embedder": "embedder.model",
    "WeightsError": "embedder.errors",
    "create_artifact": "embedder.artifact",
    "load_artifact": "embedder.artifact",
    "resolve_model": "embedder.artifact",
}

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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'embedder' has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULE_OF[name]), name)
