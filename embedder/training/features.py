"""Decoded, augmented images run through the frozen prefix once, cached as float16 tensors.

Plain views use exactly the serving preprocessing (`Embedder.preprocess`); augmented views
use a random resized crop, flip, colour jitter and random erasing. An image that cannot be
decoded is reported and left out, never a crash hours into a run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from embedder.config import ModelConfig
from embedder.images import DecodeLimits, ImageDecodeError, decode_image
from embedder.model import Embedder
from embedder.training.backbone import Prefix

_INTERPOLATION = {
    "bilinear": transforms.InterpolationMode.BILINEAR,
    "bicubic": transforms.InterpolationMode.BICUBIC,
}


def augmentation(config: ModelConfig) -> transforms.Compose:
    """The training transform: PIL image -> normalised CHW tensor."""
    pre = config.preprocess
    return transforms.Compose(
        [
            transforms.RandomResizedCrop(
                pre.input_size, scale=(0.35, 1.0), interpolation=_INTERPOLATION[pre.interpolation]
            ),
            transforms.RandomHorizontalFlip(),
            transforms.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03),
            transforms.ToTensor(),
            transforms.Normalize(pre.mean, pre.std),
            transforms.RandomErasing(p=0.25, scale=(0.02, 0.15)),
        ]
    )


class PathViews(Dataset[tuple[torch.Tensor, bool]]):
    """Image i, plain (serving preprocessing) or augmented; (pixels, decoded ok)."""

    def __init__(self, paths: Sequence[Path], config: ModelConfig, augment: bool) -> None:
        self.paths = list(paths)
        self.embedder = Embedder(_PreprocessOnly(), config, version="preprocess-only")
        self.transform = augmentation(config) if augment else None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, bool]:
        try:
            image = self._decode(self.paths[index])
        except (ImageDecodeError, OSError):
            return torch.zeros(self.embedder.input_shape), False
        if self.transform is None:
            return torch.from_numpy(self.embedder.preprocess(image)), True
        return self.transform(image), True

    def _decode(self, path: Path) -> Image.Image:
        size = self.embedder.config.preprocess.resize_size
        return decode_image(path.read_bytes(), DecodeLimits(), target_size=size)


class _PreprocessOnly:
    """A backend for an Embedder used only for its preprocessing."""

    max_batch = 1

    def run(self, pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("this Embedder only preprocesses")


def seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


@dataclass
class CachedViews:
    """Prefix outputs (n, C, H, W) float16 and which images decoded."""

    features: torch.Tensor
    ok: torch.Tensor  # bool (n,)


@torch.inference_mode()
def cache_views(
    paths: Sequence[Path],
    config: ModelConfig,
    prefix: Prefix,
    *,
    augment: bool,
    seed: int,
    workers: int,
    device: torch.device,
    desc: str,
    batch_size: int = 32,
) -> CachedViews:
    """Run every image (one view each) through the frozen prefix; keep the outputs."""
    torch.manual_seed(seed)
    loader = DataLoader(
        PathViews(paths, config, augment),
        batch_size=batch_size,
        num_workers=workers,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )
    chunks: list[torch.Tensor] = []
    oks: list[torch.Tensor] = []
    for pixels, ok in tqdm(loader, desc=desc, unit="batch", leave=False):
        batch = pixels.to(device).contiguous(memory_format=torch.channels_last)
        chunks.append(prefix(batch).to("cpu", torch.float16).contiguous())
        oks.append(ok)
    if not chunks:
        raise ValueError(f"no images to cache for {desc}")
    return CachedViews(torch.cat(chunks), torch.cat(oks))
