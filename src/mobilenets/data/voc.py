"""PASCAL VOC segmentation: the 21 class names, the colour palette and mask readers.

VOC 2012 segmentation has 21 classes: 0 = background, 1..20 the objects; 255 marks
pixels left out of training and evaluation (object borders, "difficult" regions). Its
ground-truth PNGs are palette images whose pixel values are the class indices; the
palette is VOC's bit-interleaved colour map (class 1 = (128, 0, 0), ..., 255 =
(224, 224, 192)). Masks saved as RGB (e.g. ``voc2012_seg_samples/*_target.png``) are
mapped back to indices through that palette.

The table ``labels/voc_labels.tsv`` (``index<TAB>name<TAB>r<TAB>g<TAB>b``) holds the names
of Google Coral's ``pascal_voc_segmentation_labels.txt`` (the order DeepLab's PASCAL
models predict in) and the palette colour of each class.
"""

from __future__ import annotations

import os
from functools import cache
from importlib import resources

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError

NUM_VOC_CLASSES = 21
IGNORE_INDEX = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """VOC's colour map, ``n`` x 3 uint8: bits 0/1/2 of the index go, from the most
    significant bit down, into red/green/blue."""
    cmap = np.zeros((n, 3), np.uint8)
    for k in range(n):
        c, r, g, b = k, 0, 0, 0
        for j in range(8):
            r |= (c & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[k] = (r, g, b)
    return cmap


@cache
def _table() -> tuple[tuple[str, ...], np.ndarray]:
    text = resources.files("mobilenets.data.labels").joinpath("voc_labels.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if [int(r[0]) for r in rows] != list(range(NUM_VOC_CLASSES)):
        raise RuntimeError("voc_labels.tsv is damaged: indices are not 0..20 in order")
    colours = np.array([[int(v) for v in r[2:5]] for r in rows], np.uint8)
    colours.setflags(write=False)
    return tuple(r[1] for r in rows), colours


def voc_labels() -> tuple[str, ...]:
    """The 21 class names by index: ``background``, ``aeroplane``, ..., ``tvmonitor``."""
    return _table()[0]


def voc_palette() -> np.ndarray:
    """21 x 3 uint8: the colour of each class in VOC's ground-truth PNGs."""
    return _table()[1]


def _rgb_to_index(rgb: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    colours = voc_palette().astype(np.int32)
    code = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    keys = np.concatenate([(colours[:, 0] << 16) | (colours[:, 1] << 8) | colours[:, 2],
                           [(224 << 16) | (224 << 8) | 192]])  # fmt: skip
    values = np.concatenate([np.arange(NUM_VOC_CLASSES), [IGNORE_INDEX]]).astype(np.uint8)
    order = np.argsort(keys)
    pos = np.clip(np.searchsorted(keys[order], code), 0, len(keys) - 1)
    found = keys[order][pos] == code
    if not found.all():
        bad = rgb[~found][0]
        raise ImageError(f"{path}: colour {tuple(int(v) for v in bad)} is not in the VOC palette")
    return values[order][pos]


def read_voc_mask(path: str | os.PathLike) -> np.ndarray:
    """A VOC mask PNG as an H x W uint8 array of class indices (255 = ignore).

    Palette ('P') and grayscale ('L') images are read as the indices they store; RGB
    images are mapped through VOC's colours ((224, 224, 192) -> 255). Any other value or
    colour is refused with one line.
    """
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"{path}: cannot read mask ({e})") from None
    if mode in ("P", "L"):
        idx = arr.astype(np.uint8)
    elif mode in ("RGB", "RGBA"):
        idx = _rgb_to_index(arr[..., :3], path)
    else:
        raise ImageError(f"{path}: mask mode {mode!r} is not a VOC palette, grayscale or RGB image")
    bad = (idx >= NUM_VOC_CLASSES) & (idx != IGNORE_INDEX)
    if bad.any():
        raise ImageError(f"{path}: value {int(idx[bad][0])} is neither a VOC class (0..20) nor 255")
    return idx


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Class indices (H x W) as a VOC palette PNG image (the format of VOC's ground truth)."""
    img = Image.fromarray(np.asarray(mask, np.uint8), "P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    return img
