"""ONNX export of artifacts and the ONNX Runtime backend that serves them."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import open_clip
import pytest
import torch

import embedder.config as config_module
import embedder.export as export_module
from embedder import (
    ArtifactChecksumError,
    ArtifactError,
    ModelConfig,
    PreprocessConfig,
    create_artifact,
    load_artifact,
    register_config,
    resolve_model,
)
from embedder.backends import TorchBackend
from embedder.export import ExportError, export_artifact, generated_images
from embedder.onnx_backend import OnnxBackend
from server.cli import main
from tests.helpers import KINDS, make_image, tiny_model_config

TINY_HEAD = tiny_model_config("test-tiny-head", projection_dim=16)
TINY_VIT_ARCH = "nearcat-export-tiny-vit"


def images() -> list[bytes]:
    """Photos' stand-ins of several kinds, sizes and formats."""
    return [make_image(kind, seed, size=120 + 40 * seed) for kind in KINDS for seed in range(3)]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray((a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def meta(artifact: Path) -> dict[str, str]:
    return dict(json.loads((artifact / "config.json").read_text()))


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A small random timm artifact with a projection head, not exported yet."""
    return create_artifact(TINY_HEAD, tmp_path / "tiny")


@pytest.fixture
def exported_copy(tmp_path: Path, model_artifact: Path) -> Path:
    return Path(shutil.copytree(model_artifact, tmp_path / "copy"))


# --- the packaged model --------------------------------------------------------------------


def test_the_packaged_model_comes_exported_and_is_served_by_onnx_runtime(
    model_artifact: Path,
) -> None:
    recorded = meta(model_artifact)
    assert recorded["onnx_file"] == "model.onnx"
    assert recorded["onnx_sha256"] == sha256(model_artifact / "model.onnx")
    embedder = load_artifact(model_artifact)
    assert isinstance(embedder.backend, OnnxBackend)
    assert embedder.max_batch == OnnxBackend.max_batch
    assert isinstance(load_artifact(model_artifact, runtime="torch").backend, TorchBackend)


def test_the_onnx_model_passes_the_checker_with_a_dynamic_batch_axis(
    model_artifact: Path,
) -> None:
    model = onnx.load(str(model_artifact / "model.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert max(entry.version for entry in model.opset_import if entry.domain == "") >= 17
    (pixels,) = model.graph.input
    dims = pixels.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].dim_value
    assert [d.dim_value for d in dims[1:]] == [3, 224, 224]


def test_onnx_runtime_matches_pytorch_on_decoded_images(model_artifact: Path) -> None:
    data = images() + generated_images(4, seed=7)
    onnx_vectors = load_artifact(model_artifact, runtime="onnx").embed_images(data)
    torch_vectors = load_artifact(model_artifact, runtime="torch").embed_images(data)
    assert cosines(onnx_vectors, torch_vectors).min() >= 0.999
    np.testing.assert_allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-5)


def test_any_batch_size_gives_the_vectors_of_one_image_at_a_time(model_artifact: Path) -> None:
    embedder = load_artifact(model_artifact, runtime="onnx")
    backend = embedder.backend
    pixels = np.stack([embedder.decode(data) for data in images()[:7]])
    alone = np.concatenate([backend.run(pixels[i : i + 1]) for i in range(len(pixels))])
    np.testing.assert_allclose(backend.run(pixels), alone, atol=1e-5)
    np.testing.assert_allclose(backend.run(pixels[:1]), alone[:1], atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_says_what_to_do(model_artifact: Path) -> None:
    with pytest.raises(ArtifactError, match="PyTorch sees no CUDA GPU: serve on the CPU"):
        load_artifact(model_artifact, device="cuda")  # runtime auto: PyTorch, the only way
    with pytest.raises(
        ArtifactError, match=r"needs onnxruntime-gpu \(pip install 'nearcat\[gpu\]'\)"
    ):
        load_artifact(model_artifact, runtime="onnx", device="cuda")


def test_device_cpu_keeps_onnx_runtime_on_the_cpu(model_artifact: Path) -> None:
    backend = load_artifact(model_artifact, device="cpu").backend
    assert isinstance(backend, OnnxBackend) and backend.providers == ["CPUExecutionProvider"]
    with pytest.raises(ValueError, match="device must be one of"):
        load_artifact(model_artifact, device="tpu")


# --- integrity -----------------------------------------------------------------------------


def test_a_tampered_onnx_model_is_refused(exported_copy: Path) -> None:
    model = exported_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ArtifactChecksumError, match=r"model\.onnx is corrupt or was modified"):
        load_artifact(exported_copy)
    with pytest.raises(ArtifactChecksumError, match="nearcat export --force"):
        load_artifact(exported_copy, runtime="onnx")
    load_artifact(exported_copy, runtime="torch")  # the weights themselves are intact


def test_a_missing_onnx_model_is_refused(exported_copy: Path) -> None:
    (exported_copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match=r"model\.onnx is missing"):
        load_artifact(exported_copy)


def test_an_onnx_model_that_onnx_runtime_cannot_load_is_an_artifact_error(
    exported_copy: Path,
) -> None:
    (exported_copy / "model.onnx").write_bytes(b"not a protobuf")
    recorded = meta(exported_copy) | {"onnx_sha256": sha256(exported_copy / "model.onnx")}
    (exported_copy / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(ArtifactError, match="ONNX Runtime cannot load"):
        load_artifact(exported_copy)


def test_onnx_runtime_needs_an_exported_artifact(tiny: Path) -> None:
    with pytest.raises(ArtifactError, match=r"has no ONNX model: export one with `nearcat export"):
        load_artifact(tiny, runtime="onnx")
    assert isinstance(load_artifact(tiny).backend, TorchBackend)  # auto falls back to torch
    with pytest.raises(ValueError, match="runtime must be one of"):
        load_artifact(tiny, runtime="tensorrt")


# --- exporting -----------------------------------------------------------------------------


def test_export_adds_a_checked_onnx_model_to_the_artifact(tiny: Path) -> None:
    weights_before = sha256(tiny / "weights.pt")
    report = export_artifact(tiny, images())
    assert report.path == tiny / "model.onnx"
    assert report.sha256 == sha256(report.path) == meta(tiny)["onnx_sha256"]
    assert report.images_checked == len(images())
    assert 0.999 <= report.min_cosine <= 1.0 + 1e-6
    assert sorted(p.name for p in tiny.iterdir()) == ["config.json", "model.onnx", "weights.pt"]
    assert sha256(tiny / "weights.pt") == weights_before
    for name in ("model.onnx", "config.json"):  # readable by a serving user, as weights.pt
        assert (tiny / name).stat().st_mode & 0o777 == 0o644
    onnx_embedder, torch_embedder = load_artifact(tiny), load_artifact(tiny, runtime="torch")
    assert onnx_embedder.version == torch_embedder.version
    assert onnx_embedder.dim == 16  # the projection head is in the graph
    vectors = onnx_embedder.embed_images(images())
    assert cosines(vectors, torch_embedder.embed_images(images())).min() >= 0.999


def test_export_refuses_to_overwrite_unless_forced(tiny: Path) -> None:
    export_artifact(tiny)
    with pytest.raises(FileExistsError, match="already has model.onnx; pass --force"):
        export_artifact(tiny)
    (tiny / "model.onnx").write_bytes(b"stale")
    export_artifact(tiny, force=True)
    assert meta(tiny)["onnx_sha256"] == sha256(tiny / "model.onnx")
    load_artifact(tiny, runtime="onnx")


@pytest.mark.parametrize("failure", ["exporter", "parity", "interrupt"])
def test_a_failed_export_leaves_the_artifact_as_it_was(
    tiny: Path, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    before = {p.name: p.read_bytes() for p in tiny.iterdir()}

    def broken_exporter(*args: object, **kwargs: object) -> None:
        raise RuntimeError("unsupported operator aten::frobnicate")

    def interrupted(*args: object) -> float:
        raise KeyboardInterrupt

    if failure == "exporter":
        monkeypatch.setattr(export_module.torch.onnx, "export", broken_exporter)
        expected: type[BaseException] = ExportError
        match: str | None = (
            "cannot export timm test_efficientnet to ONNX: .*aten::frobnicate.*runtime 'torch'"
        )
    elif failure == "parity":
        monkeypatch.setattr(export_module, "MIN_COSINE", 1.5)  # unreachable: must fail
        expected, match = ExportError, "ONNX Runtime disagrees with PyTorch: cosine"
    else:
        monkeypatch.setattr(export_module, "check_parity", interrupted)
        expected, match = KeyboardInterrupt, None
    with pytest.raises(expected, match=match):
        export_artifact(tiny)
    assert {p.name: p.read_bytes() for p in tiny.iterdir()} == before


def test_an_unreadable_check_image_is_named(tiny: Path) -> None:
    with pytest.raises(ValueError, match="image 1: "):
        export_artifact(tiny, [images()[0], b"not an image"])


def test_a_tiny_open_clip_vit_exports(tmp_path: Path) -> None:
    config_file = tmp_path / f"{TINY_VIT_ARCH}.json"
    config_file.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                "text_cfg": {
                    "context_length": 16,
                    "vocab_size": 1000,
                    "width": 32,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    open_clip.add_model_config(config_file)
    config = ModelConfig(
        name="test-export-clip",
        family="open_clip",
        architecture=TINY_VIT_ARCH,
        embedding_dim=32,
        preprocess=PreprocessConfig(input_size=32, crop_pct=1.0),
        weights="random",
    )
    artifact = create_artifact(config, tmp_path / "clip")
    assert export_artifact(artifact, images()).min_cosine >= 0.999
    assert isinstance(load_artifact(artifact).backend, OnnxBackend)


# --- materialising a registered model -----------------------------------------------------


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Callable[[ModelConfig], None]:
    monkeypatch.setattr(config_module, "_REGISTRY", dict(config_module._REGISTRY))
    return register_config


def test_resolve_model_exports_a_registered_model_and_upgrades_an_old_one(
    tmp_path: Path, registry: Callable[[ModelConfig], None]
) -> None:
    registry(TINY_HEAD)
    fresh = resolve_model(TINY_HEAD.name, tmp_path / "fresh")
    assert meta(fresh)["onnx_sha256"] == sha256(fresh / "model.onnx")
    old = create_artifact(TINY_HEAD, tmp_path / "old" / TINY_HEAD.name)  # before ONNX existed
    assert resolve_model(TINY_HEAD.name, tmp_path / "old") == old
    assert isinstance(load_artifact(old).backend, OnnxBackend)


def test_resolve_model_serves_with_pytorch_when_export_fails(
    tmp_path: Path, registry: Callable[[ModelConfig], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise ExportError("cannot export timm test_efficientnet to ONNX: nope")

    registry(replace(TINY_HEAD, name="test-no-onnx"))
    monkeypatch.setattr(export_module, "export_network", broken)
    artifact = resolve_model("test-no-onnx", tmp_path)
    assert not (artifact / "model.onnx").exists()
    assert isinstance(load_artifact(artifact).backend, TorchBackend)


# --- the command ---------------------------------------------------------------------------


def test_nearcat_export_checks_my_images_and_refuses_to_overwrite(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, data in enumerate(images()[:3]):
        (photos / f"{index}.jpg").write_bytes(data)
    main(["export", str(tiny), "--check-images", str(photos)])
    out = capsys.readouterr().out
    assert f"wrote {tiny / 'model.onnx'}" in out
    parity = re.search(r"on 3 of your images: min cosine (\d\.\d+)", out)
    assert parity and float(parity.group(1)) >= 0.999, out

    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny)])
    assert exit_info.value.code == 2
    assert "already has model.onnx; pass --force" in capsys.readouterr().err

    main(["export", str(tiny), "--force"])
    assert "on 4 generated images" in capsys.readouterr().out


def test_nearcat_export_names_a_bad_check_image(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a....")
    with pytest.raises(SystemExit):
        main(["export", str(tiny), "--check-images", str(bad)])
    assert f"cannot use {bad} as a check image: unsupported image format GIF" in (
        capsys.readouterr().err
    )
    assert not (tiny / "model.onnx").exists()
