"""Classify images and evaluate top-1/top-5 with any `Predictor`.

Official weights have 1001 outputs with index 0 = TF's 'background' class. Predictions
report the model's own output index (Google's convention: cheeseburger is 934), never
show background unless asked, and evaluation maps dataset class ``i`` (sorted-wnid order)
to output ``i + cfg.label_offset`` (1 for such models).

One label-index convention everywhere: an index printed by ``classify`` is the model's
output index; a labels file for ``evaluate`` gives dataset indices 0..999 (sorted-wnid
order, like the ImageNet devkit) or wnids/names, never output indices.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.datasets import ImageDataset, SkipCorrupt, collate_skip, open_dataset
from ..errors import MobilenetsError
from ..runtime import Predictor


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    score: float

    def as_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "score": self.score}


def top_k(predictor: Predictor, probs: np.ndarray, k: int, show_background: bool = False) -> list[Prediction]:
    """The ``k`` most probable classes of one probability vector (background dropped unless asked)."""
    order = np.argsort(-probs, kind="stable")
    if predictor.has_background and not show_background:
        order = order[order != 0]
    return [Prediction(int(i), predictor.label(int(i)), float(probs[i])) for i in order[:k]]


def classify_images(predictor: Predictor, images: list[Image.Image | str | os.PathLike | bytes], k: int = 5,
                    show_background: bool = False) -> list[list[Prediction]]:  # fmt: skip
    """Top-``k`` predictions for each image (PIL image, path or encoded bytes), in order. Bad files raise `ImageError`."""
    transform = predictor.transform
    return [top_k(predictor, predictor.probabilities(transform(img)[None].numpy())[0], k, show_background)
            for img in images]  # fmt: skip


def classify_batch(predictor: Predictor, batch: np.ndarray, k: int = 5,
                   show_background: bool = False) -> list[list[Prediction]]:  # fmt: skip
    """Top-``k`` predictions for each row of a preprocessed batch."""
    return [top_k(predictor, probs, k, show_background) for probs in predictor.probabilities(batch)]


@dataclass(frozen=True)
class EvalResult:
    top1: float
    top5: float
    n: int
    images_per_s: float
    skipped: int

    def as_dict(self) -> dict:
        return {"top1": self.top1, "top5": self.top5, "n": self.n, "images_per_s": self.images_per_s,
                "skipped": self.skipped}  # fmt: skip


def label_offset(predictor: Predictor, imagenet: bool, dataset_classes: int) -> int:
    """How dataset class indices map to model outputs (the weights' ``label_offset``: 1 with background)."""
    offset = predictor.cfg.label_offset
    if imagenet:
        if predictor.num_classes - offset != 1000:
            raise MobilenetsError(f"{predictor.name} has {predictor.num_classes} classes; ImageNet labels need 1000 "
                                  "(or 1001 with background)")  # fmt: skip
        return offset
    if predictor.num_classes - offset != dataset_classes:
        raise MobilenetsError(f"the data has {dataset_classes} classes but {predictor.name} has {predictor.num_classes}")
    return offset


def evaluate(predictor: Predictor, data_dir: str | os.PathLike, labels_file: str | os.PathLike | None = None,
             limit: int | None = None, batch_size: int = 32, workers: int = 2, progress: bool = True) -> EvalResult:  # fmt: skip
    """Top-1/top-5 accuracy of ``predictor`` on a labelled folder (see `open_dataset` for layouts)."""
    # A fine-tuned model's class names fix which folder is which output.
    custom = predictor.num_classes not in (1000, 1001) and predictor.labels
    data = open_dataset(data_dir, labels_file, classes=list(predictor.labels)[predictor.cfg.label_offset:] if custom else None)
    offset = label_offset(predictor, data.imagenet, len(data.classes))
    if limit is not None:
        if limit <= 0:
            raise MobilenetsError(f"--limit must be > 0, got {limit}")
        data.samples = data.samples[:limit]
    ds = ImageDataset(data, predictor.transform, label_offset=offset)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=collate_skip,
                        persistent_workers=False)  # fmt: skip
    k = min(5, predictor.num_classes)
    correct1 = correct5 = n = 0
    shifted = {-1: 0, 1: 0}  # top-1 hits if every label were one index off (a labels file in the other convention)
    skipped = SkipCorrupt()
    start = time.perf_counter()
    with tqdm(total=len(ds), unit="img", desc="evaluate", disable=None if progress else True, file=sys.stderr) as bar:
        for images, labels, bad in loader:
            for err in bad:
                skipped.record(err)
            if images is not None:
                probs = predictor.probabilities(images.numpy())
                topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                lab = labels.numpy()
                correct1 += int((topk[:, 0] == lab).sum())
                correct5 += int((topk == lab[:, None]).any(1).sum())
                for d in shifted:
                    shifted[d] += int((topk[:, 0] == lab + d).sum())
                n += len(lab)
            bar.update(len(bad) + (0 if images is None else len(images)))
            if n:
                bar.set_postfix(top1=f"{correct1 / n:.3f}", top5=f"{correct5 / n:.3f}")
    seconds = time.perf_counter() - start
    if n == 0:
        raise MobilenetsError(f"{data_dir}: none of the {len(ds)} images could be read")
    warn_if_off_by_one(correct1, shifted, n, labels_file)
    return EvalResult(correct1 / n, correct5 / n, n, n / seconds, skipped.count)


def warn_if_off_by_one(correct: int, shifted: dict[int, int], n: int, labels_file: str | os.PathLike | None) -> None:
    """Warn (one line) when labels shifted by one index would score far higher: an off-by-one labels file."""
    d, hits = max(shifted.items(), key=lambda kv: kv[1])
    if n >= 10 and hits >= max(3 * correct, 0.2 * n):
        source = f"the labels in {labels_file}" if labels_file else "the dataset's labels"
        print(f"mobilenets: warning: top-1 would be {hits / n:.1%} instead of {correct / n:.1%} if {source} were "
              f"{'one higher' if d > 0 else 'one lower'}: labels give dataset indices 0..999 (sorted wnids), "
              "not the 1001-class model's output indices", file=sys.stderr)  # fmt: skip
