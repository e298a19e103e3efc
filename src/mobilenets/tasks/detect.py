"""Detect objects and evaluate COCO mAP with any `Predictor` that gives ``boxes``/``classes``/``scores``/``count``.

The model sees the whole image resized to its input size (SSD's contract: no crop) and
returns, per image, K rows of normalised ``(ymin, xmin, ymax, xmax)`` boxes, classes
without background and scores, of which the first ``count`` are valid (the layout of
``TFLite_Detection_PostProcess``, on every backend). `detect_batch` turns them into
`Detection` objects in the pixels of each original image, clipped to it: ``category_id``
is ``class + 1`` (COCO's id for COCO models), ``label`` the weights' name for it.

`evaluate_detection` scores a predictor with pycocotools (``pip install 'mobilenets[coco]'``)
on COCO ``instances.json`` annotations or on a YOLO layout (``images/<split>`` +
``labels/<split>``, e.g. Ultralytics' coco8), converted to COCO JSON in memory. Every
image gets all its valid rows (no score threshold: mAP integrates over all of them).
What it does with bad data:

- unreadable JSON, a file without ``images``/``annotations``, a malformed YOLO line, a box
  that is not four numbers, no ground-truth box at all, categories that do not exist in
  the model: **one-line error** (`data.coco.AnnotationError`);
- an image listed but missing or unreadable, an annotation for an image id that is not
  listed: **counted skips** (``skipped`` in the result, with the first reasons);
- a box partly outside its image is clipped to it; a box of zero area (after clipping)
  is dropped and counted (``dropped_boxes``), as COCO ignores it.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.coco import (
    AnnotationError,
    coco80_to_id,
    coco_categories,
    is_coco_labels,
    read_coco_json,
    read_yolo_labels,  # fmt: skip
    yolo_samples,
)
from ..errors import ImageError, MobilenetsError
from ..runtime import Predictor
from . import Skipped, check_task

EVAL_MAX_DETS = (1, 10, 100)  # COCOeval's defaults


@dataclass(frozen=True)
class Detection:
    """One detected object: box ``[x0, y0, x1, y1]`` in pixels of the original image."""

    label: str
    category_id: int
    score: float
    box: tuple[float, float, float, float]

    def as_dict(self) -> dict:
        return {"label": self.label, "category_id": self.category_id, "score": round(self.score, 6),
                "box": [round(v, 2) for v in self.box]}  # fmt: skip


def _label(predictor: Predictor, cls: int) -> str:
    return predictor.label(cls + predictor.cfg.label_offset)


def detections_of(predictor: Predictor, out: dict[str, np.ndarray], i: int, size: tuple[int, int],
                  score_threshold: float = 0.5, max_detections: int | None = None) -> list[Detection]:  # fmt: skip
    """Row ``i`` of a predictor's detection outputs as `Detection` objects for an image of ``size`` (width, height)."""
    w, h = size
    n = round(float(out["count"][i]))
    boxes, classes, scores = out["boxes"][i][:n], out["classes"][i][:n], out["scores"][i][:n]
    dets = []
    for box, c, s in zip(boxes, classes, scores):
        if s < score_threshold:
            continue
        ymin, xmin, ymax, xmax = (float(v) for v in box)
        x0, x1 = min(max(xmin * w, 0.0), w), min(max(xmax * w, 0.0), w)
        y0, y1 = min(max(ymin * h, 0.0), h), min(max(ymax * h, 0.0), h)
        c = round(float(c))
        dets.append(Detection(_label(predictor, c), c + 1, float(s), (x0, y0, x1, y1)))
    dets.sort(key=lambda d: -d.score)  # the post-process op already orders them; keep it stable anyway
    return dets[:max_detections] if max_detections is not None else dets


def detect_batch(predictor: Predictor, batch: np.ndarray, sizes: list[tuple[int, int]],
                 score_threshold: float = 0.5, max_detections: int | None = None) -> list[list[Detection]]:  # fmt: skip
    """Detections for each row of a preprocessed batch; ``sizes`` are the original images' (width, height)."""
    if len(sizes) != len(batch):
        raise MobilenetsError(f"{len(sizes)} image sizes for a batch of {len(batch)}")
    out = predictor.run(batch, ("boxes", "classes", "scores", "count"))
    return [detections_of(predictor, out, i, size, score_threshold, max_detections) for i, size in enumerate(sizes)]


@dataclass
class ImageDetections:
    """All detections of one image, with its size (and the decoded photo, for drawing)."""

    image: str
    width: int
    height: int
    detections: list[Detection]
    photo: Image.Image | None = field(default=None, repr=False)

    def as_dict(self) -> dict:
        return {"image": self.image, "width": self.width, "height": self.height,
                "detections": [d.as_dict() for d in self.detections]}  # fmt: skip


def detect_images(predictor: Predictor, paths: list[str | os.PathLike], score_threshold: float = 0.5,
                  max_detections: int | None = None, batch_size: int = 8, strict: bool = False,
                  skipped: Skipped | None = None, keep_photos: bool = False) -> list[ImageDetections]:  # fmt: skip
    """Detect objects in each image file; unreadable ones go to ``skipped`` (or raise with ``strict``)."""
    check_task(predictor, "detect")
    transform = predictor.transform
    results: list[ImageDetections] = []
    pending: list[tuple[Path, Image.Image, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        batch = np.stack([x for _, _, x in pending])
        sizes = [photo.size for _, photo, _ in pending]
        for (path, photo, _), dets in zip(
            pending, detect_batch(predictor, batch, sizes, score_threshold, max_detections)
        ):
            results.append(ImageDetections(str(path), photo.width, photo.height, dets, photo if keep_photos else None))
        pending.clear()

    for path in paths:
        try:
            photo = transform.load(path)
            pending.append((Path(path), photo, transform(photo).numpy()))
        except ImageError as e:
            if strict or skipped is None:
                raise
            skipped.errors.append((Path(path), str(e)))
        if len(pending) == batch_size:
            flush()
    flush()
    return results


# --- drawing -----------------------------------------------------------------------------------

_PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))  # fmt: skip


def draw_detections(photo: Image.Image, detections: list[Detection]) -> Image.Image:
    """A copy of ``photo`` with each box outlined and labelled ``label score`` (colour by category)."""
    from PIL import ImageDraw, ImageFont

    out = photo.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(2, round(min(out.size) / 200))
    for d in detections:
        colour = _PALETTE[d.category_id % len(_PALETTE)]
        x0, y0, x1, y1 = d.box
        draw.rectangle((x0, y0, x1, y1), outline=colour, width=width)
        text = f"{d.label} {d.score:.2f}"
        tw = draw.textlength(text, font=font)
        ty = max(0.0, y0 - 12)
        draw.rectangle((x0, ty, x0 + tw + 4, ty + 12), fill=colour)
        draw.text((x0 + 2, ty), text, fill=(0, 0, 0), font=font)
    return out


def save_drawn(result: ImageDetections, save_dir: str | os.PathLike) -> Path:
    """Write ``<stem>.jpg`` (the image with its boxes drawn) into ``save_dir``; returns the path."""
    from ..data.images import load_image
    from ..utils import atomic_write

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    photo = result.photo if result.photo is not None else load_image(result.image, decode="pillow")
    path = save_dir / f"{Path(result.image).stem}.jpg"
    with atomic_write(path) as tmp:
        draw_detections(photo, result.detections).save(tmp, format="JPEG", quality=90)
    return path


# --- ground truth --------------------------------------------------------------------------------


def require_pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MobilenetsError("COCO mAP needs pycocotools: pip install 'mobilenets[coco]'") from None
    return COCO, COCOeval


def _is_coco_model(predictor: Predictor) -> bool:
    """Whether the model's classes are COCO's 90 ids (class ``c`` = id ``c + 1``)."""
    labels = predictor.labels
    return bool(labels) and is_coco_labels(list(labels)[predictor.cfg.label_offset :])


def model_categories(predictor: Predictor) -> list[dict]:
    """``{"id", "name"}`` for each class the model reports (id = class + 1; COCO's "n/a" ids left out)."""
    if _is_coco_model(predictor):
        return coco_categories()
    k = predictor.num_classes - predictor.cfg.label_offset
    return [{"id": c + 1, "name": _label(predictor, c)} for c in range(k)]


@dataclass
class GroundTruth:
    """A COCO-format dataset in memory plus where each image's file is."""

    coco: dict
    files: dict[int, Path]  # image id -> file
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_boxes: int = 0


def _yolo_ground_truth(data: Path, predictor: Predictor) -> GroundTruth:
    if _is_coco_model(predictor):
        table = coco80_to_id()
    else:
        table = tuple(range(1, predictor.num_classes - predictor.cfg.label_offset + 1))
    samples = yolo_samples(data)
    if not samples:
        raise AnnotationError(f"{data}: no images in the YOLO layout")
    images, anns, files = [], [], {}
    for k, (img, label_file) in enumerate(samples, 1):
        labels = read_yolo_labels(label_file, table)
        images.append({"id": k, "file_name": str(img)})
        files[k] = img
        for cid, (ymin, xmin, ymax, xmax) in zip(labels.category_ids.tolist(), labels.boxes.tolist()):
            # normalised now; made pixels once the image's size is known (`_finish`)
            anns.append({"image_id": k, "category_id": int(cid), "bbox_norm": [xmin, ymin, xmax, ymax]})
    return GroundTruth({"images": images, "annotations": anns}, files)


def _coco_ground_truth(data: Path, annotations: Path, predictor: Predictor) -> GroundTruth:
    raw = read_coco_json(annotations)
    gt = GroundTruth({"images": [], "annotations": []}, {})
    ids = set()
    for entry in raw["images"]:
        name = str(entry["file_name"])
        path = data / name
        if not path.is_file() and (data / Path(name).name).is_file():
            path = data / Path(name).name
        image_id = entry["id"]
        if image_id in ids:
            raise AnnotationError(f"{annotations}: image id {image_id} is listed twice")
        ids.add(image_id)
        gt.coco["images"].append({"id": image_id, "file_name": name,
                                  **({"width": entry["width"], "height": entry["height"]}
                                     if "width" in entry and "height" in entry else {})})  # fmt: skip
        gt.files[image_id] = path
    # categories: by name when the file names them (a dataset may number its own way), else by id
    ours = {c["name"]: c["id"] for c in model_categories(predictor)}
    remap: dict = {}
    for c in raw.get("categories") or []:
        if c.get("name") in ours:
            remap[c["id"]] = ours[c["name"]]
    valid = set(ours.values())
    orphans = 0
    for a in raw["annotations"]:
        if a["image_id"] not in ids:
            orphans += 1
            continue
        cid = remap.get(a["category_id"], a["category_id"] if not remap else None)
        if cid not in valid:
            raise AnnotationError(f"{annotations}: category {a['category_id']} is not a class of {predictor.name}")
        x, y, w, h = (float(v) for v in a["bbox"])
        gt.coco["annotations"].append({"image_id": a["image_id"], "category_id": cid, "bbox_px": [x, y, x + w, y + h],
                                       "iscrowd": int(a.get("iscrowd", 0))})  # fmt: skip
    if orphans:
        gt.skipped.append((str(annotations), f"{orphans} annotation(s) for image ids not listed in 'images'"))
    return gt


def _finish(gt: GroundTruth, sizes: dict[int, tuple[int, int]]) -> dict:
    """Pixel ``[x, y, w, h]`` boxes clipped to their image, zero-area ones dropped; the images that were read."""
    anns = []
    for a in gt.coco["annotations"]:
        if a["image_id"] not in sizes:
            continue
        w, h = sizes[a["image_id"]]
        if "bbox_norm" in a:
            x0, y0, x1, y1 = a["bbox_norm"]
            x0, x1, y0, y1 = x0 * w, x1 * w, y0 * h, y1 * h
        else:
            x0, y0, x1, y1 = a["bbox_px"]
        x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
        y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
        if x1 - x0 <= 0 or y1 - y0 <= 0:
            gt.dropped_boxes += 1
            continue
        box = [x0, y0, x1 - x0, y1 - y0]
        anns.append({"id": len(anns) + 1, "image_id": a["image_id"], "category_id": a["category_id"], "bbox": box,
                     "area": box[2] * box[3], "iscrowd": a.get("iscrowd", 0)})  # fmt: skip
    images = [{**im, "width": sizes[im["id"]][0], "height": sizes[im["id"]][1]} for im in gt.coco["images"]
              if im["id"] in sizes]  # fmt: skip
    return {"images": images, "annotations": anns, "categories": []}


# --- evaluation ----------------------------------------------------------------------------------


@dataclass
class DetectionResult:
    """COCO box mAP (pycocotools' COCOeval) of one predictor on one dataset."""

    stats: list[float]  # COCOeval.stats: AP, AP50, AP75, AP small/medium/large, AR@1/10/100, AR s/m/l
    per_class: dict[str, float]  # AP@[.5:.95] per category present in the ground truth
    n: int
    boxes: int
    detections: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    dropped_boxes: int = 0
    seconds: float = 0.0
    data: str = ""
    model: str = ""

    def as_dict(self) -> dict:
        s = [None if v < 0 else float(v) for v in self.stats]  # COCOeval's -1: no box of that size
        return {"map": s[0], "map50": s[1], "map75": s[2], "map_small": s[3], "map_medium": s[4], "map_large": s[5],
                "mar1": s[6], "mar10": s[7], "mar100": s[8], "per_class": self.per_class, "n": self.n,
                "boxes": self.boxes, "detections": self.detections, "skipped": len(self.skipped),
                "skipped_first": [f"{f}: {r}" for f, r in self.skipped[:3]], "dropped_boxes": self.dropped_boxes,
                "images_per_s": self.n / self.seconds if self.seconds else None, "data": self.data}  # fmt: skip

    def summary(self) -> str:
        d = self.as_dict()

        def pct(v: float | None) -> str:
            return "  n/a" if v is None else f"{100 * v:5.2f}"

        skipped = f", {len(self.skipped)} skipped (first: {self.skipped[0][1]})" if self.skipped else ""
        dropped = f", {self.dropped_boxes} empty boxes dropped" if self.dropped_boxes else ""
        head = (f"{self.model} on {self.data}: mAP {pct(d['map'])}  mAP50 {pct(d['map50'])}  mAP75 {pct(d['map75'])}  "
                f"(small {pct(d['map_small'])}, medium {pct(d['map_medium'])}, large {pct(d['map_large'])})  "
                f"n={self.n} images, {self.boxes} boxes{skipped}{dropped}")  # fmt: skip
        lines = [head]
        for label, ap in sorted(self.per_class.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {label:<16} AP {100 * ap:6.2f}")
        return "\n".join(lines)


def evaluate_detection(predictor: Predictor, data: str | os.PathLike, annotations: str | os.PathLike | None = None,
                       limit: int | None = None, batch_size: int = 8) -> DetectionResult:  # fmt: skip
    """COCO mAP of ``predictor`` on the images under ``data`` (see the module docstring for the layouts)."""
    COCO, COCOeval = require_pycocotools()
    check_task(predictor, "detect")
    data = Path(data)
    if not data.is_dir():
        raise AnnotationError(f"{data}: not a folder of images")
    if limit is not None and limit <= 0:
        raise MobilenetsError(f"--limit must be > 0, got {limit}")
    gt = _coco_ground_truth(data, Path(annotations), predictor) if annotations else _yolo_ground_truth(data, predictor)
    image_ids = [im["id"] for im in gt.coco["images"]][:limit]
    transform = predictor.transform
    results, sizes = [], {}
    start = time.perf_counter()
    pending: list[tuple[int, tuple[int, int], np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        out = predictor.run(np.stack([x for _, _, x in pending]), ("boxes", "classes", "scores", "count"))
        for i, (image_id, size, _) in enumerate(pending):
            for d in detections_of(predictor, out, i, size, score_threshold=0.0):
                x0, y0, x1, y1 = d.box
                results.append({"image_id": image_id, "category_id": d.category_id, "score": d.score,
                                "bbox": [x0, y0, x1 - x0, y1 - y0]})  # fmt: skip
        pending.clear()

    for image_id in image_ids:
        path = gt.files[image_id]
        if not path.is_file():
            gt.skipped.append((str(path), "image listed in the annotations but missing"))
            continue
        try:
            photo = transform.load(path)
            x = transform(photo).numpy()
        except ImageError as e:
            gt.skipped.append((str(path), str(e)))
            continue
        sizes[image_id] = photo.size
        pending.append((image_id, photo.size, x))
        if len(pending) == batch_size:
            flush()
    flush()
    seconds = time.perf_counter() - start
    if not sizes:
        first = f" (first skipped: {gt.skipped[0][0]}: {gt.skipped[0][1]})" if gt.skipped else ""
        raise AnnotationError(f"{data}: no image could be evaluated{first}")
    dataset = _finish(gt, sizes)
    if not dataset["annotations"]:
        raise AnnotationError(f"{annotations or data}: no ground-truth box in the {len(sizes)} evaluated image(s): "
                              "mAP is undefined")  # fmt: skip
    dataset["categories"] = model_categories(predictor)
    per_class, stats = coco_map(dataset, results, COCO, COCOeval)
    return DetectionResult(stats, per_class, len(sizes), len(dataset["annotations"]), len(results), gt.skipped,
                           gt.dropped_boxes, seconds, str(data), f"{predictor.name} ({predictor.backend})")  # fmt: skip


def coco_map(dataset: dict, results: list[dict], COCO=None, COCOeval=None) -> tuple[dict[str, float], list[float]]:
    """``(per-class AP, COCOeval.stats)`` of ``results`` (COCO result dicts) against ``dataset`` (COCO JSON dict)."""
    if COCO is None:
        COCO, COCOeval = require_pycocotools()
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and tables
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results) if results else COCO()
        if not results:
            coco_dt.dataset = {"images": dataset["images"], "annotations": [], "categories": dataset["categories"]}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = list(EVAL_MAX_DETS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    present = sorted({a["category_id"] for a in dataset["annotations"]})
    names = {c["id"]: c["name"] for c in dataset["categories"]}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    per_class = {}
    for cid in present:
        k = ev.params.catIds.index(cid)
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names.get(cid, str(cid))] = float(p.mean()) if p.size else 0.0
    return per_class, [float(v) for v in ev.stats]
