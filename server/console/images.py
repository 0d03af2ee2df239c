"""Thumbnails: reference images are fetched once over gRPC, shrunk and kept in an LRU.

A reference id is derived from its category and image bytes, so a thumbnail never goes
stale while its id lives; a page of 48 thumbnails costs RPCs only the first time.
"""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict

from PIL import Image, ImageOps

THUMB_PX = 160
PREVIEW_PX = 480


def shrink(data: bytes, size: int = THUMB_PX, quality: int = 80) -> bytes:
    """`data` (any format Pillow reads) as a JPEG that fits in size x size, upright."""
    with Image.open(io.BytesIO(data)) as source:
        source.draft("RGB", (size, size))  # JPEG: decode at reduced size
        image = ImageOps.exif_transpose(source).convert("RGB")
    image.thumbnail((size, size))
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def data_url(data: bytes, size: int = PREVIEW_PX) -> str:
    """A small JPEG of `data` inline in the page (the photo someone just tried)."""
    return "data:image/jpeg;base64," + base64.b64encode(shrink(data, size)).decode()


class ThumbnailCache:
    """Least recently used thumbnails by reference id, at most `capacity` of them."""

    def __init__(self, capacity: int = 2048) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
