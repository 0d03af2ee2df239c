"""Text towers and the zero-shot head: shapes, parity of the two runtimes, old artifacts."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import pytest
import torch

from embedder import ModelConfig, PreprocessConfig, create_artifact, load_artifact
from embedder.artifact import ZERO_SHOT_FILE, load_network, write_artifact
from embedder.export import export_artifact, generated_images
from embedder.model import Embedder
from embedder.text import (
    ClipTextTower,
    ImageNetConseTower,
    SentenceEncoder,
    class_weights,
    imagenet_class_names,
    load_text_tower,
    sentence_encoder,
)
from tests.helpers import CLOTHING

TINY_CLIP_ARCH = "nearcat-text-tiny-vit"
TINY_CLIP = ModelConfig(
    name="test-text-clip",
    family="open_clip",
    architecture=TINY_CLIP_ARCH,
    embedding_dim=32,
    preprocess=PreprocessConfig(input_size=32, crop_pct=1.0),
    weights="random",
)


@pytest.fixture(scope="module", autouse=True)
def tiny_clip_architecture(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A 2-layer ViT at 32 px with a 1-layer text tower, registered with open_clip."""
    path = tmp_path_factory.mktemp("open_clip") / f"{TINY_CLIP_ARCH}.json"
    text_cfg = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    vision_cfg = {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8}
    path.write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision_cfg, "text_cfg": text_cfg}))
    open_clip.add_model_config(path)


@pytest.fixture(scope="module")
def lite0(model_artifact: Path) -> Embedder:
    return load_artifact(model_artifact, runtime="onnx")


def pixels_of(embedder: Embedder, count: int = 4) -> np.ndarray:
    return np.stack([embedder.decode(data) for data in generated_images(count)])


# --- the packaged model: ImageNet head + MiniLM ---------------------------------------------


def test_the_packaged_model_has_an_imagenet_head_and_a_text_tower(lite0: Embedder) -> None:
    assert lite0.semantic_dim == 1000
    tower = load_text_tower(lite0)
    assert isinstance(tower, ImageNetConseTower) and tower.dim == 1000
    assert tower.version.startswith(lite0.version + "+imagenet-conse-")
    vectors = tower.encode(["T-Shirt", "a photo of a hat", "Shoes"])
    assert vectors.shape == (3, 1000) and vectors.dtype == np.float32
    # a weighting of the ImageNet classes: non-negative, summing to 1
    assert (vectors >= 0).all()
    np.testing.assert_allclose(vectors.sum(axis=1), 1.0, atol=1e-5)
    assert not np.allclose(vectors[0], vectors[2])


def test_image_semantics_are_the_imagenet_softmax(lite0: Embedder) -> None:
    vectors, semantics = lite0.embed_pixels_with_semantics(pixels_of(lite0))
    np.testing.assert_allclose(vectors, lite0.embed_pixels(pixels_of(lite0)), atol=1e-6)
    assert semantics.shape == (4, 1000) and semantics.dtype == np.float32
    np.testing.assert_allclose(semantics.sum(axis=1), 1.0, atol=1e-4)
    # so zero-shot scores are probability mass, in [0, 1]
    scores = semantics @ load_text_tower(lite0).encode(["Dress", "Pants"]).T  # type: ignore[union-attr]
    assert ((scores >= 0) & (scores <= 1 + 1e-5)).all()


def test_onnx_runtime_and_pytorch_give_the_same_semantics(model_artifact: Path) -> None:
    onnx_model = load_artifact(model_artifact, runtime="onnx")
    torch_model = load_artifact(model_artifact, runtime="torch")
    pixels = pixels_of(onnx_model, 5)
    onnx_vectors, onnx_semantics = onnx_model.embed_pixels_with_semantics(pixels)
    torch_vectors, torch_semantics = torch_model.embed_pixels_with_semantics(pixels)
    np.testing.assert_allclose(onnx_vectors, torch_vectors, atol=1e-4)
    np.testing.assert_allclose(onnx_semantics, torch_semantics, atol=1e-4)
    # and the torch side is the package's own ImageNet classifier, unchanged
    network, _, _ = load_network(model_artifact)
    with torch.inference_mode():
        logits = network.semantic.fc(network.backbone(torch.from_numpy(pixels)))  # type: ignore[union-attr]
    np.testing.assert_allclose(torch_semantics, torch.softmax(logits, -1).numpy(), atol=1e-5)


def test_a_text_picks_the_imagenet_classes_it_names(lite0: Embedder) -> None:
    """Known answer without images: an image whose ImageNet softmax is all on one class is
    matched to the candidate that names that class."""
    names = imagenet_class_names()
    tower = load_text_tower(lite0)
    assert tower is not None
    candidates = ["hat", "shoes", "trousers", "umbrella"]
    picks = {"cowboy hat, ten-gallon hat": "hat", "running shoe": "shoes", "umbrella": "umbrella"}
    semantics = np.zeros((len(picks), 1000), dtype=np.float32)
    for row, name in enumerate(picks):
        semantics[row, names.index(name)] = 1.0
    scores = semantics @ tower.encode(candidates).T
    assert [candidates[i] for i in scores.argmax(axis=1)] == list(picks.values())


def test_search_queries_for_the_image_index_are_unit_vectors(lite0: Embedder) -> None:
    tower = load_text_tower(lite0)
    assert tower is not None
    queries = tower.image_queries(tower.encode(["Shoes", "Hat"]))
    assert queries is not None and queries.shape == (2, lite0.dim)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)


def test_empty_texts_are_refused(lite0: Embedder) -> None:
    tower = load_text_tower(lite0)
    assert tower is not None
    with pytest.raises(ValueError, match="text 1 is empty"):
        tower.encode(["Shoes", "   "])
    with pytest.raises(ValueError, match="not one string"):
        tower.encode("Shoes")


def test_sentence_encoder_matches_sentence_transformers() -> None:
    """Mean pooling + L2 norm is what the packaged model's sentence-transformers modules do."""
    from sentence_transformers import SentenceTransformer

    texts = ["a photo of a T-Shirt", "running shoe", "Hat"]
    ours = sentence_encoder().encode(texts)
    reference = SentenceTransformer(str(sentence_encoder().path), device="cpu")
    theirs = reference.encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert isinstance(sentence_encoder(), SentenceEncoder) and ours.shape == (3, 384)


def test_class_weights_by_hand() -> None:
    similarities = np.array([[0.1, 0.5, 0.3, 0.2]])
    weights = class_weights(similarities, top_k=2, temperature=0.1)
    expected = np.exp([0.5 / 0.1, 0.3 / 0.1])
    expected /= expected.sum()
    np.testing.assert_allclose(weights, [[0, expected[0], expected[1], 0]], atol=1e-6)


def test_the_head_leaves_the_version_and_weights_as_they_were(
    model_artifact: Path, tmp_path: Path
) -> None:
    """weights.pt holds only the embedding network: without the head it is the same bytes."""
    network, config, version = load_network(model_artifact)
    network.semantic = None
    old = write_artifact(network, config, tmp_path / "old")
    assert load_artifact(old).version == version
    assert (old / "weights.pt").read_bytes() == (model_artifact / "weights.pt").read_bytes()
    assert (model_artifact / ZERO_SHOT_FILE).is_file()


def test_an_artifact_built_before_heads_loads_without_one(
    model_artifact: Path, tmp_path: Path
) -> None:
    network, config, _ = load_network(model_artifact)
    network.semantic = None  # what nearcat wrote before zero-shot heads
    old = write_artifact(network, config, tmp_path / "old")
    assert "zero_shot" not in json.loads((old / "config.json").read_text())
    export_artifact(old)
    for runtime in ("onnx", "torch"):
        embedder = load_artifact(old, runtime=runtime)
        assert embedder.semantic_dim == 0 and load_text_tower(embedder) is None
        with pytest.raises(ValueError, match="no zero-shot head"):
            embedder.embed_pixels_with_semantics(pixels_of(embedder, 1))


def test_a_tampered_head_fails_the_checksum(model_artifact: Path, tmp_path: Path) -> None:
    from embedder import ArtifactChecksumError

    copy = Path(shutil.copytree(model_artifact, tmp_path / "copy"))
    state = torch.load(copy / ZERO_SHOT_FILE, weights_only=True)
    state["fc.bias"] += 1
    torch.save(state, copy / ZERO_SHOT_FILE)
    with pytest.raises(ArtifactChecksumError, match=ZERO_SHOT_FILE):
        load_artifact(copy)


@pytest.mark.dataset
@pytest.mark.skipif(not CLOTHING.is_dir(), reason="the clothing dataset is absent")
def test_zero_shot_tells_shoes_hats_and_pants_apart(lite0: Embedder) -> None:
    """Real photos, the three categories by name only: far above chance (33%)."""
    from embedder.datasets import load_csv
    from server.evaluation.zero_shot import evaluate_zero_shot

    wanted = ("Shoes", "Hat", "Pants")
    data = load_csv(CLOTHING / "images.csv", path_template="images/{}.jpg")
    queries = [i for c in wanted for i in [i for i in data.images if i.category == c][:10]]
    result = evaluate_zero_shot(queries, lite0, wanted)
    assert result.metrics.queries == 30 and result.metrics.top1 >= 0.6


# --- open_clip: the CLIP text encoder -------------------------------------------------------


@pytest.mark.parametrize("projection_dim", [None, 16])
def test_clip_text_tower_shares_the_image_space(tmp_path: Path, projection_dim: int | None) -> None:
    artifact = create_artifact(replace(TINY_CLIP, projection_dim=projection_dim), tmp_path / "m")
    export_artifact(artifact)
    onnx_model = load_artifact(artifact, runtime="onnx")
    torch_model = load_artifact(artifact, runtime="torch")
    assert onnx_model.semantic_dim == torch_model.semantic_dim == 32
    pixels = pixels_of(onnx_model, 3)
    onnx_vectors, onnx_semantics = onnx_model.embed_pixels_with_semantics(pixels)
    torch_vectors, torch_semantics = torch_model.embed_pixels_with_semantics(pixels)
    np.testing.assert_allclose(onnx_semantics, torch_semantics, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(onnx_semantics, axis=1), 1.0, atol=1e-5)

    network, _, _ = load_network(artifact)
    clip = network.backbone.clip  # type: ignore[union-attr]
    tokens = open_clip.get_tokenizer(TINY_CLIP_ARCH)(["a red shirt", "shoes"])
    with torch.inference_mode():
        expected = torch.nn.functional.normalize(clip.encode_text(tokens), dim=-1).numpy()
    for embedder in (onnx_model, torch_model):
        tower = load_text_tower(embedder)
        assert tower is not None and tower.dim == 32
        texts = tower.encode(["a red shirt", "shoes"])
        np.testing.assert_allclose(texts, expected, atol=1e-5)
        queries = tower.image_queries(texts)
        if projection_dim is None:  # the index holds CLIP image vectors: text searches them
            np.testing.assert_allclose(torch_semantics, torch_vectors, atol=1e-6)
            assert queries is not None and np.allclose(queries, texts)
        else:
            assert queries is None


class _ClipElsewhere(torch.nn.Module):
    """A CLIP whose weights are on another device than the CPU ("meta" stands in for a GPU):
    it takes tokens only there."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(4, device="meta"))
        self.logit_scale = torch.tensor(math.log(100.0))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        assert tokens.device == self.weight.device, f"tokens on {tokens.device}"
        return torch.ones(len(tokens), 4)


def test_clip_text_tower_sends_the_tokens_to_the_network_s_device() -> None:
    """The served network may be on a GPU while the tokenizer makes CPU tensors."""
    served = SimpleNamespace(
        semantic_dim=4, version="v", config=SimpleNamespace(projection_dim=None)
    )
    tower = ClipTextTower(served, _ClipElsewhere(), TINY_CLIP_ARCH)  # type: ignore[arg-type]
    np.testing.assert_allclose(tower.encode(["a red shirt"]), [[0.5] * 4])
