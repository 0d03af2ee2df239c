"""Decoding untrusted image bytes into RGB images, with limits and actionable errors."""

from __future__ import annotations

import contextlib
import io
import re
import struct
from dataclasses import dataclass

import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP")
_FORMAT_NAMES = {"JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP"}

# Magic numbers, used only to word error messages: PIL itself only gets to parse the
# accepted formats, so a GIF or TIFF never reaches a parser.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (8, b"WEBP", "WebP"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
    (4, b"ftypavif", "AVIF"),
    (0, b"%PDF", "PDF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
)

# Errors PIL raises for malformed or truncated data; anything else is a bug, not bad input.
_PIL_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

# PIL's own bomb guard (a global threshold above ours) fires in open() or load(); the warning
# only arrives as an exception where warnings are configured as errors. Both mean "too large".
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)

_MB = 1024 * 1024
_EXIF_ORIENTATION = 0x0112

# The shape a reference image must have. A reference teaches the catalogue what a category
# looks like; a speck (1x1) or a sliver (1x10000, a banner) shows almost none of the object,
# and the model's square crop of it is mostly padding or one stretched row of pixels: such
# a vector would vote for its category on unrelated photos. A photo to classify may have any
# shape; only what becomes a reference is held to this.
MIN_REFERENCE_SIDE = 32  # pixels, the shorter side
MAX_REFERENCE_ASPECT = 20.0  # longer side / shorter side


@dataclass(frozen=True)
class DecodeLimits:
    """Upper bounds that keep a hostile upload from exhausting memory or CPU."""

    max_bytes: int = 20 * _MB
    max_pixels: int = 50_000_000  # width * height from the header, checked before decoding


class ImageDecodeError(ValueError):
    """Image bytes that cannot be used; the message tells the uploader what to do.

    `index` is the position of the image in a batch, when the error comes from one.
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        self.reason = reason
        self.index = index
        super().__init__(reason if index is None else f"image {index}: {reason}")

    def at(self, index: int) -> ImageDecodeError:
        """The same error, attributed to image `index` of a batch."""
        return ImageDecodeError(self.reason, index)


def decode_image(data: bytes, limits: DecodeLimits, target_size: int | None = None) -> Image.Image:
    """Decode JPEG, PNG or WebP bytes into an upright RGB image.

    `target_size` is the shorter side the caller will resize to; a JPEG is then decoded at
    the largest power-of-two reduction whose sides stay >= target_size, which makes decoding
    large photos several times faster without changing what preprocessing sees.
    """
    if len(data) == 0:
        raise ImageDecodeError("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageDecodeError(
            f"image too large: {len(data) / _MB:.1f} MB, "
            f"the limit is {limits.max_bytes / _MB:.1f} MB"
        )
    image = _open(data, limits)
    fmt = _FORMAT_NAMES[image.format or ""]
    if target_size is not None and image.format == "JPEG":
        image.draft("RGB", (target_size, target_size))
    try:
        image.load()
    except _BOMB_ERRORS as exc:
        raise _bomb_error(exc, limits) from exc
    except _PIL_DATA_ERRORS as exc:
        raise _damaged(fmt, exc) from exc
    # Unreadable EXIF: the pixels are fine, so keep them as stored rather than reject the photo.
    with contextlib.suppress(*_PIL_DATA_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)
    return _to_rgb(image)


def reference_shape_problem(width: int, height: int) -> str | None:
    """Why an image of this size cannot be a reference, or None when it can."""
    short, long = sorted((width, height))
    if short < MIN_REFERENCE_SIDE:
        return (
            f"image too small to be a reference: {width}x{height} pixels; each side must be at "
            f"least {MIN_REFERENCE_SIDE} pixels: send a larger photo of the object"
        )
    if long > MAX_REFERENCE_ASPECT * short:
        return (
            f"image too narrow to be a reference: {width}x{height} pixels, an aspect ratio of "
            f"1:{round(long / short, 1):g}; at most 1:{MAX_REFERENCE_ASPECT:g} is accepted: "
            "crop it to the object"
        )
    return None


def check_reference(data: bytes, limits: DecodeLimits) -> None:
    """Raise ImageDecodeError when these bytes cannot be a reference image because of their
    shape (`reference_shape_problem`), read from the header without decoding the pixels.
    Bytes whose header cannot be read pass: decoding them says why, in its own words."""
    if not 0 < len(data) <= limits.max_bytes:
        return
    try:
        width, height = _open(data, limits).size
    except ImageDecodeError:
        return
    problem = reference_shape_problem(width, height)
    if problem is not None:
        raise ImageDecodeError(problem)


def decode_rgb(data: bytes, limits: DecodeLimits, target_size: int | None = None) -> np.ndarray:
    """Decode like `decode_image`, into an (H, W, 3) uint8 array.

    An upright RGB JPEG that no draft reduction would shrink (the common catalogue photo) is
    decoded by libjpeg-turbo straight into the array: the same pixels as Pillow's, without
    Pillow's copy out of its own buffer (0.8 ms instead of 1.0 ms for a 400x533 photo, and the
    GIL is released throughout). Everything else, and any JPEG libjpeg-turbo complains about,
    takes Pillow's path with its checks and worded errors.
    """
    if data[:3] == b"\xff\xd8\xff" and 0 < len(data) <= limits.max_bytes:
        image = _open(data, limits)
        if _plain_jpeg(image, target_size):
            with contextlib.suppress(ValueError):
                rgb: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB")
                return rgb
    return np.array(decode_image(data, limits, target_size))


def _plain_jpeg(image: Image.Image, target_size: int | None) -> bool:
    """A colour JPEG stored upright that Pillow's draft mode would decode at full size."""
    if image.format != "JPEG" or image.mode != "RGB":
        return False
    with contextlib.suppress(*_PIL_DATA_ERRORS):
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            return False
        return target_size is None or min(image.size) < 2 * target_size
    return False  # unreadable EXIF: Pillow's path decides what to do with it


def _open(data: bytes, limits: DecodeLimits) -> Image.Image:
    """Parse the header of an accepted format and enforce the pixel limit."""
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except _BOMB_ERRORS as exc:
        raise _bomb_error(exc, limits) from exc
    except UnidentifiedImageError as exc:
        raise _unidentified_error(data) from exc
    except _PIL_DATA_ERRORS as exc:
        raise _damaged(_sniff(data) or "image", exc) from exc
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageDecodeError(
            f"image too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"the limit is {limits.max_pixels / 1e6:.1f} megapixels; downscale it first"
        )
    return image


def _sniff(data: bytes) -> str | None:
    """Name the file format from its magic number, for error messages only."""
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _unidentified_error(data: bytes) -> ImageDecodeError:
    fmt = _sniff(data)
    if fmt in _FORMAT_NAMES.values():
        return ImageDecodeError(
            f"corrupt {fmt}: the header cannot be read; re-upload the complete file"
        )
    if fmt is not None:
        return ImageDecodeError(
            f"unsupported image format {fmt}: only JPEG, PNG and WebP are accepted; "
            "convert the image first"
        )
    return ImageDecodeError(
        f"not an image: the bytes are neither JPEG, PNG nor WebP (starts with {data[:8]!r})"
    )


def _bomb_error(exc: Exception, limits: DecodeLimits) -> ImageDecodeError:
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(match.group(1)) / 1e6:.1f} megapixels" if match else "too many pixels"
    return ImageDecodeError(
        f"image too large: {size}, the limit is {limits.max_pixels / 1e6:.1f} megapixels; "
        "downscale it first"
    )


def _damaged(fmt: str, exc: Exception) -> ImageDecodeError:
    if "truncated" in str(exc).lower():
        return ImageDecodeError(
            f"truncated {fmt}: the file ends before the image data does; "
            "re-upload the complete file"
        )
    return ImageDecodeError(f"corrupt {fmt}: {exc}; re-upload or re-export the file")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any decoded mode to RGB; transparent pixels become white, as on a web page."""
    if image.mode.startswith("I;16") or image.mode == "I":
        # 16-bit greyscale: PIL's convert() would clip to 255 and return a white image.
        image = Image.fromarray((np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8))
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")
