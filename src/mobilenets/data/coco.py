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

from ..errors import MobilenetsError

NUM_COCO_IDS = 90  # category ids 1..90
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
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


PLACEHOLDERS = (UNUSED, "???", "")  # what label maps write for the ten unused ids


def is_coco_labels(labels) -> bool:
    """Whether ``labels`` name COCO's 90 ids in order (placeholders allowed for unused ids; a leading
    'background' too)."""
    names = [str(n).strip() for n in labels]
    if len(names) == NUM_COCO_IDS + 1:
        names = names[1:]
    if len(names) != NUM_COCO_IDS:
        return False
    return all(n == ref or (ref == UNUSED and n in PLACEHOLDERS) for n, ref in zip(names, coco_labels()))


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


class AnnotationError(MobilenetsError, ValueError):
    """Detection annotations that cannot be read or do not fit the images or the model (one line)."""


def read_yolo_labels(path: str | os.PathLike, table: tuple[int, ...] | None = None) -> BoxLabels:
    """A YOLO label file (``class cx cy w h`` per line, normalised) as `BoxLabels`.

    ``table`` maps YOLO class ``c`` to a category id (default `coco80_to_id`: the 80 COCO
    classes). A missing file is an image without objects (YOLO's convention); a malformed
    line raises `AnnotationError` naming the file and line.
    """
    path = Path(path)
    ids, boxes = [], []
    table = coco80_to_id() if table is None else table
    try:
        text = path.read_text() if path.exists() else ""
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(f"{path}: cannot read the label file ({type(e).__name__})") from None
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise AnnotationError(f"{path}:{n}: expected 'class cx cy w h', got {line.strip()[:60]!r}")
        try:
            c = int(parts[0])
            cx, cy, w, h = (float(v) for v in parts[1:])
        except ValueError:
            raise AnnotationError(
                f"{path}:{n}: expected 'class cx cy w h' numbers, got {line.strip()[:60]!r}"
            ) from None
        if not 0 <= c < len(table):
            raise AnnotationError(f"{path}:{n}: class {c} is outside the dataset's {len(table)} classes")
        if not all(np.isfinite(v) for v in (cx, cy, w, h)):
            raise AnnotationError(f"{path}:{n}: non-finite box {line.strip()[:60]!r}")
        ids.append(table[c])
        boxes.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return BoxLabels(np.asarray(ids, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4))


def yolo_samples(root: str | os.PathLike, split: str | None = None) -> list[tuple[Path, Path]]:
    """``(image, label file)`` pairs of a YOLO dataset laid out as ``images/<split>``, ``labels/<split>``.

    ``split`` None takes every split folder (coco8: ``train`` and ``val``), sorted by path.
    """
    root = Path(root)
    if not (root / "images").is_dir():
        # a split folder itself (coco8/images/val): its labels are at the same place under labels/
        parts = root.resolve().parts
        if "images" not in parts:
            raise AnnotationError(f"{root}: not a YOLO dataset (no images/ folder, and not inside one); "
                                  "give COCO annotations with --annotations")  # fmt: skip
        i = len(parts) - 1 - parts[::-1].index("images")
        labels = Path(*parts[:i], "labels", *parts[i + 1 :])
        return [(img, labels / img.relative_to(root.resolve()).with_suffix(".txt"))
                for img in sorted(p for p in root.resolve().rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)]  # fmt: skip
    splits = [split] if split else sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    if not splits:
        splits = [""]
    out = []
    for s in splits:
        for img in sorted((root / "images" / s).iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                out.append((img, root / "labels" / s / f"{img.stem}.txt"))
    return out


def coco_categories() -> list[dict]:
    """COCO's 80 ``{"id", "name"}`` categories (the ids that are not "n/a")."""
    return [{"id": i + 1, "name": n} for i, n in enumerate(coco_labels()) if n != UNUSED]


def read_coco_json(path: str | os.PathLike) -> dict:
    """A COCO ``instances*.json`` checked for shape: ``images``, ``annotations``, ``categories`` lists.

    Raises `AnnotationError` (one line) on unreadable JSON, missing keys or entries without
    the fields an evaluation needs (``id``/``file_name``; ``image_id``/``category_id``/``bbox``).
    """
    import json

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(f"{path}: no such annotations file") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AnnotationError(f"{path}: not a readable COCO JSON file ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(
            data.get("annotations"), list):  # fmt: skip
        raise AnnotationError(f"{path}: not COCO instances JSON (needs 'images' and 'annotations' lists)")
    for key, need in (("images", ("id", "file_name")), ("annotations", ("image_id", "category_id", "bbox"))):
        for k, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or any(f not in entry for f in need):
                raise AnnotationError(f"{path}: {key}[{k}] lacks one of {', '.join(need)}")
    for k, a in enumerate(data["annotations"]):
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise AnnotationError(f"{path}: annotations[{k}] bbox is not [x, y, width, height]: {str(box)[:60]}")
    cats = data.get("categories")
    if cats is not None and (not isinstance(cats, list) or any(not isinstance(c, dict) or "id" not in c for c in cats)):
        raise AnnotationError(f"{path}: 'categories' must be a list of {{'id', 'name'}} objects")
    return data
