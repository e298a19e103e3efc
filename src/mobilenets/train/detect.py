"""SSD detection training: ``mobilenets train --task detect`` / ``finetune --task detect``.

The TF Object Detection API's ``ssd_mobilenet_v1`` training objective (``meta_architectures/
ssd_meta_arch.py``, ``matchers/argmax_matcher.py``, ``core/losses.py``,
``core/target_assigner.py``, ``core/preprocessor.py``), on our `models.ssd.SSDMobileNetV1`:

- `match_anchors`: ``ArgMaxMatcher`` on IoU (matched >= 0.5, else background), with
  ``force_match_for_each_row`` (each box also takes its best anchor);
- targets: matched anchors get their box's class (background = 0) and its `BoxCoder` code;
- `ssd_loss`: sigmoid cross entropy over all classes with background (or focal), smooth-L1
  (Huber, delta 1) on the codes of matched anchors, hard negative mining (the negatives
  with the highest classification loss, at most 3 per positive), both normalised by the
  number of matches in the batch. (The API's miner also runs a 0.99-IoU NMS over the
  anchors first; left out: at 0.99 it removes almost nothing.)
- augmentation (`augment_sample`): ``ssd_random_crop`` (one of seven minimum-coverage
  settings, or the whole image with probability 0.15; boxes kept when that much of them
  is inside the crop, clipped), then a horizontal flip, then the whole image resized.
- the trained weights carry the post-processing their mAP is measured with: 100 boxes, each
  with every class's score (fast NMS, exportable), or NMS per class as the OD API evaluates
  (``per_class_nms``).

Speed on CPUs (``cache_features``): without the random crop, the frozen backbone layers
(all, or those before ``backbone_train_from``) see the same image every epoch, up to the
flip; their maps of each train image and its mirror are computed once, and every step runs
only the trained layers: exactly the run without the cache (same seeded flips), many times
faster (`CachedBackboneMaps`, `SSDAfterFrozenLayers`).

Data (`open_detection_split`): a YOLO layout (``images/<split>``, ``labels/<split>``, class
names in ``classes.txt`` or ``data.yaml``) or COCO JSON (``annotations/instances_<split>.json``
with images under ``images/<split>``). Bad input: unreadable JSON or a malformed YOLO line:
one-line `AnnotationError`; images listed but missing or unreadable, annotations of
unlisted images, boxes of zero area after clipping to the image: counted skips (reported
once when the run starts); boxes partly outside the image: clipped.

Starting points (``DetectConfig.weights``): Google's SSD ``.tflite`` (or our SSD
safetensors), keeping every layer but the class predictors when the classes differ
(``num_classes = your classes + background``); an ImageNet MobileNet v1 (backbone only, new
extra layers and head); or None (from scratch).

Run directory and resume as in classification (`checkpoint`): run.json, last.pt (atomic,
every ``checkpoint_every`` steps and each epoch end), last/best.safetensors, log.csv and
steps.csv. Exact resume: epoch ``e``'s order is ``randperm(seed + e)`` (`ResumableSampler`),
each sample's augmentation is seeded by ``(seed, epoch, index)`` and the model has no other
randomness, so a run killed at any point resumes to the weights of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.coco import IMAGE_SUFFIXES, AnnotationError, read_coco_json, read_yolo_labels
from ..data.datasets import SkipCorrupt
from ..data.images import load_image
from ..errors import ConfigError, ImageError
from ..models.ssd import SSDMobileNetV1, center_size_to_corners
from ..utils import atomic_write
from .checkpoint import RunError, RunLogs, check_new_run_dir, load_checkpoint, restore_checkpoint, save_checkpoint
from .distributed import DistInfo, ResumableSampler, all_reduce_sum, init_distributed
from .engine import log_to_stderr
from .optim import LRSchedule
from .platform import heap_reuse_applied, keep_freed_memory

TASK = "detect"
MATCH_THRESHOLD = 0.5  # ssd_mobilenet_v1 configs: matched_threshold = unmatched_threshold = 0.5
NEG_PER_POS = 3.0  # hard_example_miner max_negatives_per_positive
RANDOM_CROP_MIN_COVERED = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)  # preprocessor.ssd_random_crop defaults
RANDOM_CROP_KEEP_WHOLE = 0.15  # its random_coef: probability of no crop


@dataclass
class DetectConfig:
    """One detection run as plain data: data, model, objective, optimiser, then execution settings."""

    data: str  # YOLO or COCO layout with train and val splits
    output: str  # run directory
    weights: str | None = None  # Google's SSD .tflite / SSD safetensors / ImageNet MobileNet v1; None: scratch
    alpha: float = 0.75  # width, when not given by the weights
    resolution: int = 300
    epochs: int = 10
    batch_size: int = 16
    lr: float = 0.02  # peak, for the head (extra layers + predictors)
    backbone_lr_scale: float = 0.0  # 0 freezes the MobileNet backbone
    backbone_train_from: str = ""  # first backbone layer trained (TF-Slim name, e.g. Conv2d_12_depthwise); "": all
    optimizer: str = "sgd"  # sgd (with momentum) | adamw
    momentum: float = 0.9
    weight_decay: float = 4e-5  # OD API l2_regularizer 0.00004 on conv kernels
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.0
    bn_mode: str = "frozen"  # frozen (Google's file has BN folded in) | train
    loss: str = "sigmoid"  # sigmoid | focal
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    loc_weight: float = 1.0
    neg_per_pos: float = NEG_PER_POS
    min_negatives: int = 0  # per image (OD API: 0)
    random_crop: bool = True
    flip: bool = True
    cache_features: bool = False  # no random crop: the frozen backbone layers' maps of each image computed once
    max_detections: int = 100  # the trained model's post-processing: boxes kept per image
    classes_per_box: int = 0  # fast NMS: classes reported per kept box (0: all), each with its own score
    per_class_nms: bool = False  # NMS per class (the OD API's eval post-processing; no ONNX export)
    eval_every: int = 1  # epochs between val mAP evaluations (0: only at the end)
    seed: int = 0
    workers: int = 0
    device: str | None = None
    checkpoint_every: int = 50
    log_every: int = 10
    progress: bool = True
    heap_reuse: bool = True
    task: str = TASK

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Fields a resumed run may change; anything else must match the checkpoint.
RESUMABLE_DETECT_CHANGES = ("data", "epochs", "workers", "device", "checkpoint_every", "log_every", "progress",
                            "heap_reuse", "eval_every")  # fmt: skip


def make_detect_config(data: str | Path, output: str | Path, **settings: Any) -> DetectConfig:
    """A `DetectConfig`; an unknown setting is a one-line `ConfigError`."""
    known = {f.name for f in dataclasses.fields(DetectConfig)} - {"data", "output", "task"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(
            f"unknown detection training setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    cfg = DetectConfig(data=str(data), output=str(output), **settings)
    if cfg.loss not in ("sigmoid", "focal"):
        raise ConfigError(f"loss must be sigmoid or focal, got {cfg.loss!r}")
    if cfg.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"optimizer must be sgd or adamw, got {cfg.optimizer!r}")
    if cfg.bn_mode not in ("frozen", "train"):
        raise ConfigError(f"bn_mode must be frozen or train, got {cfg.bn_mode!r}")
    frozen_part = cfg.backbone_lr_scale == 0 or cfg.backbone_train_from not in ("", "Conv2d_0")
    if cfg.cache_features and (not frozen_part or cfg.bn_mode != "frozen" or cfg.random_crop):
        raise ConfigError("cache_features needs frozen backbone layers (backbone_lr_scale=0 or backbone_train_from), "
                          "bn_mode=frozen and random_crop=False (flips are cached both ways)")  # fmt: skip
    if cfg.max_detections < 1 or cfg.classes_per_box < 0:
        raise ConfigError(f"max_detections must be >= 1 and classes_per_box >= 0, got {cfg.max_detections}, "
                          f"{cfg.classes_per_box}")  # fmt: skip
    return cfg


# --- data ---------------------------------------------------------------------------------------


@dataclass
class DetectionSamples:
    """One split: image files with their boxes (normalised ``(ymin, xmin, ymax, xmax)``) and classes (1..K)."""

    root: Path
    split: str
    classes: list[str]
    samples: list[tuple[Path, np.ndarray, np.ndarray]]  # (image, boxes [K, 4] float32, labels [K] int64)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    dropped_boxes: int = 0
    clipped_boxes: int = 0
    layout: str = "yolo"
    eval_images: Path | None = None  # what `evaluate_detection` reads
    eval_annotations: Path | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def boxes(self) -> int:
        return sum(len(b) for _, b, _ in self.samples)

    def report(self) -> str:
        parts = [f"{self.root} {self.split}: {len(self)} images, {self.boxes} boxes ({self.layout})"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} skipped (first: {self.skipped[0][0]}: {self.skipped[0][1]})")
        if self.clipped_boxes:
            parts.append(f"{self.clipped_boxes} boxes clipped to their image")
        if self.dropped_boxes:
            parts.append(f"{self.dropped_boxes} empty boxes dropped")
        return ", ".join(parts)


def _class_names(root: Path) -> list[str] | None:
    if (root / "classes.txt").is_file():
        return [line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip()]
    for name in ("data.yaml", "dataset.yaml"):
        if (root / name).is_file():
            import yaml

            names = (yaml.safe_load((root / name).read_text()) or {}).get("names")
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def _clip(boxes: np.ndarray, labels: np.ndarray, ds: DetectionSamples) -> tuple[np.ndarray, np.ndarray]:
    """Clip normalised boxes to the image; drop (and count) those of zero area."""
    clipped = np.clip(boxes, 0.0, 1.0)
    ds.clipped_boxes += int((np.abs(clipped - boxes).max(axis=1) > 1e-6).sum()) if len(boxes) else 0
    keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    ds.dropped_boxes += int((~keep).sum())
    return clipped[keep].astype(np.float32), labels[keep]


def _image_size(path: Path, ds: DetectionSamples) -> tuple[int, int] | None:
    if not path.is_file():
        ds.skipped.append((str(path), "image listed but missing"))
        return None
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        ds.skipped.append((str(path), f"unreadable image ({type(e).__name__})"))
        return None


def open_detection_split(data: str | Path, split: str, classes: list[str] | None = None) -> DetectionSamples:
    """``split`` of a YOLO or COCO detection dataset (see the module docstring); one-line errors for bad data."""
    root = Path(data)
    if not root.is_dir():
        raise AnnotationError(f"{root}: no such folder (expected a YOLO or COCO detection dataset)")
    coco_json = next((p for p in (root / "annotations" / f"instances_{split}.json", root / "annotations" / f"{split}.json")
                      if p.is_file()), None)  # fmt: skip
    yolo_dir = root / "images" / split
    if coco_json is None and not yolo_dir.is_dir():
        raise AnnotationError(f"{root}: no {split} split (expected images/{split} + labels/{split} (YOLO) or "
                              f"annotations/instances_{split}.json (COCO))")  # fmt: skip
    if coco_json is not None:
        ds = _coco_split(root, split, coco_json, classes)
    else:
        ds = _yolo_split(root, split, classes)
    if not ds.samples:
        first = f" (first skipped: {ds.skipped[0][0]}: {ds.skipped[0][1]})" if ds.skipped else ""
        raise AnnotationError(f"{root} {split}: no usable image{first}")
    if not ds.boxes:
        raise AnnotationError(f"{root} {split}: no ground-truth box in {len(ds)} images")
    if classes is not None and ds.classes != classes:
        raise RunError(f"{root} {split}: classes {ds.classes[:5]} differ from the run's {classes[:5]}")
    return ds


def _yolo_split(root: Path, split: str, classes: list[str] | None) -> DetectionSamples:
    names = _class_names(root) or classes
    folder = root / "images" / split
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    labelled = [(img, root / "labels" / split / img.relative_to(folder).with_suffix(".txt")) for img in images]
    if names is None:  # no names file: classes are the numbers found
        top = -1
        for _, lf in labelled:
            if lf.is_file():
                for line in lf.read_text().splitlines():
                    if line.split():
                        try:
                            top = max(top, int(line.split()[0]))
                        except ValueError:
                            pass  # read_yolo_labels names the line below
        names = [str(c) for c in range(top + 1)]
    ds = DetectionSamples(root, split, list(names), [], layout="yolo", eval_images=folder)
    table = tuple(range(1, len(names) + 1))
    for img, lf in labelled:
        labels = read_yolo_labels(lf, table)  # malformed line: one-line AnnotationError
        if _image_size(img, ds) is None:
            continue
        boxes, ids = _clip(labels.boxes, labels.category_ids, ds)
        ds.samples.append((img, boxes, ids))
    return ds


def _coco_split(root: Path, split: str, path: Path, classes: list[str] | None) -> DetectionSamples:
    raw = read_coco_json(path)  # unreadable or malformed: one-line AnnotationError
    cats = sorted(raw.get("categories") or [], key=lambda c: c["id"])
    if not cats:
        raise AnnotationError(f"{path}: no 'categories': a COCO file for training names its classes")
    names = [str(c.get("name", c["id"])) for c in cats]
    index = {c["id"]: k + 1 for k, c in enumerate(cats)}
    image_dir = next(d for d in (root / "images" / split, root / split, root / "images", root) if d.is_dir())
    ds = DetectionSamples(root, split, names, [], layout="coco", eval_images=image_dir, eval_annotations=path)
    by_image: dict[Any, list[dict]] = {}
    for a in raw["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    listed = {im["id"] for im in raw["images"]}
    orphans = sum(len(v) for k, v in by_image.items() if k not in listed)
    if orphans:
        ds.skipped.append((str(path), f"{orphans} annotation(s) for image ids not listed in 'images'"))
    for im in raw["images"]:
        file = image_dir / str(im["file_name"])
        if not file.is_file() and (image_dir / Path(str(im["file_name"])).name).is_file():
            file = image_dir / Path(str(im["file_name"])).name
        size = _image_size(file, ds)
        if size is None:
            continue
        w, h = size
        boxes, ids = [], []
        for a in by_image.get(im["id"], []):
            if a.get("iscrowd", 0):
                continue
            if a["category_id"] not in index:
                raise AnnotationError(f"{path}: category {a['category_id']} is not in 'categories'")
            x, y, bw, bh = (float(v) for v in a["bbox"])
            boxes.append((y / h, x / w, (y + bh) / h, (x + bw) / w))
            ids.append(index[a["category_id"]])
        b, c = _clip(np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(ids, np.int64), ds)
        ds.samples.append((file, b, c))
    return ds


def _sample_crop(
    rng: np.random.Generator, boxes: np.ndarray, min_covered: float
) -> tuple[float, float, float, float] | None:
    """TF's ``sample_distorted_bounding_box`` (area 0.1-1, aspect 0.5-2, 100 tries): ``(y0, x0, y1, x1)`` or None."""
    for _ in range(100):
        area, aspect = rng.uniform(0.1, 1.0), math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
        h, w = math.sqrt(area / aspect), math.sqrt(area * aspect)
        if h > 1.0 or w > 1.0:
            continue
        y0, x0 = rng.uniform(0, 1 - h), rng.uniform(0, 1 - w)
        if min_covered <= 0 or not len(boxes):
            return y0, x0, y0 + h, x0 + w
        cov = _coverage(boxes, (y0, x0, y0 + h, x0 + w))
        if (cov >= min_covered).any():
            return y0, x0, y0 + h, x0 + w
    return None


def _coverage(boxes: np.ndarray, crop: tuple[float, float, float, float]) -> np.ndarray:
    """Fraction of each box inside ``crop`` (intersection over the box's area)."""
    y0, x0, y1, x1 = crop
    ih = np.clip(np.minimum(boxes[:, 2], y1) - np.maximum(boxes[:, 0], y0), 0, None)
    iw = np.clip(np.minimum(boxes[:, 3], x1) - np.maximum(boxes[:, 1], x0), 0, None)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return ih * iw / np.maximum(area, 1e-12)


def augment_sample(img: Image.Image, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                   random_crop: bool = True, flip: bool = True) -> tuple[Image.Image, np.ndarray, np.ndarray]:  # fmt: skip
    """SSD random crop (``ssd_random_crop``), then a horizontal flip; boxes follow (normalised)."""
    if random_crop:
        op = int(rng.integers(len(RANDOM_CROP_MIN_COVERED)))
        keep_whole = rng.random() < RANDOM_CROP_KEEP_WHOLE
        crop = None if keep_whole else _sample_crop(rng, boxes, RANDOM_CROP_MIN_COVERED[op])
        if crop is not None:
            y0, x0, y1, x1 = crop
            cov = _coverage(boxes, crop) if len(boxes) else np.zeros(0)
            keep = (cov > 0) & (cov >= RANDOM_CROP_MIN_COVERED[op])
            b = boxes[keep]
            b = np.stack([(b[:, 0] - y0) / (y1 - y0), (b[:, 1] - x0) / (x1 - x0),
                          (b[:, 2] - y0) / (y1 - y0), (b[:, 3] - x0) / (x1 - x0)], axis=1).clip(0, 1)  # fmt: skip
            ok = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
            boxes, labels = b[ok].astype(np.float32), labels[keep][ok]
            w, h = img.size
            img = img.crop((round(x0 * w), round(y0 * h), max(round(x1 * w), round(x0 * w) + 1),
                            max(round(y1 * h), round(y0 * h) + 1)))  # fmt: skip
    if flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        boxes = _flip_boxes(boxes)
    return img, boxes.reshape(-1, 4), labels


def _flip_boxes(boxes: np.ndarray) -> np.ndarray:
    return np.stack([boxes[:, 0], 1 - boxes[:, 3], boxes[:, 2], 1 - boxes[:, 1]], axis=1).astype(np.float32)


class AugmentedDetections(Dataset):
    """Train samples keyed by ``(index, epoch)``: augmentation seeded by (seed, epoch, index), resized, normalised."""

    def __init__(self, data: DetectionSamples, resolution: int, mean: tuple, std: tuple, seed: int,
                 random_crop: bool = True, flip: bool = True) -> None:  # fmt: skip
        self.data, self.resolution, self.seed = data, resolution, seed
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.random_crop, self.flip = random_crop, flip

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, boxes, labels = self.data.samples[index]
        try:
            img = load_image(path, decode="pillow")
        except ImageError as e:
            return e
        rng = np.random.default_rng([self.seed, epoch, index])
        img, boxes, labels = augment_sample(img, boxes, labels, rng, self.random_crop, self.flip)
        return self.to_tensor(img), torch.from_numpy(boxes), torch.from_numpy(labels)

    def to_tensor(self, img: Image.Image) -> torch.Tensor:
        """Resized to the input side, normalised, [3, R, R]."""
        img = img.resize((self.resolution, self.resolution), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - self.mean) / self.std


class CachedBackboneMaps(Dataset):
    """Train samples as the maps of the frozen backbone layers, computed once per image (and its mirror if ``flip``).

    Keyed like `AugmentedDetections` (the same seeded flip, no crop); in fixed chunks of
    ``batch_size`` in index order, so a resumed run recomputes the very same maps.
    """

    def __init__(self, model: SSDMobileNetV1, frozen: list[str], images: AugmentedDetections, batch_size: int,
                 device: torch.device) -> None:  # fmt: skip
        self.data, self.seed, self.flip = images.data, images.seed, images.flip
        self.names = cached_map_names(model, frozen)
        n, self.errors = len(images), {}
        self.maps: list[list[torch.Tensor]] = []  # [view][map] -> [N, C, H, W]; view 1: mirrored
        for mirrored in (False, True) if self.flip else (False,):
            chunks: list[list[torch.Tensor]] = []
            for start in range(0, n, batch_size):
                xs = []
                for i in range(start, min(start + batch_size, n)):
                    try:
                        img = load_image(self.data.samples[i][0], decode="pillow")
                    except ImageError as e:
                        self.errors[i] = e
                        img = Image.new("RGB", (images.resolution, images.resolution))
                    xs.append(images.to_tensor(img.transpose(Image.FLIP_LEFT_RIGHT) if mirrored else img))
                with torch.no_grad():
                    maps = model.backbone.forward_endpoints(torch.stack(xs).to(device), self.names)
                chunks.append([maps[name].cpu() for name in self.names])
            self.maps.append([torch.cat(parts) for parts in zip(*chunks)])

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        if index in self.errors:
            return self.errors[index]
        _, boxes, labels = self.data.samples[index]
        rng = np.random.default_rng([self.seed, epoch, index])
        mirrored = self.flip and rng.random() < 0.5  # augment_sample's draw without a crop
        if mirrored:
            boxes = _flip_boxes(boxes).reshape(-1, 4)
        return tuple(m[index] for m in self.maps[mirrored]), torch.from_numpy(boxes), torch.from_numpy(labels)


def cached_map_names(model: SSDMobileNetV1, frozen: list[str]) -> list[str]:
    """What `CachedBackboneMaps` keeps: the SSD's backbone maps among the ``frozen`` layers, and the last of them."""
    keep = [n for n in model.backbone_endpoints if n in frozen]
    return keep if frozen[-1] in keep else [*keep, frozen[-1]]


class SSDAfterFrozenLayers(nn.Module):
    """The training forward of an SSD from `CachedBackboneMaps`: the trained backbone layers, extras, predictors."""

    def __init__(self, model: SSDMobileNetV1, frozen: list[str], image_size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.image_size = model, image_size
        self.names, self.last_frozen = cached_map_names(model, frozen), frozen[-1]
        layers = list(model.backbone.features.named_children())
        self.trained = layers[len(frozen) :]

    def forward(self, cached: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        found = dict(zip(self.names, cached))
        x = found[self.last_frozen]
        for name, layer in self.trained:
            x = layer(x)
            found[name] = x
        maps = self.model.features_from_backbone([found[n] for n in self.model.backbone_endpoints])
        box, logits, anchors = self.model.head_with_anchors(maps, self.image_size)
        return {"box_encodings": box, "class_logits": logits, "anchors": anchors}


def collate_detections(batch: list):
    """``(images [N, 3, R, R] (or a tuple of backbone maps) or None, [boxes_i], [labels_i], [ImageError])``."""
    good = [b for b in batch if not isinstance(b, ImageError)]
    bad = [b for b in batch if isinstance(b, ImageError)]
    if not good:
        return None, [], [], bad
    xs = [g[0] for g in good]
    x = torch.stack(xs) if isinstance(xs[0], torch.Tensor) else tuple(torch.stack(m) for m in zip(*xs))
    return x, [g[1] for g in good], [g[2] for g in good], bad


# --- matcher and loss ---------------------------------------------------------------------------


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of corner boxes ``a`` [K, 4] and ``b`` [A, 4] -> [K, A]."""
    area_a = (a[:, 2] - a[:, 0]).clamp_min(0) * (a[:, 3] - a[:, 1]).clamp_min(0)
    area_b = (b[:, 2] - b[:, 0]).clamp_min(0) * (b[:, 3] - b[:, 1]).clamp_min(0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp_min(0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp_min(1e-12)


def match_anchors(gt_boxes: torch.Tensor, anchors_corners: torch.Tensor, threshold: float = MATCH_THRESHOLD,
                  force_match: bool = True) -> torch.Tensor:  # fmt: skip
    """``ArgMaxMatcher``: for each anchor the index of its box, or -1 (background). [A] long.

    An anchor matches the box of highest IoU when that IoU is >= ``threshold``; with
    ``force_match`` each box also claims the anchor it overlaps most (ties: the first).
    """
    a = anchors_corners.shape[0]
    if gt_boxes.shape[0] == 0:
        return torch.full((a,), -1, dtype=torch.long, device=anchors_corners.device)
    iou = box_iou(gt_boxes, anchors_corners)  # [K, A]
    best_iou, match = iou.max(dim=0)
    match = torch.where(best_iou >= threshold, match, torch.full_like(match, -1))
    if force_match:
        best_anchor = iou.argmax(dim=1)  # [K]
        match[best_anchor] = torch.arange(gt_boxes.shape[0], device=match.device)
    return match


def assign_targets(model: SSDMobileNetV1, anchors: torch.Tensor, boxes: list[torch.Tensor],
                   labels: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``(class targets [N, A] (0 = background), box codes [N, A, 4])`` for a batch."""
    corners = center_size_to_corners(anchors)
    cls_t, box_t = [], []
    for b, lab in zip(boxes, labels):
        b, lab = b.to(anchors.device, anchors.dtype), lab.to(anchors.device)
        m = match_anchors(b, corners)
        pos = m >= 0
        cls = torch.where(pos, lab[m.clamp_min(0)] if len(lab) else torch.zeros_like(m), torch.zeros_like(m))
        matched = b[m.clamp_min(0)] if len(b) else torch.zeros_like(corners)
        codes = model.box_coder.encode(matched, anchors)
        box_t.append(torch.where(pos[:, None], codes, torch.zeros_like(codes)))
        cls_t.append(cls)
    return torch.stack(cls_t), torch.stack(box_t)


def ssd_loss(box_encodings: torch.Tensor, class_logits: torch.Tensor, cls_targets: torch.Tensor,
             box_targets: torch.Tensor, cfg: DetectConfig) -> dict[str, torch.Tensor]:  # fmt: skip
    """The SSD objective (module docstring): ``{"loss", "cls_loss", "loc_loss", "matches"}``."""
    n, a, c = class_logits.shape
    pos = cls_targets > 0
    onehot = F.one_hot(cls_targets, c).to(class_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(class_logits, onehot, reduction="none")
    if cfg.loss == "focal":  # sigmoid focal loss (RetinaNet; OD API SigmoidFocalClassificationLoss)
        p = torch.sigmoid(class_logits)
        p_t = onehot * p + (1 - onehot) * (1 - p)
        alpha_t = onehot * cfg.focal_alpha + (1 - onehot) * (1 - cfg.focal_alpha)
        bce = bce * alpha_t * (1 - p_t).pow(cfg.focal_gamma)
    cls_per_anchor = bce.sum(-1)  # [N, A]
    loc = F.smooth_l1_loss(box_encodings, box_targets, reduction="none", beta=1.0).sum(-1)  # Huber, delta 1
    loc_loss = (loc * pos).sum()
    if cfg.loss == "focal":  # focal loss weighs every anchor itself: no mining
        selected = torch.ones_like(pos)
    else:
        selected = pos.clone()
        neg_loss = cls_per_anchor.detach().masked_fill(pos, -1.0)
        num_neg = (pos.sum(1).double() * cfg.neg_per_pos).floor().long().clamp_min(cfg.min_negatives).clamp_max(a)
        order = neg_loss.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(a, device=order.device).expand(n, a))
        selected |= (rank < num_neg[:, None]) & ~pos
    cls_loss = (cls_per_anchor * selected).sum()
    matches = pos.sum().clamp_min(1).to(class_logits.dtype)
    cls_loss, loc_loss = cls_loss / matches, loc_loss / matches
    return {"loss": cls_loss + cfg.loc_weight * loc_loss, "cls_loss": cls_loss, "loc_loss": loc_loss,
            "matches": pos.sum()}  # fmt: skip


# --- model ----------------------------------------------------------------------------------------


def build_detector(
    cfg: DetectConfig, classes: list[str], log: Callable[[str], None] = lambda s: None
) -> SSDMobileNetV1:
    """The SSD to train: from ``cfg.weights`` (SSD or ImageNet MobileNet v1) or from scratch; head for ``classes``."""
    from ..models.ssd import default_ssd_cfg

    k = len(classes) + 1  # + background at index 0
    labels = ("background", *classes)
    if not cfg.weights:
        model = SSDMobileNetV1(alpha=cfg.alpha, num_classes=k)
        _set_postprocess(model, cfg)
        model.pretrained_cfg = default_ssd_cfg(cfg.alpha, k, labels=labels, input_size=(3, cfg.resolution, cfg.resolution),
                                               arch_cfg=model.arch_cfg())  # fmt: skip
        return model
    from ..weights import read_weights

    w = read_weights(cfg.weights)
    if w.cfg is not None and w.cfg.arch == "ssd_mobilenet_v1":
        arch = dict(w.cfg.arch_cfg)
        if w.cfg.num_classes != k or tuple(w.cfg.labels or ()) != labels:
            arch["postprocess"] = {**(arch.get("postprocess") or {}), "num_classes": k - 1}
        model = SSDMobileNetV1.from_arch_cfg(arch, num_classes=k)
        state = w.state_dict
        if w.cfg.num_classes != k or tuple(w.cfg.labels or ()) != labels:
            state = {n: t for n, t in state.items() if ".ClassPredictor." not in n}
            log(f"new class predictors for {len(classes)} classes + background; the rest from {Path(cfg.weights).name}")
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(".ClassPredictor." not in n for n in missing):
            raise ConfigError(f"{cfg.weights}: weights do not fit SSDMobileNetV1 (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")  # fmt: skip
        base = w.cfg
    else:  # a classifier: its body becomes the backbone
        model = SSDMobileNetV1(alpha=w.alpha, num_classes=k)
        body = {f"backbone.{n}": t for n, t in w.state_dict.items() if n.startswith("features.")}
        if not body:
            raise ConfigError(f"{cfg.weights}: neither SSD nor MobileNet v1 weights")
        missing, unexpected = model.load_state_dict(body, strict=False)
        if unexpected or any(n.startswith("backbone.") for n in missing):
            raise ConfigError(
                f"{cfg.weights}: backbone does not fit (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        log(f"backbone from {Path(cfg.weights).name}; new extra layers and head")
        base = default_ssd_cfg(w.alpha, k)
        if w.cfg is not None:
            base = base.replace(mean=w.cfg.mean, std=w.cfg.std)
    _set_postprocess(model, cfg)
    model.pretrained_cfg = base.replace(num_classes=k, labels=labels, label_offset=1, task="detect",
                                        input_size=(3, cfg.resolution, cfg.resolution), arch_cfg=model.arch_cfg(),
                                        quantization=None)  # fmt: skip
    return model


def _set_postprocess(model: SSDMobileNetV1, cfg: DetectConfig) -> None:
    """The post-processing the trained weights carry (and are evaluated with).

    The OD API measures COCO mAP with NMS per class, 100 boxes (``batch_non_max_suppression``):
    every class's score of a box counts. Google's ``.tflite`` keeps 10 boxes of one class each
    (fast NMS), which under-reports a new head's mAP; the default here stays fast NMS (it
    exports everywhere) with 100 boxes and every class of each (``classes_per_box`` 0).
    """
    pp = model.postprocess
    pp.max_detections, pp.use_regular_nms = cfg.max_detections, cfg.per_class_nms
    pp.max_classes_per_detection = cfg.classes_per_box or pp.num_classes
    pp.detections_per_class = cfg.max_detections


def set_detect_train_mode(model: SSDMobileNetV1, cfg: DetectConfig) -> None:
    """Train mode (the raw head), BN in eval mode when frozen (Google's file folds BN into its convs)."""
    model.train()
    if cfg.bn_mode == "frozen":
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()


def frozen_backbone_layers(model: SSDMobileNetV1, cfg: DetectConfig) -> list[str]:
    """The backbone layers not trained, in order: all (``backbone_lr_scale`` 0) or those before ``backbone_train_from``."""
    names = [n for n, _ in model.backbone.features.named_children()]
    if cfg.backbone_lr_scale == 0:
        return names
    if not cfg.backbone_train_from:
        return []
    if cfg.backbone_train_from not in names:
        raise ConfigError(f"backbone_train_from {cfg.backbone_train_from!r}: not a backbone layer "
                          f"({names[0]} ... {names[-1]})")  # fmt: skip
    return names[: names.index(cfg.backbone_train_from)]


def detect_param_groups(model: SSDMobileNetV1, cfg: DetectConfig) -> list[dict[str, Any]]:
    """Head (extras + predictors) at ``lr``, backbone at ``lr * backbone_lr_scale`` (0: frozen); decay on conv kernels."""
    frozen_bn = cfg.bn_mode == "frozen"
    frozen = set(frozen_backbone_layers(model, cfg))
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        backbone = name.startswith("backbone.")
        bn = ".bn." in name
        if (backbone and name.split(".")[2] in frozen) or (bn and frozen_bn):
            p.requires_grad_(False)
            continue
        p.requires_grad_(True)
        decay = name.endswith(".weight") and not bn
        groups.setdefault((not backbone, decay), []).append(p)
    return [{"params": ps, "lr": cfg.lr * (1.0 if head else cfg.backbone_lr_scale),
             "weight_decay": cfg.weight_decay if decay else 0.0} for (head, decay), ps in sorted(groups.items())]  # fmt: skip


# --- the loop -------------------------------------------------------------------------------------


def _step_stats() -> dict[str, float]:
    return {"loss_sum": 0.0, "cls_sum": 0.0, "loc_sum": 0.0, "seen": 0.0, "skipped": 0.0, "seconds": 0.0}


class DetectTrainer:
    """One detection run on this process (single or DDP): ``DetectTrainer(cfg, info, state).run()``."""

    def __init__(self, cfg: DetectConfig, info: DistInfo, state: dict[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.cfg, self.info, self.state, self.out = cfg, info, state, Path(cfg.output)
        self.log = (log or log_to_stderr) if info.is_main else (lambda line: None)
        if cfg.batch_size % info.world_size:
            raise ConfigError(f"batch size {cfg.batch_size} must be divisible by the {info.world_size} processes")
        self.train_data = open_detection_split(cfg.data, "train", state["classes"] if state else None)
        self.classes = list(self.train_data.classes)
        self.val_data = open_detection_split(cfg.data, "val", self.classes)
        if len(self.train_data) < cfg.batch_size:
            raise ConfigError(f"{cfg.data} train has {len(self.train_data)} images, fewer than the batch size "
                              f"{cfg.batch_size}; lower --batch-size")  # fmt: skip
        self.device = info.device
        torch.manual_seed(cfg.seed)  # the new layers' init: the same on every rank and every run of this seed
        self.model = build_detector(cfg, self.classes, self.log if state is None else (lambda s: None)).to(self.device)
        self.sampler = ResumableSampler(len(self.train_data), cfg.batch_size, info, cfg.seed)
        self.steps_per_epoch = self.sampler.batches_per_epoch
        groups = detect_param_groups(self.model, cfg)
        self.optimizer = (torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum) if cfg.optimizer == "sgd"
                          else torch.optim.AdamW(groups, lr=cfg.lr))  # fmt: skip
        total = cfg.epochs * self.steps_per_epoch
        self.schedule = LRSchedule("cosine", total, round(cfg.warmup_epochs * self.steps_per_epoch),
                                   min_ratio=cfg.min_lr_ratio)  # fmt: skip
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.epoch, self.start_batch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.best = {"map50": -1.0, "epoch": 0}
        self.logs, self.partial = RunLogs(), _step_stats()
        if state is not None:
            restore_checkpoint(state, self.model, self.optimizer, self.scheduler, None, None)
            self.epoch, self.start_batch, self.step = state["epoch"], state["batch_in_epoch"], state["step"]
            self.best, self.elapsed = state["best"], state["seconds"]
            self.logs = RunLogs(state["logs"]["epochs"], state["logs"]["steps"])
            self.partial = (
                dict(state["partial"]) if info.is_main else {**_step_stats(), "seconds": state["partial"]["seconds"]}
            )
        self.skipped = SkipCorrupt(warned=not info.is_main)
        size = (cfg.resolution, cfg.resolution)
        self.frozen_layers = frozen_backbone_layers(self.model, cfg)
        self.net: nn.Module = (SSDAfterFrozenLayers(self.model, self.frozen_layers, size) if cfg.cache_features
                               else self.model)  # fmt: skip
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = DistributedDataParallel(self.net, device_ids=ids)

    # -- state ---------------------------------------------------------------------------------

    def _save_checkpoint(self, epoch: int, batch_in_epoch: int) -> None:
        keys = ("loss_sum", "cls_sum", "loc_sum", "seen", "skipped")
        sums = all_reduce_sum([self.partial[k] for k in keys], self.info)
        if not self.info.is_main:
            return
        state = {
            "task": TASK, "config": self.cfg.as_dict(), "classes": self.classes,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "step": self.step, "world_size": self.info.world_size, "best": self.best,
            "seconds": self.elapsed + (time.perf_counter() - self.t0),
            "partial": {**dict(zip(keys, sums)), "seconds": self.partial["seconds"]},
            "logs": {"epochs": self.logs.epochs, "steps": self.logs.steps},
        }  # fmt: skip
        self.logs.write(self.out)
        save_checkpoint(self.out / "last.pt", state)

    # -- loop ------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        self.t0 = time.perf_counter()
        if info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            for stale in self.out.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
            with atomic_write(self.out / "run.json") as tmp:
                tmp.write_text(json.dumps({"task": TASK, "config": cfg.as_dict(), "classes": self.classes}, indent=1))
        for ds in (self.train_data, self.val_data):
            if ds.skipped or ds.dropped_boxes or ds.clipped_boxes:
                self.log(f"note: {ds.report()}")
        what = "resuming" if self.state else "training"
        self.log(f"{what} SSD-MobileNet-v1 {self.model.alpha:g} at {cfg.resolution} on {len(self.train_data)} images "
                 f"({self.train_data.boxes} boxes, classes {', '.join(self.classes)}), val {len(self.val_data)}; "
                 f"{cfg.epochs} epochs x {self.steps_per_epoch} steps, batch {cfg.batch_size}, lr {cfg.lr:g} "
                 f"(backbone x{cfg.backbone_lr_scale:g}), {self.device.type}"
                 + (f"; from epoch {self.epoch + 1} step {self.start_batch}" if self.state else ""))  # fmt: skip
        if self.epoch < cfg.epochs and cfg.heap_reuse and self.device.type == "cpu" and not heap_reuse_applied():
            keep_freed_memory()
        ds = AugmentedDetections(self.train_data, cfg.resolution, self.model.pretrained_cfg.mean,
                                 self.model.pretrained_cfg.std, cfg.seed, cfg.random_crop, cfg.flip)  # fmt: skip
        if cfg.cache_features and self.epoch < cfg.epochs:
            t = time.perf_counter()
            set_detect_train_mode(self.model, cfg)
            ds = CachedBackboneMaps(self.model, self.frozen_layers, ds, cfg.batch_size, self.device)
            self.log(f"{', '.join(ds.names)} maps of {len(ds)} train images{' and their mirrors' if cfg.flip else ''} cached "
                     f"in {time.perf_counter() - t:.1f}s")  # fmt: skip
        loader = DataLoader(ds, batch_size=cfg.batch_size // info.world_size, sampler=self.sampler,
                            num_workers=cfg.workers, collate_fn=collate_detections,
                            persistent_workers=cfg.workers > 0, drop_last=True)  # fmt: skip
        last_val = None
        while self.epoch < cfg.epochs:
            self._train_epoch(loader)
            last_val = self._end_epoch()
            self.epoch, self.start_batch, self.partial = self.epoch + 1, 0, _step_stats()
            self._save_checkpoint(self.epoch, 0)
        if last_val is None and self.logs.epochs:
            last_val = {"map50": self.logs.epochs[-1].get("val_map50")}
        return {
            "task": TASK, "val_map50": last_val.get("map50") if last_val else None,
            "val_map": last_val.get("map") if last_val else None,
            "best_map50": self.best["map50"], "best_epoch": self.best["epoch"], "epochs": self.epoch,
            "steps": self.step, "seconds": round(self.elapsed + time.perf_counter() - self.t0, 1),
            "weights": str(self.out / "last.safetensors"), "skipped_images": self.skipped.count,
            "first_loss": self.logs.steps[0]["loss"] if self.logs.steps else None,
            "last_loss": self.logs.steps[-1]["loss"] if self.logs.steps else None,
        }  # fmt: skip

    def _train_epoch(self, loader: DataLoader) -> None:
        from tqdm import tqdm

        cfg, info, stats = self.cfg, self.info, self.partial
        self.sampler.set_epoch(self.epoch, self.start_batch)
        set_detect_train_mode(self.model, cfg)
        bar = tqdm(total=self.steps_per_epoch, initial=self.start_batch, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                   disable=None if (cfg.progress and info.is_main) else True, leave=False, file=sys.stderr)  # fmt: skip
        t_start = time.perf_counter()
        for batch_index, (x, boxes, labels, bad) in enumerate(loader, start=self.start_batch):
            for err in bad:
                self.skipped.record(err)
            stats["skipped"] += len(bad)
            parts = None
            if x is not None:
                x = x.to(self.device) if isinstance(x, torch.Tensor) else tuple(m.to(self.device) for m in x)
                out = self.net(x)
                cls_t, box_t = assign_targets(self.model, out["anchors"], boxes, labels)
                parts = ssd_loss(out["box_encodings"].float(), out["class_logits"].float(), cls_t, box_t, cfg)
                self.optimizer.zero_grad(set_to_none=True)
                parts["loss"].backward()
                self.optimizer.step()
                parts = {k: v.detach() for k, v in parts.items()}
                n = len(boxes)
                stats["loss_sum"] += float(parts["loss"]) * n
                stats["cls_sum"] += float(parts["cls_loss"]) * n
                stats["loc_sum"] += float(parts["loc_loss"]) * n
                stats["seen"] += n
            lr = self.optimizer.param_groups[-1]["lr"]
            self.last_lr = lr
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0:
                self._log_step(parts, 0 if x is None else len(boxes), lr)
                if parts is not None:
                    bar.set_postfix(loss=f"{float(parts['loss']):.3f}", lr=f"{lr:.3g}")
            done = batch_index + 1
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and done < self.steps_per_epoch:
                stats["seconds"] += time.perf_counter() - t_start
                self._save_checkpoint(self.epoch, done)
                t_start = time.perf_counter()
        stats["seconds"] += time.perf_counter() - t_start
        bar.close()

    def _log_step(self, parts: dict[str, torch.Tensor] | None, n: int, lr: float) -> None:
        vals = [float(parts[k]) * n if parts is not None else 0.0 for k in ("loss", "cls_loss", "loc_loss")]
        total, cls, loc, count = all_reduce_sum([*vals, float(n)], self.info)
        if count and self.info.is_main:
            self.logs.steps.append({"step": self.step, "epoch": self.epoch + 1, "loss": total / count,
                                    "cls_loss": cls / count, "loc_loss": loc / count, "lr": lr})  # fmt: skip

    def _end_epoch(self) -> dict[str, float]:
        cfg, stats = self.cfg, self.partial
        keys = ("loss_sum", "cls_sum", "loc_sum", "seen", "skipped")
        loss_sum, cls_sum, loc_sum, seen, skipped = all_reduce_sum([stats[k] for k in keys], self.info)
        last = self.epoch + 1 == cfg.epochs
        evaluate_now = last or (cfg.eval_every and (self.epoch + 1) % cfg.eval_every == 0)
        val: dict[str, float] = {}
        if self.info.is_main:
            from ..weights import save_weights

            meta = {"source": f"mobilenets train --task detect {self.out}", "epoch": self.epoch + 1}
            save_weights(self.model, self.out / "last.safetensors", **meta)
            if evaluate_now:
                val = evaluate_detection_weights(self.out / "last.safetensors", self.val_data)
                if val["map50"] > self.best["map50"]:
                    self.best = {"map50": val["map50"], "epoch": self.epoch + 1}
                    save_weights(self.model, self.out / "best.safetensors", **meta, val_map50=val["map50"])
        row = {"epoch": self.epoch + 1, "step": self.step, "lr": getattr(self, "last_lr", 0.0),
               "train_loss": loss_sum / max(seen, 1), "cls_loss": cls_sum / max(seen, 1),
               "loc_loss": loc_sum / max(seen, 1), "val_map50": val.get("map50", float("nan")),
               "val_map": val.get("map", float("nan")), "images_per_s": seen / max(stats["seconds"], 1e-9),
               "epoch_seconds": stats["seconds"], "skipped": int(skipped)}  # fmt: skip
        self.logs.epochs.append(row)
        self.log(f"epoch {self.epoch + 1}/{cfg.epochs}  loss {row['train_loss']:.4f} (cls {row['cls_loss']:.4f}, "
                 f"loc {row['loc_loss']:.4f})"
                 + (f"  val mAP50 {100 * val['map50']:.1f}% mAP {100 * val['map']:.1f}%" if val else "")
                 + f"  {row['images_per_s']:.1f} img/s  {stats['seconds']:.1f}s")  # fmt: skip
        return val


def evaluate_detection_weights(
    weights: str | Path, data: DetectionSamples, threads: int | None = None
) -> dict[str, float]:
    """`tasks.detect.evaluate_detection` of saved weights (torch backend) on a split: ``{"map50", "map", ...}``."""
    from ..auto import load_predictor
    from ..tasks.detect import evaluate_detection

    before = torch.get_num_threads()
    predictor = load_predictor(weights=weights, backend="torch", threads=threads)
    try:
        result = evaluate_detection(predictor, data.eval_images, annotations=data.eval_annotations)
    finally:
        torch.set_num_threads(before)
    return result.as_dict()


# --- entry points -----------------------------------------------------------------------------------


def train_detect(cfg: DetectConfig, *, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``cfg`` in a new run directory; returns the summary (``val_map50``, ``best_map50``, ...)."""
    info = init_distributed(cfg.device)
    try:
        check_new_run_dir(Path(cfg.output))
        if info.enabled:
            import torch.distributed as dist

            dist.barrier()
        return DetectTrainer(cfg, info, None, log).run()
    finally:
        _leave(info)


def finetune_detect(data: str | Path, weights: str | Path, output: str | Path, *,
                    log: Callable[[str], None] | None = None, **settings: Any) -> dict[str, Any]:  # fmt: skip
    """Fine-tune ``weights`` (Google's SSD or an ImageNet MobileNet v1) on a detection dataset."""
    return train_detect(make_detect_config(data, output, weights=str(weights), **settings), log=log)


def is_detect_run(output: str | Path) -> bool:
    """Whether ``output`` holds a detection run (its run.json says so)."""
    try:
        return json.loads((Path(output) / "run.json").read_text()).get("task") == TASK
    except (OSError, ValueError, AttributeError):
        return False


def resume_detect(output: str | Path, *, log: Callable[[str], None] | None = None, **changes: Any) -> dict[str, Any]:
    """Continue the detection run in ``output``; only `RESUMABLE_DETECT_CHANGES` may take new values."""
    out = Path(output)
    state = load_checkpoint(out / "last.pt")
    if state.get("task") != TASK:
        raise RunError(f"{out}: not a detection run (resume it without --task detect)")
    saved = DetectConfig.from_dict(state["config"])
    if (out / "run.json").exists():  # the latest resumable changes asked for
        try:
            saved = DetectConfig.from_dict(json.loads((out / "run.json").read_text())["config"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise RunError(f"{out}/run.json: damaged ({type(e).__name__})") from None
    current = saved.as_dict()
    unknown = sorted(k for k in changes if k not in current or k in ("output", "task"))
    if unknown:
        raise RunError(f"resume: unknown setting(s) {', '.join(unknown)}")
    conflicts = sorted(k for k, v in changes.items() if k not in RESUMABLE_DETECT_CHANGES and current[k] != v)
    if conflicts:
        raise RunError(f"resume {out}: {', '.join(conflicts)} differ from the run being resumed "
                       f"(only {', '.join(RESUMABLE_DETECT_CHANGES)} may change)")  # fmt: skip
    cfg = dataclasses.replace(
        saved, output=str(out), **{k: v for k, v in changes.items() if k in RESUMABLE_DETECT_CHANGES}
    )
    info = init_distributed(cfg.device)
    try:
        return DetectTrainer(cfg, info, state, log).run()
    finally:
        _leave(info)


def _leave(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()


def parse_detect_setting(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (key, typed value) for a `DetectConfig` field (``--set`` of ``--task detect``)."""
    key, sep, raw = text.partition("=")
    key = key.strip().replace("-", "_")
    types = {f.name: str(f.type) for f in dataclasses.fields(DetectConfig) if f.name not in ("data", "output", "task")}
    if not sep or key not in types:
        raise ConfigError(f"--set expects KEY=VALUE with KEY a detection setting ({', '.join(sorted(types))}), "
                          f"got {text!r}")  # fmt: skip
    kind = types[key]
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return key, raw.lower() in ("true", "1")
        if kind == "int":
            return key, int(raw)
        if kind == "float":
            return key, float(raw)
        if "None" in kind and raw.lower() in ("none", ""):
            return key, None
        return key, raw
    except ValueError:
        raise ConfigError(f"--set {key}: cannot read {raw!r} as {kind}") from None
