"""Untrusted bytes become RGB images or an ImageDecodeError that says what to do."""

from __future__ import annotations

import contextlib
import io
import random
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from embedder.images import (
    MAX_REFERENCE_ASPECT,
    MIN_REFERENCE_SIDE,
    DecodeLimits,
    ImageDecodeError,
    check_reference,
    decode_image,
    decode_rgb,
    reference_shape_problem,
)

LIMITS = DecodeLimits()


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = len(mode)
    shape = (height, width, channels) if channels > 1 else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    body = kind + payload
    return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))


def black_png(width: int, height: int, rows: int | None = None) -> bytes:
    """A valid 8-bit greyscale PNG of zeros; `rows` limits how many rows carry data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    data = b"".join(compressor.compress(row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def decode_error(data: bytes, limits: DecodeLimits = LIMITS) -> str:
    with pytest.raises(ImageDecodeError) as info:
        decode_image(data, limits)
    return str(info.value)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    image = noise()
    decoded = decode_image(encode(image, fmt, quality=95), LIMITS)
    assert decoded.mode == "RGB"
    assert decoded.size == image.size
    if fmt == "PNG":
        assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_lossless_webp_keeps_pixels() -> None:
    image = noise()
    decoded = decode_image(encode(image, "WEBP", lossless=True), LIMITS)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


def test_transparency_is_composited_on_white() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[:, :2] = (255, 0, 0, 0)  # fully transparent red
    rgba[:, 2:] = (255, 0, 0, 128)  # half-transparent red
    decoded = np.asarray(decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"), LIMITS))
    assert (decoded[:, :2] == 255).all()
    assert np.abs(decoded[:, 2:].astype(int) - (255, 127, 127)).max() <= 1


def test_palette_with_transparency_becomes_white() -> None:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 255, 0] + [0, 0, 255] * 255)
    image.putpixel((0, 0), 1)
    data = encode(image, "PNG", transparency=0)
    decoded = np.asarray(decode_image(data, LIMITS))
    assert tuple(decoded[0, 0]) == (0, 0, 255)
    assert tuple(decoded[1, 1]) == (255, 255, 255)


def test_greyscale_becomes_rgb() -> None:
    image = noise(mode="L")
    decoded = np.asarray(decode_image(encode(image, "PNG"), LIMITS))
    assert decoded.shape == (48, 64, 3)
    assert all(np.array_equal(decoded[..., c], np.asarray(image)) for c in range(3))


def test_16_bit_greyscale_keeps_its_range() -> None:
    levels = (np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)
    decoded = np.asarray(decode_image(encode(Image.fromarray(levels), "PNG"), LIMITS))
    assert np.array_equal(decoded[..., 0], (levels >> 8).astype(np.uint8))


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    decoded = np.asarray(decode_image(encode(image, "JPEG", quality=95), LIMITS))
    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded.astype(int) - (255, 0, 0)).max() < 10


def test_exif_orientation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left edge goes on top
    decoded = np.asarray(decode_image(encode(stored, "JPEG", quality=95, exif=exif), LIMITS))
    assert decoded.shape == (40, 20, 3)
    assert decoded[:15, :, 0].mean() > 200 and decoded[:15, :, 2].mean() < 50
    assert decoded[25:, :, 2].mean() > 200 and decoded[25:, :, 0].mean() < 50


def test_empty_bytes() -> None:
    assert decode_error(b"") == "empty image: 0 bytes"


def test_non_image_bytes_say_what_they_start_with() -> None:
    message = decode_error(b"hello, this is text")
    assert message.startswith("not an image: the bytes are neither JPEG, PNG nor WebP")
    assert "b'hello, t'" in message


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_named_and_refused(fmt: str) -> None:
    message = decode_error(encode(noise(), fmt))
    assert message.startswith(f"unsupported image format {fmt}: only JPEG, PNG and WebP")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_files_are_refused(fmt: str) -> None:
    data = encode(noise(200, 150), fmt, quality=95)
    message = decode_error(data[: len(data) // 2])
    assert message == (
        f"truncated {fmt}: the file ends before the image data does; re-upload the complete file"
    )


def test_truncated_webp_is_refused() -> None:
    data = encode(noise(200, 150), "WEBP")
    assert decode_error(data[: len(data) // 2]).startswith("corrupt WebP: ")


def test_decompression_bomb_is_refused_before_decoding() -> None:
    bomb = black_png(8000, 8000)  # 64 megapixels in a file of about 60 kB
    assert len(bomb) < 200_000
    assert decode_error(bomb) == (
        "image too large: 8000x8000 = 64.0 megapixels, the limit is 50.0 megapixels; "
        "downscale it first"
    )


def test_header_claiming_a_gigapixel_is_refused() -> None:
    bomb = black_png(30000, 30000, rows=1)  # PIL's own guard fires while reading the header
    assert decode_error(bomb) == (
        "image too large: 900.0 megapixels, the limit is 50.0 megapixels; downscale it first"
    )


def test_pixel_limit_is_configurable() -> None:
    message = decode_error(encode(noise(20, 10), "PNG"), DecodeLimits(max_pixels=100))
    assert message.startswith("image too large: 20x10 = 0.0 megapixels, the limit is 0.0")


def test_byte_limit_is_checked_before_parsing() -> None:
    data = b"\xff\xd8\xff" + bytes(int(25.3 * 1024 * 1024))
    assert decode_error(data) == "image too large: 25.3 MB, the limit is 20.0 MB"


@pytest.mark.parametrize(
    ("size", "decoded_size"),
    [
        ((4000, 3000), (500, 375)),  # reduced 8x: the largest power of two the decoder offers
        ((2000, 1500), (500, 375)),  # 4x: 8x would give a 188-pixel short side
        ((1023, 767), (512, 384)),
        ((400, 533), (400, 533)),  # the clothing photos: already close to the target
        ((300, 90), (300, 90)),
    ],
)
def test_jpeg_draft_reduces_by_powers_of_two_but_not_below_target(
    size: tuple[int, int], decoded_size: tuple[int, int]
) -> None:
    data = encode(noise(*size), "JPEG")
    assert decode_image(data, LIMITS, target_size=256).size == decoded_size
    assert decode_image(data, LIMITS).size == size


def test_draft_is_only_for_jpeg() -> None:
    assert decode_image(encode(noise(1024, 1024), "PNG"), LIMITS, target_size=256).size == (
        1024,
        1024,
    )


def test_error_can_name_its_image() -> None:
    error = ImageDecodeError("empty image: 0 bytes").at(3)
    assert error.index == 3
    assert str(error) == "image 3: empty image: 0 bytes"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_damaged_files_raise_only_image_decode_errors(fmt: str) -> None:
    """Random truncation and bit flips: decoded as RGB, or refused with ImageDecodeError."""
    data = encode(noise(48, 32), fmt)
    rng = random.Random(0)
    for _ in range(150):
        damaged = bytearray(data[: rng.randrange(1, len(data) + 1)])
        for _ in range(rng.randrange(4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        with contextlib.suppress(ImageDecodeError):
            assert decode_image(bytes(damaged), LIMITS).mode == "RGB"


def _rotated_jpeg() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(noise(40, 20), "JPEG", quality=95, exif=exif)


@pytest.mark.parametrize(
    "data",
    [
        encode(noise(400, 533), "JPEG", quality=90),  # 4:2:0, the usual photo: the fast path
        encode(noise(300, 200), "JPEG", quality=95, subsampling=0),  # 4:4:4
        encode(noise(1200, 900), "JPEG"),  # big enough for Pillow's draft reduction
        encode(noise(64, 48, mode="L"), "JPEG"),
        encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG"),
        _rotated_jpeg(),
        encode(noise(64, 48), "PNG"),
        encode(noise(64, 48), "WEBP", lossless=True),
    ],
    ids=["rgb", "444", "drafted", "grey", "cmyk", "rotated", "png", "webp"],
)
def test_decode_rgb_gives_exactly_pillows_pixels(data: bytes) -> None:
    expected = np.asarray(decode_image(data, LIMITS, target_size=256))
    decoded = decode_rgb(data, LIMITS, target_size=256)
    assert decoded.dtype == np.uint8 and decoded.flags.writeable
    np.testing.assert_array_equal(decoded, expected)


def test_decode_rgb_refuses_damaged_jpegs_as_decode_image_does() -> None:
    """libjpeg-turbo's complaints send a JPEG down Pillow's path: same pixels or same error."""
    data = encode(noise(96, 64), "JPEG")
    rng = random.Random(1)
    for _ in range(150):
        damaged = bytearray(data[: rng.randrange(1, len(data) + 1)])
        for _ in range(rng.randrange(4)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        try:
            expected = np.asarray(decode_image(bytes(damaged), LIMITS))
        except ImageDecodeError as exc:
            with pytest.raises(ImageDecodeError, match=re.escape(str(exc))):
                decode_rgb(bytes(damaged), LIMITS)
        else:
            np.testing.assert_array_equal(decode_rgb(bytes(damaged), LIMITS), expected)


@pytest.mark.parametrize(
    ("width", "height", "fits"),
    [
        (MIN_REFERENCE_SIDE, MIN_REFERENCE_SIDE, True),
        (MIN_REFERENCE_SIDE, int(MIN_REFERENCE_SIDE * MAX_REFERENCE_ASPECT), True),
        (int(MIN_REFERENCE_SIDE * MAX_REFERENCE_ASPECT) + 1, MIN_REFERENCE_SIDE, False),
        (MIN_REFERENCE_SIDE - 1, 400, False),
        (1, 1, False),
        (1, 10000, False),
        (4000, 3000, True),
    ],
)
def test_the_shape_a_reference_must_have(width: int, height: int, fits: bool) -> None:
    assert (reference_shape_problem(width, height) is None) == fits


def test_a_reference_s_shape_is_read_from_the_header() -> None:
    check_reference(encode(noise(64, 48), "PNG"), LIMITS)  # fits: nothing raised
    with pytest.raises(ImageDecodeError, match=r"too small .* 8x400 pixels"):
        check_reference(encode(noise(8, 400), "WEBP"), LIMITS)
    with pytest.raises(ImageDecodeError, match=r"too narrow .* 1:25; at most 1:20"):
        check_reference(encode(noise(1000, 40), "JPEG"), LIMITS)
    # Bytes it cannot read pass: decoding them says why.
    check_reference(b"not an image", LIMITS)
    check_reference(b"", LIMITS)
