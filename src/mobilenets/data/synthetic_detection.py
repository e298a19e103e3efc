"""A small real-photo detection set with known boxes: object photos pasted onto background photos.

Each object is the central crop of a photo of one class (``hymenoptera``: ``ants`` / ``bees``),
pasted at a random scale and place onto a random crop of a background photo that shows
none of the classes (COCO8, ImageNet samples without ants or bees). The train split takes
its objects from ``<objects>/train`` and its backgrounds from every other background photo,
the val split from ``<objects>/val`` and the remaining backgrounds: no photo is in both.

Written in both layouts the library reads::

    <out>/images/{train,val}/*.jpg          YOLO: labels/<split>/<stem>.txt ("class cx cy w h")
    <out>/labels/{train,val}/*.txt
    <out>/annotations/instances_{train,val}.json   the same boxes as COCO JSON (category ids 1..K)
    <out>/classes.txt                       class names, one a line (YOLO class c = line c)
    <out>/manifest.json                     the settings, the sources and the counts

Deterministic: image ``i`` of split ``s`` draws everything from ``default_rng([seed, s, i])``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import MobilenetsError
from ..utils import atomic_write
from .coco import IMAGE_SUFFIXES
from .images import load_image

SPLITS = ("train", "val")
# ImageNet sample names that show a class of the objects (never a background)
EXCLUDE_BACKGROUND = ("_ant", "_bee", "ant.", "bee.")


@dataclass(frozen=True)
class SyntheticDetectionSpec:
    """The settings of one generated set (plain data, recorded in manifest.json)."""

    seed: int = 0
    train_images: int = 160
    val_images: int = 60
    objects_per_image: tuple[int, int] = (1, 2)  # inclusive range
    object_scale: tuple[float, float] = (0.3, 0.6)  # longer side of the object / shorter side of the image
    central_crop: float = 0.7  # fraction of each side of the object photo kept
    image_size: tuple[int, int] = (320, 320)  # (width, height) of every generated image
    max_overlap: float = 0.1  # IoU limit between two pasted objects
    quality: int = 92


def _photos(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def default_backgrounds(shared: Path) -> list[Path]:
    """Background photos under a shared data folder: COCO8 and the ImageNet samples minus ants and bees."""
    found = []
    for sub in ("coco8/images", "imagenet_samples_100"):
        if (shared / sub).is_dir():
            found += [p for p in _photos(shared / sub) if not any(t in p.name.lower() for t in EXCLUDE_BACKGROUND)]
    return found


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


class _Photos:
    """Decoded photos, each read once."""

    def __init__(self) -> None:
        self.cache: dict[Path, Image.Image] = {}

    def get(self, path: Path) -> Image.Image:
        if path not in self.cache:
            self.cache[path] = load_image(path, decode="pillow")
        return self.cache[path]


def _compose(rng: np.random.Generator, spec: SyntheticDetectionSpec, objects: list[tuple[Path, int]],
             backgrounds: list[Path], photos: _Photos) -> tuple[Image.Image, list[tuple[int, tuple]]]:  # fmt: skip
    """One image and its ``(class, (x0, y0, x1, y1) pixels)`` boxes."""
    w, h = spec.image_size
    bg = photos.get(backgrounds[int(rng.integers(len(backgrounds)))])
    # a random crop of the background (half to all of each side), resized to the output size
    fw, fh = rng.uniform(0.5, 1.0, size=2)
    cw, ch = max(1, round(bg.width * fw)), max(1, round(bg.height * fh))
    cx, cy = int(rng.integers(bg.width - cw + 1)), int(rng.integers(bg.height - ch + 1))
    canvas = bg.crop((cx, cy, cx + cw, cy + ch)).resize((w, h), Image.BILINEAR)
    if rng.random() < 0.5:
        canvas = canvas.transpose(Image.FLIP_LEFT_RIGHT)
    lo, hi = spec.objects_per_image
    placed: list[tuple[int, tuple]] = []
    for _ in range(int(rng.integers(lo, hi + 1))):
        path, cls = objects[int(rng.integers(len(objects)))]
        photo = photos.get(path)
        k = spec.central_crop
        pw, ph = photo.width * k, photo.height * k
        px, py = (photo.width - pw) / 2, (photo.height - ph) / 2
        obj = photo.crop((round(px), round(py), round(px + pw), round(py + ph)))
        side = rng.uniform(*spec.object_scale) * min(w, h)
        scale = side / max(obj.width, obj.height)
        ow, oh = max(8, round(obj.width * scale)), max(8, round(obj.height * scale))
        for _try in range(30):
            x0, y0 = int(rng.integers(w - ow + 1)), int(rng.integers(h - oh + 1))
            box = (x0, y0, x0 + ow, y0 + oh)
            if all(_iou(box, b) <= spec.max_overlap for _, b in placed):
                break
        else:
            continue  # no free place: fewer objects in this image
        canvas.paste(obj.resize((ow, oh), Image.BILINEAR), (x0, y0))
        placed.append((cls, box))
    return canvas, placed


def make_detection_set(out: str | os.PathLike, objects_root: str | os.PathLike,
                       backgrounds: list[str | os.PathLike] | None = None,
                       spec: SyntheticDetectionSpec | None = None) -> dict:  # fmt: skip
    """Write a detection set (both YOLO and COCO layouts, see the module docstring) into ``out``.

    Args:
        out: a new or empty folder.
        objects_root: ``train/<class>/*`` and ``val/<class>/*`` photos (e.g. hymenoptera); the
            class folders, sorted, are the classes.
        backgrounds: background photos (default: `default_backgrounds` of ``objects_root``'s parent).
        spec: the settings (`SyntheticDetectionSpec`).

    Returns the manifest (also written to ``out/manifest.json``).
    """
    spec = spec or SyntheticDetectionSpec()
    out, objects_root = Path(out), Path(objects_root)
    if out.exists() and any(out.iterdir()):
        raise MobilenetsError(f"{out}: not empty; choose a new folder for the detection set")
    classes = sorted(p.name for p in (objects_root / "train").iterdir() if p.is_dir()) if (
        objects_root / "train").is_dir() else []  # fmt: skip
    if not classes:
        raise MobilenetsError(f"{objects_root}: expected train/<class>/ and val/<class>/ photo folders")
    bgs = sorted(Path(p) for p in backgrounds) if backgrounds else default_backgrounds(objects_root.parent)
    if len(bgs) < 2:
        raise MobilenetsError("need at least two background photos (one per split)")
    split_bgs = {"train": bgs[0::2], "val": bgs[1::2]}
    photos = _Photos()
    counts: dict[str, dict[str, int]] = {}
    for s, split in enumerate(SPLITS):
        objects = [(p, c) for c, name in enumerate(classes) for p in _photos(objects_root / split / name)]
        if not objects:
            raise MobilenetsError(f"{objects_root}/{split}: no object photos")
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        n = spec.train_images if split == "train" else spec.val_images
        coco: dict = {"images": [], "annotations": [],
                      "categories": [{"id": c + 1, "name": name} for c, name in enumerate(classes)]}  # fmt: skip
        per_class = [0] * len(classes)
        for i in range(n):
            rng = np.random.default_rng([spec.seed, s, i])
            image, boxes = _compose(rng, spec, objects, split_bgs[split], photos)
            stem = f"{split}_{i:04d}"
            with atomic_write(out / "images" / split / f"{stem}.jpg") as tmp:
                image.save(tmp, format="JPEG", quality=spec.quality)
            w, h = image.size
            lines = []
            coco["images"].append({"id": i + 1, "file_name": f"{stem}.jpg", "width": w, "height": h})
            for cls, (x0, y0, x1, y1) in boxes:
                lines.append(f"{cls} {(x0 + x1) / 2 / w:.6f} {(y0 + y1) / 2 / h:.6f} {(x1 - x0) / w:.6f} "
                             f"{(y1 - y0) / h:.6f}")  # fmt: skip
                coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i + 1,
                                            "category_id": cls + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                            "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})  # fmt: skip
                per_class[cls] += 1
            with atomic_write(out / "labels" / split / f"{stem}.txt") as tmp:
                tmp.write_text("".join(line + "\n" for line in lines))
        (out / "annotations").mkdir(exist_ok=True)
        with atomic_write(out / "annotations" / f"instances_{split}.json") as tmp:
            tmp.write_text(json.dumps(coco))
        counts[split] = {"images": n, "boxes": sum(per_class), **dict(zip(classes, per_class))}
    with atomic_write(out / "classes.txt") as tmp:
        tmp.write_text("".join(c + "\n" for c in classes))
    manifest = {"spec": asdict(spec), "classes": classes, "objects": str(objects_root),
                "backgrounds": {k: [str(p) for p in v] for k, v in split_bgs.items()}, "counts": counts}  # fmt: skip
    with atomic_write(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return manifest
