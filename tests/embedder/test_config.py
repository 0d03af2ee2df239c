"""Model configs: JSON round trips, validation, the registry of packaged configs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import embedder.config as config_module
from embedder.config import (
    ModelConfig,
    PreprocessConfig,
    get_config,
    list_models,
    load_config_file,
    register_config,
)
from tests.helpers import tiny_model_config

TINY = tiny_model_config("test-config-tiny")


def test_packaged_configs_are_registered() -> None:
    assert {"efficientnet_lite0", "convnext_tiny", "clip-vit-b-32", "clip-convnext-base"} <= set(
        list_models()
    )
    default = get_config("efficientnet_lite0")
    assert default.weights == "package:efficientnet_lite0"
    assert default.output_dim == 1280
    assert default.preprocess.resize_size == 256


@pytest.mark.parametrize("name", list_models())
def test_configs_round_trip_through_json(name: str) -> None:
    config = get_config(name)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_file_name_must_match(tmp_path: Path) -> None:
    path = tmp_path / "other-name.json"
    path.write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(ValueError, match="does not match the file name"):
        load_config_file(path)


def test_unknown_keys_are_rejected() -> None:
    data = TINY.to_dict()
    data["preprocess"]["crop_percent"] = 0.9
    with pytest.raises(ValueError, match=r"unknown PreprocessConfig keys: \['crop_percent'\]"):
        ModelConfig.from_dict(data)


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(KeyError, match="known models: .*efficientnet_lite0"):
        get_config("no-such-model")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"family": "keras"}, "family must be one of"),
        ({"weights": "s3://bucket/model.pt"}, "weights must be 'package:<name>'"),
        ({"weights": "random:1"}, "weights must be"),
        ({"weights": "package:resnet50"}, "unknown weights package"),
        ({"weights": "file:"}, "needs a path"),
        ({"embedding_dim": 0}, "embedding_dim must be positive"),
        ({"projection_dim": -1}, "projection_dim must be positive"),
    ],
)
def test_invalid_model_configs(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(TINY, **changes)


def test_open_clip_hub_weights_need_a_tag() -> None:
    with pytest.raises(ValueError, match="need a pretrained tag"):
        replace(TINY, family="open_clip", weights="hub:")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"interpolation": "nearest"}, "interpolation must be one of"),
        ({"crop_pct": 1.2}, "crop_pct must be in"),
        ({"input_size": 0}, "input_size must be positive"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be positive"),
        ({"mean": (0.5, 0.5)}, "need 3 values"),
    ],
)
def test_invalid_preprocess_configs(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        replace(PreprocessConfig(), **changes)


def test_register_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module, "_REGISTRY", dict(config_module._REGISTRY))
    register_config(TINY)
    register_config(TINY)  # the same config again is fine
    assert get_config(TINY.name) == TINY
    changed = replace(TINY, description="changed")
    with pytest.raises(ValueError, match="replace=True"):
        register_config(changed)
    register_config(changed, replace=True)
    assert get_config(TINY.name).description == "changed"
