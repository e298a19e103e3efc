"""Labelled image collections: class folders, the ImageNet val layout, flat WNID files, label files.

Layouts `open_dataset` understands (checked in this order):
1. ``DIR`` + a labels file (``--labels FILE``): lines ``relative/path.jpg<TAB or space>label``,
   label a wnid, a class name or an integer index.
2. One folder per class (ImageNet val ``n01440764/*.JPEG`` or any ``ants/ bees/``).
   Folder names that are all ImageNet wnids map to ImageNet indices; otherwise classes are
   the sorted folder names.
3. A flat folder of ``WNID_*.JPEG`` files (like ``imagenet_samples_100``).

Corrupt images are skipped, counted and reported once (`SkipCorrupt`), never fatal.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import ImageError, MobilenetsError
from .images import is_image_file, load_image
from .labels import imagenet_classes

_WNID = re.compile(r"^n\d{8}$")
_WNID_PREFIX = re.compile(r"^(n\d{8})[_.\-]")


@dataclass
class LabelledImages:
    """A list of (path, class index) with the class names; ``imagenet`` when indices are ImageNet's."""

    samples: list[tuple[Path, int]]
    classes: list[str]
    imagenet: bool = False
    root: Path | None = None
    layout: str = ""

    def __len__(self) -> int:
        return len(self.samples)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def open_dataset(root: str | os.PathLike, labels_file: str | os.PathLike | None = None,
                 classes: list[str] | None = None) -> LabelledImages:  # fmt: skip
    """Find the labelled images under ``root`` (see module docstring); clear errors when there are none.

    ``classes`` fixes the class order (e.g. the names saved with fine-tuned weights) for class folders.
    """
    root = Path(root)
    if not root.exists():
        raise MobilenetsError(f"{root}: no such folder")
    if not root.is_dir():
        raise MobilenetsError(f"{root}: not a folder")
    wnids, names = imagenet_classes()
    wnid_index = {w: i for i, w in enumerate(wnids)}

    if labels_file is not None:
        return _from_labels_file(root, Path(labels_file), wnid_index, names)

    folders = class_folders(root)
    if folders:
        if all(_WNID.match(f.name) for f in folders):
            unknown = [f.name for f in folders if f.name not in wnid_index]
            if unknown:
                raise MobilenetsError(f"{root}: folders {unknown[:3]} are not ImageNet wnids")
            samples = [(p, wnid_index[f.name]) for f in folders for p in _images_in(f)]
            ds = LabelledImages(samples, list(names), True, root, "imagenet-folders")
        else:
            order = [f.name for f in folders]
            if classes is not None:
                extra = sorted(set(order) - set(classes))
                if extra:
                    hint = f"; pass {root}/val" if {"train", "val"} <= set(order) else ""
                    raise MobilenetsError(
                        f"{root}: class folders {extra[:3]} are not among the model's classes {classes[:5]}{hint}"
                    )
                order = list(classes)
            index = {c: i for i, c in enumerate(order)}
            empty = [f.name for f in folders if not _images_in(f)]
            if empty:
                raise MobilenetsError(f"{root}: class folder(s) {', '.join(empty[:3])} contain no images")
            samples = [(p, index[f.name]) for f in folders for p in _images_in(f)]
            ds = LabelledImages(samples, order, False, root, "class-folders")
    else:
        files = _images_in(root)
        tagged = [(p, _WNID_PREFIX.match(p.name)) for p in files]
        samples = [(p, wnid_index[m.group(1)]) for p, m in tagged if m and m.group(1) in wnid_index]
        if files and not samples:
            raise MobilenetsError(
                f"{root}: {len(files)} images but no labels (name files WNID_*.JPEG, use class folders, or pass --labels)"
            )
        ds = LabelledImages(samples, list(names), True, root, "wnid-files")
    if not ds.samples:
        raise MobilenetsError(f"{root}: no images found (extensions: .jpg .jpeg .png .bmp .gif .webp .tif)")
    return ds


def _from_labels_file(
    root: Path, labels_file: Path, wnid_index: dict[str, int], names: tuple[str, ...]
) -> LabelledImages:
    if not labels_file.is_file():
        raise MobilenetsError(f"{labels_file}: no such labels file")
    name_index = {n: i for i, n in enumerate(names)}
    samples = []
    for lineno, line in enumerate(labels_file.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = re.split(r"\t|\s+", line.strip(), maxsplit=1)
        if len(parts) != 2:
            raise MobilenetsError(f"{labels_file}:{lineno}: expected 'path label', got {line!r}")
        rel, label = parts[0], parts[1].strip()
        if label in wnid_index:
            idx = wnid_index[label]
        elif label in name_index:
            idx = name_index[label]
        elif label.isdigit() and int(label) < len(names):
            idx = int(label)
        else:
            raise MobilenetsError(
                f"{labels_file}:{lineno}: unknown label {label!r} (use a wnid, a class name or 0-999)"
            )
        samples.append((root / rel, idx))
    if not samples:
        raise MobilenetsError(f"{labels_file}: no labelled lines")
    return LabelledImages(samples, list(names), True, root, "labels-file")


@dataclass
class SkipCorrupt:
    """Counts images that fail to decode; warns once on stderr (the first file and the reason)."""

    count: int = 0
    first: str = ""
    warned: bool = field(default=False, repr=False)

    def record(self, err: ImageError) -> None:
        self.count += 1
        if not self.warned:
            self.warned = True
            self.first = str(err)
            print(f"mobilenets: warning: skipping unreadable image(s); first: {err}", file=sys.stderr)


class ImageDataset(Dataset):
    """``(tensor, label)`` pairs; an unreadable image yields ``None`` (drop it with `collate_skip`)."""

    def __init__(self, data: LabelledImages, transform: Callable, label_offset: int = 0) -> None:
        self.data, self.transform, self.label_offset = data, transform, label_offset

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, i: int):
        path, label = self.data.samples[i]
        try:
            return self.transform(load_image(path)), label + self.label_offset
        except ImageError as e:
            return e


def collate_skip(batch: list) -> tuple[torch.Tensor | None, torch.Tensor | None, list[ImageError]]:
    """Collate the readable items; unreadable ones (``ImageError``) are returned for the caller to count.

    Safe in DataLoader workers (the errors travel back to the main process, where a
    `SkipCorrupt` records them). Images are None when the whole batch was unreadable.
    """
    good = [b for b in batch if not isinstance(b, ImageError)]
    bad = [b for b in batch if isinstance(b, ImageError)]
    if not good:
        return None, None, bad
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), bad
