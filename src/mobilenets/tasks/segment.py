"""Segment images and evaluate mIoU with any `Predictor` that gives per-pixel ``logits``.

The model sees the whole image resized to its input size (DeepLab's contract: no crop,
TF1 bilinear, [-1, 1]). Its logits come back at that size and are brought to the image's
own size the way DeepLab's own ``predict_labels`` and eval do: **bilinear resize of the
logits with ``align_corners=True``, then arg-max** (`logits_to_mask`). That is smoother at
object borders than nearest-neighbour on the class map and costs little: the resize is
separable and done in bands of rows, so a 12-megapixel photo never holds more than one band
of the 21 upsampled channels.

`evaluate_segmentation` accumulates one confusion matrix over the whole set (not a mean of
per-image IoUs), ignoring ground-truth pixels labelled 255, on VOC layouts or
``N_image.png`` / ``N_target.png`` pairs (`data.voc.find_segmentation_data`). What it does
with bad data:

- an image without its mask, an unreadable image or mask, a mask whose size differs from
  its image: **counted skips** (``skipped`` in the result, with the first reasons);
- a mask value that is neither a class of the model nor 255: **one-line error**
  (`data.voc.MaskLabelError`): the data and the model disagree on what the labels are;
- a folder in neither layout, or nothing left to evaluate: one-line error.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.images import load_image
from ..data.voc import (
    IGNORE_INDEX,
    DatasetError,
    MaskLabelError,
    find_segmentation_data,
    mask_to_image,
    read_voc_mask,  # fmt: skip
    voc_colormap,
)
from ..errors import ImageError
from ..runtime import Predictor

BAND_ROWS = 256  # output rows upsampled at a time by `logits_to_mask`


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """align_corners=True sampling: source ``i * (n_in - 1) / (n_out - 1)``; (lo, hi, weight of hi)."""
    if n_out == 1 or n_in == 1:
        src = np.zeros(n_out, np.float64)
    else:
        src = np.arange(n_out, dtype=np.float64) * ((n_in - 1) / (n_out - 1))
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (src - lo).astype(np.float32)


def logits_to_mask(logits: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """C x h x w logits -> H x W uint8 class map at ``size`` (H, W; default h x w).

    Bilinear resize of the logits (``align_corners=True``, as DeepLab and `DeepLabV3`
    resize), then arg-max; done in bands of `BAND_ROWS` output rows.
    """
    logits = np.asarray(logits, np.float32)
    _c, h, w = logits.shape
    out_h, out_w = size or (h, w)
    if (out_h, out_w) == (h, w):
        return logits.argmax(0).astype(np.uint8)
    x0, x1, wx = _axis(w, out_w)
    cols = logits[:, :, x0] + (logits[:, :, x1] - logits[:, :, x0]) * wx  # C x h x W
    y0, y1, wy = _axis(h, out_h)
    mask = np.empty((out_h, out_w), np.uint8)
    for start in range(0, out_h, BAND_ROWS):
        sl = slice(start, min(start + BAND_ROWS, out_h))
        top, bottom = cols[:, y0[sl]], cols[:, y1[sl]]
        band = top + (bottom - top) * wy[sl, None]
        mask[sl] = band.argmax(0)
    return mask


@dataclass
class Segmentation:
    """One image's class map at the image's own size, and the share of each class."""

    image: str
    mask: np.ndarray  # H x W uint8 class indices
    labels: tuple[str, ...]
    photo: Image.Image | None = field(default=None, repr=False)  # the decoded image, for `overlay`

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    def class_fractions(self) -> dict[str, float]:
        """``{label: fraction of pixels}`` for the classes present, largest first."""
        counts = np.bincount(self.mask.reshape(-1), minlength=len(self.labels))
        total = counts.sum()
        order = np.argsort(-counts, kind="stable")
        return {self.labels[i] if i < len(self.labels) else str(i): round(float(counts[i] / total), 6)
                for i in order if counts[i]}  # fmt: skip

    def as_dict(self) -> dict:
        return {"image": self.image, "width": self.width, "height": self.height, "classes": self.class_fractions()}

    def mask_image(self) -> Image.Image:
        """The class map as a VOC palette PNG image (pixel values = class indices)."""
        return mask_to_image(self.mask)

    def overlay(self, photo: Image.Image, alpha: float = 0.55) -> Image.Image:
        """The mask's colours blended on ``photo`` (background left as is), with a legend of the classes present."""
        return overlay(photo, self.mask, self.labels, alpha)


def labels_of(predictor: Predictor) -> tuple[str, ...]:
    return tuple(predictor.label(i) for i in range(predictor.num_classes))


def segment_image(predictor: Predictor, image: Image.Image | str | os.PathLike | bytes,
                  name: str | None = None) -> Segmentation:  # fmt: skip
    """`Segmentation` of one image (PIL image, path or bytes) at its own size; unreadable files raise `ImageError`."""
    transform = predictor.transform
    photo = transform.load(image)
    logits = predictor.run(transform(photo)[None].numpy(), ("logits",))["logits"][0]
    mask = logits_to_mask(logits, (photo.height, photo.width))
    label = name or (str(image) if isinstance(image, (str, os.PathLike)) else "image")
    return Segmentation(label, mask, labels_of(predictor), photo)


def overlay(photo: Image.Image, mask: np.ndarray, labels: tuple[str, ...], alpha: float = 0.55) -> Image.Image:
    """``photo`` with each non-background class painted in its VOC colour, and a legend (colour, name, share)."""
    from PIL import ImageDraw, ImageFont

    rgb = np.asarray(photo.convert("RGB"), np.float32)
    colours = voc_colormap().astype(np.float32)
    paint = colours[mask]
    a = np.where(mask[..., None] > 0, np.float32(alpha), np.float32(0))
    out = Image.fromarray((rgb * (1 - a) + paint * a).round().clip(0, 255).astype(np.uint8))
    counts = np.bincount(mask.reshape(-1), minlength=len(labels))
    present = [i for i in np.argsort(-counts, kind="stable") if counts[i]]
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(out)
    row, box = 14, 10
    height = row * len(present) + 6
    width = 6 + box + 6 + max(draw.textlength(f"{labels[i] if i < len(labels) else i} 100.0%", font=font)
                              for i in present)  # fmt: skip
    draw.rectangle((0, 0, int(width), height), fill=(0, 0, 0))
    for k, i in enumerate(present):
        y = 3 + k * row
        draw.rectangle((6, y + 1, 6 + box, y + 1 + box), fill=tuple(int(v) for v in colours[i]), outline=(255, 255, 255))
        name = labels[i] if i < len(labels) else str(i)
        draw.text((6 + box + 6, y), f"{name} {100 * counts[i] / mask.size:.1f}%", fill=(255, 255, 255), font=font)
    return out


# --- evaluation --------------------------------------------------------------------------------


@dataclass
class SegmentationResult:
    """mIoU and pixel accuracy from one confusion matrix over every evaluated pixel (255 ignored)."""

    confusion: np.ndarray  # K x K: rows ground truth, columns prediction
    labels: tuple[str, ...]
    n: int
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0
    data: str = ""
    model: str = ""

    @property
    def iou(self) -> np.ndarray:
        """Per class: TP / (TP + FP + FN); NaN for a class in neither ground truth nor prediction."""
        cm = self.confusion.astype(np.float64)
        tp = np.diag(cm)
        union = cm.sum(0) + cm.sum(1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, tp / union, np.nan)

    @property
    def miou(self) -> float:
        """Mean IoU over the classes that occur (in the ground truth or the predictions), as DeepLab's eval."""
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0

    @property
    def pixel_acc(self) -> float:
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else 0.0

    def as_dict(self) -> dict:
        iou = self.iou
        return {"miou": self.miou, "pixel_acc": self.pixel_acc, "n": self.n, "pixels": int(self.confusion.sum()),
                "per_class_iou": {self.labels[i]: (None if np.isnan(v) else float(v)) for i, v in enumerate(iou)},
                "skipped": len(self.skipped), "skipped_first": [f"{f}: {r}" for f, r in self.skipped[:3]],
                "images_per_s": self.n / self.seconds if self.seconds else None, "data": self.data}  # fmt: skip

    def summary(self) -> str:
        skipped = f", {len(self.skipped)} skipped (first: {self.skipped[0][1]})" if self.skipped else ""
        lines = [(f"{self.model} on {self.data}: mIoU {100 * self.miou:.2f}  pixel acc {100 * self.pixel_acc:.2f}  "
                 f"n={self.n}{skipped}")]  # fmt: skip
        for label, v in zip(self.labels, self.iou):
            if not np.isnan(v):
                lines.append(f"  {label:<14} IoU {100 * v:6.2f}")
        return "\n".join(lines)


def confusion_update(cm: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> None:
    """Add one image's pixels to ``cm`` (K x K); ground truth 255 is ignored."""
    k = cm.shape[0]
    keep = truth != IGNORE_INDEX
    idx = truth[keep].astype(np.int64) * k + pred[keep].astype(np.int64)
    cm += np.bincount(idx, minlength=k * k).reshape(k, k)


def evaluate_segmentation(predictor: Predictor, data: str | os.PathLike, limit: int | None = None,
                          split: str = "val") -> SegmentationResult:  # fmt: skip
    """mIoU of ``predictor`` on a VOC layout or N_image/N_target pairs under ``data`` (see the module docstring)."""
    found = find_segmentation_data(data, split)
    pairs = found.pairs[:limit] if limit is not None else found.pairs
    k = predictor.num_classes
    cm = np.zeros((k, k), np.int64)
    skipped = [(str(p), "no mask for this image") for p in found.unpaired]
    transform, n, start = predictor.transform, 0, time.perf_counter()
    for img_path, mask_path in pairs:
        try:
            truth = read_voc_mask(mask_path, num_classes=k)
            photo = load_image(img_path, decode=transform.decode)
        except MaskLabelError:
            raise
        except ImageError as e:
            skipped.append((str(img_path), str(e)))
            continue
        if truth.shape != (photo.height, photo.width):
            skipped.append((str(mask_path), (f"mask is {truth.shape[1]}x{truth.shape[0]}, its image "
                                            f"{photo.width}x{photo.height}")))  # fmt: skip
            continue
        logits = predictor.run(transform(photo)[None].numpy(), ("logits",))["logits"][0]
        confusion_update(cm, truth, logits_to_mask(logits, truth.shape))
        n += 1
    if n == 0:
        first = f" (first skipped: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise DatasetError(f"{data}: no image/mask pair could be evaluated{first}")
    return SegmentationResult(cm, labels_of(predictor), n, skipped, time.perf_counter() - start, str(data),
                              f"{predictor.name} ({predictor.backend})")  # fmt: skip


def save_outputs(seg: Segmentation, save_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<stem>.png`` (palette class map at the image's size) and ``<stem>_overlay.jpg``; returns both paths."""
    from ..utils import atomic_write

    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    stem = Path(seg.image).stem
    png, jpg = save_dir / f"{stem}.png", save_dir / f"{stem}_overlay.jpg"
    with atomic_write(png) as tmp:
        seg.mask_image().save(tmp, format="PNG")
    with atomic_write(jpg) as tmp:
        seg.overlay(seg.photo).save(tmp, format="JPEG", quality=90)
    return png, jpg
