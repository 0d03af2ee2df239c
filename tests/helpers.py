"""Test helpers: generated images, and (re-exported) a real `nearcat serve` process."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from server.process import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
CLOTHING = ROOT.parent / "shared" / "datasets" / "clothing"
KINDS = ("stripes", "checkers", "dots")
__all__ = ["CLOTHING", "KINDS", "ROOT", "ServerProcess", "make_image"]


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
