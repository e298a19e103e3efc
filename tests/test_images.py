"""Image decoding: every mode to RGB, and one clear error for every bad file."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilenets.data.images import load_image
from mobilenets.errors import ImageError

from .conftest import shared_path


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1", "RGB"])
def test_modes_decode_to_rgb(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    elif mode == "P":
        img = rgb.quantize(16)
    else:
        img = rgb.convert(mode)
    path = tmp_path / ("x.tif" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":  # 16-bit scaled back to the 8-bit gray it came from
        np.testing.assert_allclose(np.asarray(out)[..., 0], np.asarray(rgb.convert("L")), atol=1)


def test_real_jpeg_and_bmp():
    assert load_image(shared_path("images", "parrot.jpg")).mode == "RGB"
    assert load_image(shared_path("images", "grace_hopper.bmp")).size == (512, 600)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "nope.jpg")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, not a jpeg\n")
    with pytest.raises(ImageError, match="not an image"):
        load_image(path)


def test_truncated_jpeg(tmp_path):
    src = tmp_path / "full.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src)
    data = src.read_bytes()
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_image(bad)


@pytest.mark.parametrize("size", [(1, 1), (1, 50), (7, 100)])
def test_too_small(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("RGB", size).save(path)
    with pytest.raises(ImageError, match="need at least"):
        load_image(path)


def test_zero_size_png(tmp_path):
    # A PNG header that declares 0x0 pixels (PIL cannot write one).
    import struct
    import zlib

    def chunk(tag: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path = tmp_path / "zero.png"
    path.write_bytes(png)
    with pytest.raises(ImageError):
        load_image(path)
