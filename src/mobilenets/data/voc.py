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
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import ImageError, MobilenetsError

NUM_VOC_CLASSES = 21
IGNORE_INDEX = 255


class DatasetError(MobilenetsError):
    """A folder that holds no segmentation data this package reads."""


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


class MaskLabelError(ImageError):
    """A mask holding a value that is neither one of the model's classes nor the ignore value 255."""


def read_voc_mask(path: str | os.PathLike, num_classes: int = NUM_VOC_CLASSES) -> np.ndarray:
    """A VOC mask PNG as an H x W uint8 array of class indices (255 = ignore).

    Palette ('P') and grayscale ('L') images are read as the indices they store; RGB
    images are mapped through VOC's colours ((224, 224, 192) -> 255). Any other colour,
    or a value neither below ``num_classes`` nor 255 (`MaskLabelError`), is refused with one line.
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
    bad = (idx >= num_classes) & (idx != IGNORE_INDEX)
    if bad.any():
        what = "a VOC class (0..20)" if num_classes == NUM_VOC_CLASSES else f"a class of the model (0..{num_classes - 1})"
        raise MaskLabelError(f"{path}: value {int(idx[bad][0])} is neither {what} nor 255")
    return idx


@dataclass
class SegmentationData:
    """Image/mask pairs found under a folder, and the images that have no mask."""

    root: Path
    layout: str  # "voc" | "pairs"
    pairs: list[tuple[Path, Path]]
    unpaired: list[Path]  # images (or listed ids) without a mask


def find_segmentation_data(root: str | os.PathLike, split: str = "val") -> SegmentationData:
    """Image/mask pairs in either layout; `DatasetError` (one line) when ``root`` is neither.

    - VOC: ``JPEGImages/<id>.jpg`` + ``SegmentationClass/<id>.png`` (palette PNGs), the ids of
      ``ImageSets/Segmentation/<split>.txt`` when that file exists, else every mask (VOC has many
      more images than masks: images without a mask are simply not segmentation data).
      A listed id whose image or mask is missing is in ``unpaired``.
    - pairs (``voc2012_seg_samples``): ``N_image.<ext>`` beside ``N_target.png`` (RGB-coded or
      palette); an ``N_image`` without its ``N_target`` is in ``unpaired``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such folder (of segmentation data)")
    if (root / "VOC2012" / "JPEGImages").is_dir():  # VOCdevkit/
        root = root / "VOC2012"
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    if images.is_dir() and masks.is_dir():
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if listing.is_file():
            ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        else:
            ids = sorted(p.stem for p in masks.glob("*.png"))
        by_stem = {p.stem: p for p in images.iterdir() if p.is_file()}
        pairs, unpaired = [], []
        for i in ids:
            img, mask = by_stem.get(i), masks / f"{i}.png"
            if img is None or not mask.is_file():
                unpaired.append(img or images / f"{i}.jpg")
            else:
                pairs.append((img, mask))
        return SegmentationData(root, "voc", pairs, unpaired)
    found = sorted(root.glob("*_image.*"), key=_natural)
    if not found:
        raise DatasetError(f"{root}: neither a VOC layout (JPEGImages/ + SegmentationClass/) nor "
                           "N_image.png / N_target.png pairs")  # fmt: skip
    pairs, unpaired = [], []
    for img in found:
        mask = img.with_name(img.name.replace("_image.", "_target.", 1)).with_suffix(".png")
        if mask.is_file():
            pairs.append((img, mask))
        else:
            unpaired.append(img)
    return SegmentationData(root, "pairs", pairs, unpaired)


def _natural(p: Path) -> tuple:
    head = p.name.split("_image.")[0]
    return (0, int(head), "") if head.isdigit() else (1, 0, head)


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Class indices (H x W) as a VOC palette PNG image (the format of VOC's ground truth)."""
    img = Image.fromarray(np.asarray(mask, np.uint8), "P")
    img.putpalette(voc_colormap().reshape(-1).tolist())
    return img
