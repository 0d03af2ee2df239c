"""The Embedder: image bytes or pixels -> L2-normalised vectors, with the preprocessing its
model was trained with (the artifact's config) bound to it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from embedder.backends import Backend, SemanticBackend
from embedder.config import ModelConfig
from embedder.images import DecodeLimits, ImageDecodeError, decode_rgb

# Wider images are centre-cut before resizing; up to this ratio the result is exactly timm's.
_MAX_ASPECT_RATIO = 4


class Embedder:
    """Image bytes or pixels -> L2-normalised vectors, with the model's own preprocessing."""

    def __init__(
        self,
        backend: Backend,
        config: ModelConfig,
        version: str,
        limits: DecodeLimits | None = None,
        max_batch: int | None = None,
        semantic_dim: int = 0,
        path: Path | None = None,
    ):
        self._backend = backend
        self._config = config
        self._version = version
        # Length of the zero-shot head's output; 0: the model has none (embedder.text).
        self.semantic_dim = semantic_dim
        self.path = path  # the artifact directory, where the text tower's weights are
        self.limits = limits or DecodeLimits()
        # Forward passes run in chunks of max_batch, by default the backend's fastest size.
        self.max_batch = max_batch or backend.max_batch
        # (x / 255 - mean) / std as one multiply-add per pixel
        std = np.asarray(config.preprocess.std, dtype=np.float32)
        self._scale = np.float32(1 / 255) / std
        self._offset = np.asarray(config.preprocess.mean, dtype=np.float32) / std

    @property
    def config(self) -> ModelConfig:
        return self._config

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def version(self) -> str:
        """`<name>-<first 12 hex of the weights' sha256>`: vectors of one version only mix."""
        return self._version

    @property
    def dim(self) -> int:
        return self._config.output_dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        size = self._config.preprocess.input_size
        return (3, size, size)

    def preprocess(self, image: Image.Image | np.ndarray) -> np.ndarray:
        """Resize the shorter side, centre-crop, normalise: float32 CHW (timm's eval transform).

        Takes a PIL image or an (H, W, 3) uint8 RGB array. The resize is PyTorch's antialiased
        uint8 kernel, a SIMD port of Pillow's filter (within 2 of 255 levels of Pillow's
        pixels) at a third of its cost: 0.6 ms for a 400x533 photo on these cores against
        1.8 ms, the largest part of a request's CPU outside the model.
        """
        pre = self._config.preprocess
        rgb = _limit_aspect_ratio(_rgb_array(image), _MAX_ASPECT_RATIO)
        height, width = rgb.shape[:2]
        new_width, new_height = _resized_size((width, height), pre.resize_size)
        left = round((new_width - pre.input_size) / 2)
        top = round((new_height - pre.input_size) / 2)
        source = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # NCHW view of channels-last
        resized = F.interpolate(
            source, size=(new_height, new_width), mode=pre.interpolation, antialias=True
        )[0, :, top : top + pre.input_size, left : left + pre.input_size].numpy()
        pixels = np.empty(self.input_shape, dtype=np.float32)
        for channel in range(3):  # per channel, straight from uint8: 5x faster than one float HWC
            np.multiply(resized[channel], self._scale[channel], out=pixels[channel])
            pixels[channel] -= self._offset[channel]
        return pixels

    def decode(self, data: bytes) -> np.ndarray:
        """Untrusted image bytes -> preprocessed pixels; raises ImageDecodeError."""
        return self.preprocess(
            decode_rgb(data, self.limits, target_size=self._config.preprocess.resize_size)
        )

    def _checked(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape:
            raise ValueError(
                f"expected pixels of shape (n, {', '.join(map(str, self.input_shape))}), "
                f"got {batch.shape}"
            )
        return batch

    def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, H, W) preprocessed pixels -> (n, dim) float32 unit vectors."""
        batch = self._checked(batch)
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch])
            out[start : start + len(chunk)] = self._backend.run(chunk)
        return out

    def embed_pixels_with_semantics(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) vectors as embed_pixels, and (n, semantic_dim) float32 semantic vectors
        from the same forward pass; the zero-shot score of image i for text vector t is
        `semantics[i] @ t` (embedder.text). ValueError when the model has no zero-shot head."""
        if not self.semantic_dim:
            raise ValueError(
                f"model {self._version} has no zero-shot head: rebuild its artifact with this "
                "version of nearcat, or use an open_clip model"
            )
        batch = self._checked(batch)
        backend = cast(SemanticBackend, self._backend)  # semantic_dim > 0 only for these
        out = np.empty((len(batch), self.dim), dtype=np.float32)
        semantics = np.empty((len(batch), self.semantic_dim), dtype=np.float32)
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start : start + self.max_batch])
            stop = start + len(chunk)
            out[start:stop], semantics[start:stop] = backend.run_with_semantics(chunk)
        return out, semantics

    def embed_images(self, images: Sequence[bytes]) -> np.ndarray:
        """Encoded images -> (n, dim) vectors; a bad image raises ImageDecodeError naming it."""
        batch = np.empty((len(images), *self.input_shape), dtype=np.float32)
        for index, data in enumerate(images):
            try:
                batch[index] = self.decode(data)
            except ImageDecodeError as exc:
                raise exc.at(index) from exc
        return self.embed_pixels(batch)


def _rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A writable (H, W, 3) uint8 RGB array of the image."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        return image if image.flags.writeable else image.copy()
    return np.array(image if image.mode == "RGB" else image.convert("RGB"))


def _limit_aspect_ratio(rgb: np.ndarray, max_ratio: int) -> np.ndarray:
    """Centre-cut the long side to `max_ratio` times the short side.

    The centre crop never reaches further out, and it keeps a 1x50000 image from becoming a
    256x12800000 one on the way.
    """
    height, width = rgb.shape[:2]
    if width > max_ratio * height:
        left = (width - max_ratio * height) // 2
        return rgb[:, left : left + max_ratio * height]
    if height > max_ratio * width:
        top = (height - max_ratio * width) // 2
        return rgb[top : top + max_ratio * width]
    return rgb


def _resized_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size with the shorter side set to `shorter`, rounded like torchvision's Resize(int)."""
    width, height = size
    if width <= height:
        return shorter, int(shorter * height / width)
    return int(shorter * width / height), shorter
