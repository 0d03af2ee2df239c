"""The embedding network, weight sources, artifacts and the Embedder."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import embedder.artifact as artifact_module
import embedder.config as config_module
from embedder import (
    ArtifactChecksumError,
    ArtifactError,
    Embedder,
    ImageDecodeError,
    ModelConfig,
    PreprocessConfig,
    WeightsError,
    create_artifact,
    get_config,
    load_artifact,
    register_config,
    resolve_model,
)
from embedder.artifact import load_network
from embedder.backends import TorchBackend
from embedder.network import build_network, load_pretrained, map_state_dict_by_order
from tests.helpers import tiny_model_config

CLOTHING = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "clothing"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TINY_CLIP_ARCH = "nearcat-test-tiny-vit"

TINY_TIMM = tiny_model_config("test-tiny-timm")
TINY_CLIP = ModelConfig(
    name="test-tiny-clip",
    family="open_clip",
    architecture=TINY_CLIP_ARCH,
    embedding_dim=32,
    preprocess=PreprocessConfig(input_size=32, crop_pct=1.0, mean=CLIP_MEAN, std=CLIP_STD),
    weights="random",
)


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_architecture(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A 2-layer ViT at 32 px registered with open_clip, so its code path runs offline."""
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP_ARCH}.json"
    path.write_text(
        json.dumps(
            {
                "embed_dim": 32,
                "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
                "text_cfg": {
                    "context_length": 16,
                    "vocab_size": 49408,
                    "width": 32,
                    "heads": 2,
                    "layers": 1,
                },
            }
        )
    )
    open_clip.add_model_config(path)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Configs registered by a test disappear after it."""
    monkeypatch.setattr(config_module, "_REGISTRY", dict(config_module._REGISTRY))


@pytest.fixture(scope="module")
def lite0(model_artifact: Path) -> Embedder:
    return load_artifact(model_artifact)


class NoBackend:
    max_batch = 1

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise AssertionError("preprocessing must not run the network")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def scenes() -> Iterator[Image.Image]:
    """Six synthetic pictures that look nothing alike."""
    size = 320
    checks = np.indices((size, size)).sum(0) // 20 % 2 * 255
    yield Image.fromarray(checks.astype(np.uint8)).convert("RGB")
    stripes = np.zeros((size, size, 3), np.uint8)
    stripes[(np.arange(size) // 16) % 2 == 0] = (200, 30, 30)
    yield Image.fromarray(stripes)
    target = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(target)
    for r in range(150, 0, -25):
        draw.ellipse((160 - r, 160 - r, 160 + r, 160 + r), fill="blue" if r // 25 % 2 else "yellow")
    yield target
    yield noise(10, 10).resize((size, size), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(1)
    boxes = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(boxes)
    for _ in range(40):
        x, y = (int(v) for v in rng.integers(0, 300, 2))
        w, h = (int(v) for v in rng.integers(5, 40, 2))
        draw.rectangle((x, y, x + w, y + h), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    yield boxes
    ramp = np.linspace(0, 255, size).astype(np.uint8)
    yield Image.fromarray(
        np.stack(
            [
                np.tile(ramp, (size, 1)),
                np.tile(ramp[:, None], (1, size)),
                np.full_like(checks, 128),
            ],
            axis=-1,
        ).astype(np.uint8)
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- packaged EfficientNet-Lite0 weights (Lite0/1/2's loading: test_packaged.py) ---------


def test_every_tensor_is_checked_and_the_first_misfit_named() -> None:
    target = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2)}

    def source(*shapes: tuple[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
        return {key: torch.ones(shape) for key, shape in shapes}

    fits = source(("_a.weight", (4, 3)), ("_a.bias", (4,)), ("_b.weight", (2,)))
    assert list(map_state_dict_by_order(fits, target)) == list(target)
    with pytest.raises(
        WeightsError,
        match=r"tensor 2 does not fit: checkpoint _b.weight has shape \(3,\), network b.weight "
        r"needs \(2,\) \(1 of 3 tensors do not fit\)",
    ):
        map_state_dict_by_order(
            source(("_a.weight", (4, 3)), ("_a.bias", (4,)), ("_b.weight", (3,))), target
        )
    with pytest.raises(WeightsError, match=r"tensor 1 does not fit: checkpoint _a.running_mean"):
        map_state_dict_by_order(
            source(("_a.weight", (4, 3)), ("_a.running_mean", (4,)), ("_b.weight", (2,))), target
        )
    with pytest.raises(
        WeightsError,
        match=r"has 2 tensors but the network expects 3; tensor 2, network b.weight of shape "
        r"\(2,\), has no counterpart",
    ):
        map_state_dict_by_order(source(("_a.weight", (4, 3)), ("_a.bias", (4,))), target)
    with pytest.raises(WeightsError, match="has 4 tensors .* checkpoint _c.weight and after"):
        map_state_dict_by_order({**fits, "_c.weight": torch.ones(1)}, target)


def test_pretrained_features_know_what_is_alike(lite0: Embedder) -> None:
    """Two crops of one picture are each other's nearest neighbour; other pictures are far.

    Randomly initialised weights fail this: every picture lands at cosine 0.99 of every other.
    """
    views = []
    for image in scenes():
        views.append(image.crop((0, 0, 260, 260)))
        views.append(image.crop((60, 60, 320, 320)).transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    vectors = lite0.embed_pixels(np.stack([lite0.preprocess(view) for view in views]))
    similarity = vectors @ vectors.T
    twins = np.arange(len(views)) ^ 1
    twin_similarity = similarity[np.arange(len(views)), twins]
    np.fill_diagonal(similarity, -1.0)
    similarity[np.arange(len(views)), twins] = -1.0
    assert twin_similarity.min() > 0.85
    assert similarity.max() < 0.7


@pytest.mark.dataset
def test_clothing_neighbours_share_a_category(lite0: Embedder) -> None:
    if not CLOTHING.is_dir():
        pytest.skip(f"{CLOTHING} is absent")
    with open(CLOTHING / "images.csv") as f:
        rows = [r for r in csv.DictReader(f) if (CLOTHING / f"images/{r['image']}.jpg").exists()]
    chosen = {
        label: [r for r in rows if r["label"] == label][:8] for label in ("Shoes", "Pants", "Hat")
    }
    labels = [label for label, group in chosen.items() for _ in group]
    paths = [CLOTHING / f"images/{r['image']}.jpg" for group in chosen.values() for r in group]
    vectors = lite0.embed_images([p.read_bytes() for p in paths])
    similarity = vectors @ vectors.T
    np.fill_diagonal(similarity, -1.0)
    nearest = similarity.argmax(axis=1)
    accuracy = np.mean([labels[i] == labels[j] for i, j in enumerate(nearest)])
    assert accuracy >= 0.8


# --- preprocessing -----------------------------------------------------------------------


def test_preprocess_by_hand_on_a_two_colour_image() -> None:
    config = replace(
        TINY_TIMM,
        preprocess=PreprocessConfig(
            input_size=4,
            crop_pct=1.0,
            mean=(0.5, 0.25, 0.0),
            std=(0.5, 0.25, 1.0),
            interpolation="bilinear",
        ),
    )
    image = Image.new("RGB", (8, 4), "black")
    image.paste("white", (4, 0, 8, 4))  # the centre crop keeps columns 2..5: 2 black, 2 white
    pixels = Embedder(NoBackend(), config, "v").preprocess(image)
    black, white = np.array([-1.0, -1.0, 0.0]), np.array([1.0, 3.0, 1.0])
    expected = np.empty((3, 4, 4), np.float32)
    expected[:, :, :2] = black[:, None, None]
    expected[:, :, 2:] = white[:, None, None]
    assert pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, expected, atol=1e-6)


def timm_eval_transform(pre: PreprocessConfig) -> Callable[[Image.Image], torch.Tensor]:
    return timm.data.create_transform(
        input_size=pre.input_size,
        crop_pct=pre.crop_pct,
        interpolation=pre.interpolation,
        mean=pre.mean,
        std=pre.std,
    )


@pytest.mark.parametrize(
    "name",
    [
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "convnext_tiny",
        "clip-vit-b-32",
    ],
)
@pytest.mark.parametrize(
    "size", [(300, 200), (173, 411), (256, 256), (41, 160), (400, 533), (1280, 960)]
)
def test_preprocess_matches_timm_eval_transform(name: str, size: tuple[int, int]) -> None:
    config = get_config(name)
    image = noise(*size)
    expected = timm_eval_transform(config.preprocess)(image).numpy()
    actual = Embedder(NoBackend(), config, "v").preprocess(image)
    assert actual.shape == (3, config.preprocess.input_size, config.preprocess.input_size)
    # PyTorch's SIMD port of Pillow's filter rounds a rare pixel one or two 8-bit levels off.
    two_levels = 2 * (1 / 255) / min(config.preprocess.std) * 1.001
    np.testing.assert_allclose(actual, expected, atol=two_levels)
    # on pixel noise at most 0.9% of values at 224 px, 1.07% at Lite2's 260 px (2026-12-03)
    assert np.mean(np.abs(actual - expected) > 1e-5) < 0.015


def test_extreme_aspect_ratios_are_cut_before_resizing() -> None:
    """A 1x50000 strip would become 256x12800000 pixels; only its centre matters anyway."""
    config = get_config("efficientnet_lite0")
    ramp = np.linspace(0, 255, 50_000, dtype=np.float32).astype(np.uint8)
    strip = Image.fromarray(np.stack([ramp] * 3, axis=-1)[None])  # 50000 wide, 1 high
    pixels = Embedder(NoBackend(), config, "v").preprocess(strip)
    assert pixels.shape == (3, 224, 224)
    middle = (127.5 / 255 - 0.5) / 0.5
    assert np.abs(pixels - middle).max() < 0.01  # the centre of the ramp, unchanged


def test_decode_uses_the_jpeg_draft_and_still_fills_the_input(lite0: Embedder) -> None:
    buffer = io.BytesIO()
    noise(3000, 2000).save(buffer, "JPEG")
    pixels = lite0.decode(buffer.getvalue())
    assert pixels.shape == (3, 224, 224)
    assert pixels.dtype == np.float32


# --- embedding ---------------------------------------------------------------------------


def test_embeddings_are_float32_unit_vectors(lite0: Embedder) -> None:
    vectors = lite0.embed_images([png(noise(120, 90, seed)) for seed in range(3)])
    assert vectors.shape == (3, 1280) == (3, lite0.dim)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert lite0.embed_pixels(np.zeros((0, 3, 224, 224), np.float32)).shape == (0, 1280)


def test_batches_larger_than_max_batch_are_chunked(lite0: Embedder) -> None:
    pixels = np.stack([lite0.preprocess(noise(100, 100, seed)) for seed in range(5)])
    whole = lite0.embed_pixels(pixels)
    chunked = Embedder(lite0.backend, lite0.config, lite0.version, max_batch=2)
    np.testing.assert_allclose(chunked.embed_pixels(pixels), whole, atol=1e-5)


def test_wrong_pixel_shape_is_refused(lite0: Embedder) -> None:
    with pytest.raises(ValueError, match=r"expected pixels of shape \(n, 3, 224, 224\)"):
        lite0.embed_pixels(np.zeros((2, 3, 64, 64), np.float32))


def test_a_bad_image_is_named_by_its_index(lite0: Embedder) -> None:
    good = png(noise(50, 50))
    with pytest.raises(ImageDecodeError) as info:
        lite0.embed_images([good, good, b"GIF89a..."])
    assert info.value.index == 2
    assert str(info.value).startswith("image 2: unsupported image format GIF")


# --- artifacts ---------------------------------------------------------------------------


def test_artifact_round_trip_gives_identical_embeddings(model_artifact: Path) -> None:
    config = get_config("efficientnet_lite0")
    network = build_network(config)
    load_pretrained(network, config)
    direct = Embedder(TorchBackend(network), config, "direct")
    loaded = load_artifact(model_artifact, runtime="torch")
    pixels = np.stack([loaded.preprocess(image) for image in scenes()])
    np.testing.assert_array_equal(loaded.embed_pixels(pixels), direct.embed_pixels(pixels))


def test_torch_backend_in_bf16_gives_nearly_the_fp32_vectors(model_artifact: Path) -> None:
    """Reduced precision (as benched on a GPU) must keep the geometry the index relies on."""
    fp32 = load_artifact(model_artifact, runtime="torch")
    network, config, version = load_network(model_artifact)
    bf16 = Embedder(TorchBackend(network, precision="bf16", channels_last=False), config, version)
    pixels = np.stack([fp32.preprocess(image) for image in scenes()])
    cosines = np.sum(fp32.embed_pixels(pixels) * bf16.embed_pixels(pixels), axis=1)
    assert cosines.min() > 0.98  # measured 0.988 here: bf16 keeps 8 bits of mantissa
    with pytest.raises(ValueError, match="precision"):
        TorchBackend(network, precision="int3")


def test_artifact_records_config_checksum_and_version(model_artifact: Path) -> None:
    meta = json.loads((model_artifact / "config.json").read_text())
    digest = sha256(model_artifact / "weights.pt")
    assert meta["weights_sha256"] == digest
    assert meta["weights_file"] == "weights.pt"
    assert meta["version"] == f"efficientnet_lite0-{digest[:12]}"
    assert load_artifact(model_artifact).version == meta["version"]
    assert meta["weights"] == "package:efficientnet_lite0"


def test_same_config_gives_same_version(tmp_path: Path) -> None:
    first = load_artifact(create_artifact(TINY_TIMM, tmp_path / "a"))
    second = load_artifact(create_artifact(TINY_TIMM, tmp_path / "b"))
    assert first.version == second.version
    assert first.version.startswith("test-tiny-timm-")


def test_tampered_weights_fail_the_checksum(tmp_path: Path) -> None:
    artifact = create_artifact(TINY_TIMM, tmp_path / "m")
    weights = bytearray((artifact / "weights.pt").read_bytes())
    weights[len(weights) // 2] ^= 0xFF
    (artifact / "weights.pt").write_bytes(bytes(weights))
    with pytest.raises(ArtifactChecksumError, match="corrupt or was modified"):
        load_artifact(artifact)


def test_invalid_artifacts_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_artifact(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="config.json is missing"):
        load_artifact(tmp_path / "empty")
    artifact = create_artifact(TINY_TIMM, tmp_path / "m")
    meta = json.loads((artifact / "config.json").read_text())
    (artifact / "config.json").write_text(json.dumps({**meta, "version": "test-tiny-timm-1"}))
    with pytest.raises(ArtifactError, match="version does not match"):
        load_artifact(artifact)
    (artifact / "config.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not a valid artifact config"):
        load_artifact(artifact)
    (artifact / "config.json").write_text(json.dumps(meta))
    (artifact / "weights.pt").unlink()
    with pytest.raises(ArtifactError, match="weights.pt is missing"):
        load_artifact(artifact)


def test_create_artifact_never_overwrites(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        create_artifact(TINY_TIMM, tmp_path / "m")


def test_create_artifact_loses_a_race_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "m"

    def another_writer_finishes_first(network: Any, config: ModelConfig) -> None:
        target.mkdir()
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(artifact_module, "load_pretrained", another_writer_finishes_first)
    with pytest.raises(FileExistsError, match="meanwhile"):
        create_artifact(TINY_TIMM, target)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary directory left


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        create_artifact(TINY_TIMM, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_resolve_model_materialises_a_name_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: None
) -> None:
    register_config(TINY_TIMM)
    artifact = resolve_model(TINY_TIMM.name, tmp_path)
    assert artifact == tmp_path / TINY_TIMM.name
    written = (artifact / "weights.pt").stat()

    def must_not_rebuild(*args: Any) -> Path:
        raise AssertionError("the artifact was rebuilt")

    monkeypatch.setattr(artifact_module, "create_artifact", must_not_rebuild)
    assert resolve_model(TINY_TIMM.name, tmp_path) == artifact
    assert resolve_model(str(artifact), tmp_path / "elsewhere") == artifact
    assert (artifact / "weights.pt").stat().st_mtime_ns == written.st_mtime_ns
    assert load_artifact(artifact).config == TINY_TIMM


def test_resolve_model_refuses_unknown_specs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="neither a model artifact directory nor a registered"):
        resolve_model("no-such-model", tmp_path)


def test_resolve_model_notices_a_changed_config(tmp_path: Path, registry: None) -> None:
    register_config(TINY_TIMM)
    resolve_model(TINY_TIMM.name, tmp_path)
    register_config(replace(TINY_TIMM, projection_dim=16), replace=True)
    with pytest.raises(ArtifactError, match="different 'test-tiny-timm' config"):
        resolve_model(TINY_TIMM.name, tmp_path)


def _without_zero_shot_head(model_artifact: Path, models_dir: Path) -> tuple[Path, str]:
    """A copy of the packaged model as an older nearcat materialised it: no zero-shot head."""
    old = shutil.copytree(model_artifact, models_dir / "efficientnet_lite0")
    meta = json.loads((old / "config.json").read_text())
    for key in ("zero_shot", "onnx_file", "onnx_sha256"):
        del meta[key]
    (old / "config.json").write_text(json.dumps(meta))
    for name in ("zeroshot.pt", "model.onnx"):
        (old / name).unlink()
    assert load_artifact(old).semantic_dim == 0
    return old, meta["version"]


def test_a_packaged_model_materialised_before_zero_shot_heads_is_rebuilt_with_one(
    tmp_path: Path, model_artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next resolve rebuilds it with the head and the same version: stored vectors stay.
    Once rebuilt (or built with its head in the first place), it is never rebuilt again."""
    old, version = _without_zero_shot_head(model_artifact, tmp_path)
    rebuilt = resolve_model("efficientnet_lite0", tmp_path)
    assert rebuilt == old and (rebuilt / "zeroshot.pt").is_file()
    embedder = load_artifact(rebuilt)
    assert embedder.version == version and embedder.semantic_dim > 0
    assert not [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name]

    def must_not_rebuild(*args: Any) -> Path:
        raise AssertionError("the artifact was rebuilt")

    monkeypatch.setattr(artifact_module, "create_artifact", must_not_rebuild)
    assert resolve_model("efficientnet_lite0", tmp_path) == rebuilt
    assert resolve_model("efficientnet_lite0", model_artifact.parent) == model_artifact


def test_a_rebuild_that_fails_keeps_the_old_artifact(
    tmp_path: Path, model_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    old, version = _without_zero_shot_head(model_artifact, tmp_path)

    def offline(*args: Any) -> Path:
        raise WeightsError("the weights need a download, and this machine is offline")

    monkeypatch.setattr(artifact_module, "create_artifact", offline)
    import embedder.export as export_module

    monkeypatch.setattr(export_module, "export_if_missing", lambda path: None)
    assert resolve_model("efficientnet_lite0", tmp_path) == old
    assert load_artifact(old).version == version and load_artifact(old).semantic_dim == 0
    assert "was not rebuilt with one: the weights need a download" in caplog.text
    assert not [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name]


def test_a_rebuild_that_cannot_be_moved_into_place_puts_the_old_artifact_back(
    tmp_path: Path, model_artifact: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """The old directory is moved aside before the new one moves in: when that last rename
    fails, the old one must come back before the rebuild's directory is deleted."""
    old, version = _without_zero_shot_head(model_artifact, tmp_path)
    monkeypatch.setattr(
        artifact_module,
        "create_artifact",
        lambda config, path: shutil.copytree(model_artifact, path),
    )
    import embedder.export as export_module

    monkeypatch.setattr(export_module, "export_if_missing", lambda path: None)
    rename = Path.rename

    def failing_for_the_rebuild(self: Path, target: Path) -> Path:
        if self.name == "artifact" and ".rebuild-" in self.parent.name:
            raise OSError("the disk is full")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing_for_the_rebuild)
    assert resolve_model("efficientnet_lite0", tmp_path) == old
    assert load_artifact(old).version == version and load_artifact(old).semantic_dim == 0
    assert "was not rebuilt with one: the disk is full" in caplog.text
    assert not [p.name for p in tmp_path.iterdir() if ".rebuild-" in p.name]


# --- other families and weight sources ----------------------------------------------------


def test_open_clip_random_model_with_projection_head(tmp_path: Path) -> None:
    config = replace(TINY_CLIP, projection_dim=16)
    embedder = load_artifact(create_artifact(config, tmp_path / "clip"))
    vectors = embedder.embed_images([png(noise(40, 30, seed)) for seed in range(3)])
    assert vectors.shape == (3, 16) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3
    state = torch.load(tmp_path / "clip" / "weights.pt", weights_only=True)
    assert state["head.weight"].shape == (16, 32)
    assert any(key.startswith("backbone.clip.transformer.") for key in state)  # text tower kept


def test_open_clip_checkpoint_file(tmp_path: Path) -> None:
    torch.manual_seed(1)
    clip = open_clip.create_model(TINY_CLIP_ARCH).eval()
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    config = replace(TINY_CLIP, weights=f"file:{tmp_path / 'clip.pt'}")
    embedder = load_artifact(create_artifact(config, tmp_path / "m"))
    pixels = np.stack([embedder.preprocess(noise(32, 32, seed)) for seed in range(2)])
    with torch.inference_mode():
        features = clip.encode_image(torch.from_numpy(pixels))
        expected = F.normalize(features, dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed_pixels(pixels), expected, atol=1e-5)


def test_timm_checkpoint_file_with_classifier(tmp_path: Path) -> None:
    torch.manual_seed(1)
    full: Any = timm.create_model("test_efficientnet", num_classes=10).eval()
    torch.save({"state_dict": full.state_dict()}, tmp_path / "ckpt.pth")
    config = replace(TINY_TIMM, weights=f"file:{tmp_path / 'ckpt.pth'}")
    embedder = load_artifact(create_artifact(config, tmp_path / "m"))
    pixels = np.stack([embedder.preprocess(noise(64, 64, seed)) for seed in range(2)])
    with torch.inference_mode():
        features = full.forward_features(torch.from_numpy(pixels))
        pooled = full.forward_head(features, pre_logits=True)
    expected = F.normalize(pooled, dim=-1).numpy()
    np.testing.assert_allclose(embedder.embed_pixels(pixels), expected, atol=1e-5)


def test_checkpoint_file_for_another_architecture(tmp_path: Path) -> None:
    torch.save(timm.create_model("test_convnext").state_dict(), tmp_path / "convnext.pth")
    config = replace(TINY_TIMM, weights=f"file:{tmp_path / 'convnext.pth'}")
    with pytest.raises(WeightsError, match="does not fit timm test_efficientnet"):
        create_artifact(config, tmp_path / "m")
    with pytest.raises(WeightsError, match="does not exist"):
        create_artifact(replace(TINY_TIMM, weights="file:/nope.pth"), tmp_path / "m")


def test_wrong_embedding_dim_fails_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="config says embedding_dim 128"):
        create_artifact(replace(TINY_TIMM, embedding_dim=128), tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def offline(create: Callable[..., Any], flag: str) -> Callable[..., Any]:
    """`create` as it behaves without internet: pretrained weights cannot be fetched."""

    def create_offline(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get(flag):
            raise OSError("[Errno -3] Temporary failure in name resolution")
        return create(*args, **kwargs)

    return create_offline


@pytest.mark.parametrize(
    ("config", "module", "flag"),
    [
        (replace(TINY_TIMM, weights="hub:"), timm, "pretrained"),
        (replace(TINY_CLIP, weights="hub:laion2b"), open_clip, "pretrained"),
    ],
)
def test_hub_weights_offline_point_to_file_weights(
    config: ModelConfig, module: Any, flag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(module, "create_model", offline(module.create_model, flag))
    with pytest.raises(WeightsError, match="could not download .* pass a local checkpoint"):
        create_artifact(config, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_copied_artifact_still_loads(tmp_path: Path, model_artifact: Path) -> None:
    copy = Path(shutil.copytree(model_artifact, tmp_path / "copy"))
    assert load_artifact(copy).version == load_artifact(model_artifact).version
