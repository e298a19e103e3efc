"""COCO label map (the 90 category ids of the detection zoo) and YOLO-format label files.

COCO numbers its 80 object categories with ids 1..90 (ten ids are unused, "n/a"). Google's
detection models (TF Object Detection API, ``coco_ssd_mobilenet_v1``) predict 91 outputs:
index 0 is 'background' and index ``k`` is COCO id ``k``; the TFLite post-process op then
reports ``class = id - 1``. YOLO label files (Ultralytics ``coco8``) number the 80 used
categories 0..79 in id order, so class80 ``c`` is the ``c``-th id that is not "n/a".

The table ``labels/coco_labels.tsv`` (``id<TAB>name``) is copied from Google Coral's
``coco_labels.txt``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np

NUM_COCO_IDS = 90  # category ids 1..90
UNUSED = "n/a"


@cache
def coco_labels() -> tuple[str, ...]:
    """The 90 names by category id: entry ``k`` is COCO id ``k + 1`` ("n/a" for unused ids)."""
    text = resources.files("mobilenets.data.labels").joinpath("coco_labels.tsv").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines() if line.strip()]
    ids = [int(r[0]) for r in rows]
    if ids != list(range(1, NUM_COCO_IDS + 1)):
        raise RuntimeError("coco_labels.tsv is damaged: ids are not 1..90 in order")
    return tuple(r[1] for r in rows)


def coco_detection_labels() -> tuple[str, ...]:
    """91 names for a TF detection head: index 0 'background', index ``k`` = COCO id ``k``."""
    return ("background", *coco_labels())


@cache
def coco80_to_id() -> tuple[int, ...]:
    """COCO category id of each of the 80 used classes (YOLO class80 ``c`` -> id)."""
    return tuple(i + 1 for i, name in enumerate(coco_labels()) if name != UNUSED)


def coco_name(category_id: int) -> str:
    """Name of a COCO category id (1..90)."""
    if not 1 <= int(category_id) <= NUM_COCO_IDS:
        raise ValueError(f"COCO category ids are 1..{NUM_COCO_IDS}, got {category_id}")
    return coco_labels()[int(category_id) - 1]


@dataclass(frozen=True)
class BoxLabels:
    """Ground truth of one image, in the detector's convention.

    ``boxes`` is K x 4 ``(ymin, xmin, ymax, xmax)`` normalised to [0, 1] (like the detector's
    ``boxes`` output); ``category_ids`` are COCO ids 1..90 (detector class + 1).
    """

    category_ids: np.ndarray  # int64 [K]
    boxes: np.ndarray  # float32 [K, 4]

    def __len__(self) -> int:
        return int(self.category_ids.shape[0])


def read_yolo_labels(path: str | os.PathLike) -> BoxLabels:
    """A YOLO label file (``class80 cx cy w h`` per line, normalised) as `BoxLabels`.

    A missing file is an image without objects (YOLO's convention).
    """
    path = Path(path)
    ids, boxes = [], []
    table = coco80_to_id()
    text = path.read_text() if path.exists() else ""
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise ValueError(f"{path}:{n}: expected 'class cx cy w h', got {line!r}")
        c = int(parts[0])
        if not 0 <= c < len(table):
            raise ValueError(f"{path}:{n}: class {c} is outside the 80 COCO classes")
        cx, cy, w, h = (float(v) for v in parts[1:])
        ids.append(table[c])
        boxes.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return BoxLabels(np.asarray(ids, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4))


def yolo_samples(root: str | os.PathLike, split: str | None = None) -> list[tuple[Path, Path]]:
    """``(image, label file)`` pairs of a YOLO dataset laid out as ``images/<split>``, ``labels/<split>``.

    ``split`` None takes every split folder (coco8: ``train`` and ``val``), sorted by path.
    """
    root = Path(root)
    splits = [split] if split else sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    out = []
    for s in splits:
        for img in sorted((root / "images" / s).iterdir()):
            if img.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"):
                out.append((img, root / "labels" / s / f"{img.stem}.txt"))
    return out
