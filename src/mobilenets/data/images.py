"""Decode any image file (or bytes) to RGB, or fail with one clear line.

JPEGs are decoded by default exactly as TensorFlow's ``tf.io.decode_jpeg(data, channels=3)``
does (what TF-Slim eval and the Object Detection API use): libjpeg-turbo with the fast
integer DCT and fancy upsampling, through ``simplejpeg``. Pillow's accurate-DCT decode
differs by up to ~24 levels per pixel. ``tests/fixtures/tf_decode_golden.json`` holds TF's
own decode of every shared JPEG and of synthetic edge cases, checked bit for bit.

What the TF-exact path does, like TF:
- grayscale is replicated to three channels; EXIF orientation is ignored;
- CMYK/YCCK JPEGs are converted with TF's formula (``R = K*C/255`` when an Adobe APP14
  marker is present, else ``R = (255-K)*(255-C)/255``), not Pillow's;
- truncated data (no EOI before the data ends) is refused, as TF does by default
  (``try_recover_truncated=False``); recoverable corruption that libjpeg only warns
  about (extraneous bytes, bad Huffman codes) decodes to the same pixels TF gives.
  Known gap: a rare damaged file can still get the other verdict (TF refuses some
  "premature end of data segment" files; simplejpeg refuses a bad JFIF version number).

Other formats go through Pillow, like TF's ``decode_image(channels=3)``: alpha is dropped,
palette and CMYK images are converted, 16-bit images are scaled to 8 bits, animated files
give their first frame, and EXIF orientation is not applied.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError

MIN_IMAGE_SIDE = 8
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
DECODERS = ("tf", "pillow")

_JPEG_MAGIC = b"\xff\xd8\xff"  # the signature both TF and Pillow sniff
_TRUNCATED = "Premature end of JPEG file"  # libjpeg's JWRN_JPEG_EOF: the data ran out


def is_image_file(path: str | os.PathLike) -> bool:
    """True for files whose extension is a known image type (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    source: str | os.PathLike | bytes,
    *,
    decode: Literal["tf", "pillow"] = "tf",
    name: str | None = None,
) -> Image.Image:
    """Decode a path or raw bytes to an 8-bit RGB PIL image; `ImageError` names the problem otherwise.

    Args:
        source: a file path, or the encoded image as ``bytes`` (e.g. an upload).
        decode: ``"tf"`` decodes JPEGs bit-exactly as ``tf.io.decode_jpeg``; ``"pillow"``
            uses Pillow's accurate-DCT decoder. Other formats always go through Pillow.
        name: what error messages call the image (default: the path, or "image bytes").
    """
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, not {decode!r}")
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, label = bytes(source), name or "image bytes"
    else:
        path = Path(source)
        label = name or str(path)
        if not path.exists():
            raise ImageError(f"{label}: no such file")
        if path.is_dir():
            raise ImageError(f"{label}: is a directory, not an image")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{label}: cannot read file ({e.strerror or e})") from None
    if not data:
        raise ImageError(f"{label}: is empty (0 bytes), not an image")
    if decode == "tf" and data.startswith(_JPEG_MAGIC):
        rgb = _decode_jpeg_like_tf(data, label)
    else:
        rgb = _decode_pillow(data, label)
    w, h = rgb.size
    if min(w, h) < MIN_IMAGE_SIDE:
        raise ImageError(f"{label}: image is {w}x{h}; need at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} pixels")
    return rgb


def _decode_pillow(data: bytes, label: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)
            img.load()
            return to_rgb(img)
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image file (or an unsupported format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{label}: cannot decode image ({e})") from None


def _decode_jpeg_like_tf(data: bytes, label: str) -> Image.Image:
    """``tf.io.decode_jpeg(data, channels=3)`` (TF's defaults: fast DCT, fancy upsampling)."""
    try:
        # strict=False: header warnings (stray bytes between markers) don't stop TF either.
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data, strict=False)
    except ValueError as e:
        raise ImageError(f"{label}: cannot decode image (invalid JPEG header: {e})") from None
    except KeyError:  # simplejpeg's lookup of an unknown subsampling code
        raise ImageError(f"{label}: cannot decode image (invalid JPEG header)") from None
    _check_bomb(w, h, label)
    cmyk = colorspace in ("CMYK", "YCCK")
    kwargs = {"colorspace": "CMYK" if cmyk else "RGB", "fastdct": True, "fastupsample": False}
    try:
        # strict=True turns libjpeg's first warning into ValueError, so truncation is seen.
        arr = simplejpeg.decode_jpeg(data, strict=True, **kwargs)
    except ValueError as e:
        arr = _decode_damaged_jpeg(data, label, kwargs, e)
    if cmyk:
        arr = _cmyk_to_rgb_like_tf(arr, _has_adobe_marker(data))
    return Image.fromarray(np.ascontiguousarray(arr), "RGB")


def _decode_damaged_jpeg(data: bytes, label: str, kwargs: dict, warning: ValueError) -> np.ndarray:
    """A JPEG libjpeg complained about: refuse it where TF fails, else decode as TF does.

    TF logs libjpeg's warnings and goes on, but fails on errors and on truncation.
    simplejpeg cannot tell the two apart once a warning was seen (with strict=False a
    later error can return a half-decoded buffer), so Pillow's libjpeg, which keeps
    going after warnings and refuses errors and truncated data like TF, gives the verdict.
    """
    if _TRUNCATED in str(warning) or data.rfind(b"\xff\xd9") < data.rfind(b"\xff\xda"):
        # The data ran out, or the last scan has no EOI after it (0xFF is escaped in scans).
        raise ImageError(f"{label}: cannot decode image (truncated JPEG data: {warning})") from None
    # libjpeg skips stray bytes between header segments; simplejpeg (even with
    # strict=False) and Pillow's header parser refuse them, so drop them first.
    data = _without_stray_header_bytes(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{label}: cannot decode image ({warning}; {e})") from None
    try:
        return simplejpeg.decode_jpeg(data, strict=False, **kwargs)
    except (ValueError, KeyError) as e:
        raise ImageError(f"{label}: cannot decode image ({e})") from None


def _without_stray_header_bytes(data: bytes) -> bytes:
    """``data`` with the bytes libjpeg would skip (with a warning) between header segments removed."""
    out, i, n = [data[:2]], 2, len(data)
    while i + 1 < n:
        if data[i] != 0xFF or data[i + 1] == 0x00:  # garbage, or a stuffed 0xFF00: skipped
            j = data.find(b"\xff", i + (1 if data[i] != 0xFF else 2))
            if j < 0:
                break
            i = j
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # first scan (or EOI): the rest is kept as is
            out.append(data[i:])
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM / RSTn: no length, ignored in a header
            i += 2
            continue
        end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
        out.append(data[i:end])
        i = end
    return b"".join(out)


def _check_bomb(w: int, h: int, label: str) -> None:
    """Pillow's decompression-bomb rule: warn above ``MAX_IMAGE_PIXELS``, refuse above twice that."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None:
        return
    pixels = w * h
    if pixels > 2 * limit:
        raise ImageError(
            f"{label}: cannot decode image (image size ({pixels} pixels) exceeds limit of {2 * limit} pixels, "
            "could be decompression bomb DOS attack)"
        )
    if pixels > limit:
        warnings.warn(
            f"{label}: image size ({pixels} pixels) exceeds limit of {limit} pixels, could be decompression bomb DOS attack.",
            Image.DecompressionBombWarning,
            stacklevel=4,  # the caller of load_image
        )


def _cmyk_to_rgb_like_tf(cmyk: np.ndarray, adobe: bool) -> np.ndarray:
    """TF's jpeg_mem.cc conversion of libjpeg's CMYK output (integer division truncates)."""
    c = cmyk.astype(np.uint16)  # 255 * 255 fits in uint16
    k = c[..., 3:]
    if adobe:  # Adobe writes inverted CMYK
        rgb = k * c[..., :3] // 255
    else:
        rgb = (255 - k) * (255 - c[..., :3]) // 255
    return rgb.astype(np.uint8)


def _has_adobe_marker(data: bytes) -> bool:
    """libjpeg's ``saw_Adobe_marker``: an APP14 segment of >= 12 bytes starting "Adobe" before the first scan."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes; libjpeg skips to the next 0xFF with a warning
            i = data.find(b"\xff", i)
            if i < 0:
                return False
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xDA, 0xD9):  # SOS / EOI: the header is over
            return False
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker == 0xEE and length - 2 >= 12 and data[i + 4 : i + 9] == b"Adobe":
            return True
        i += 2 + length
    return False


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (alpha dropped, 16/32-bit and float scaled to 0..255)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        peak = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        arr = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")
