"""Training data: the ``train/`` and ``val/`` class-folder splits, seeded augmentation, and the loaders.

Nothing random uses hidden state: the sample order comes from `ResumableSampler` (epoch
``e`` is ``randperm(seed + e)``) and each image's augmentation is seeded by ``(seed,
epoch, index)``, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..data.augment import TrainTransform
from ..data.datasets import ImageDataset, LabelledImages, collate_skip, open_dataset
from ..data.images import load_image
from ..data.transforms import EvalTransform
from ..errors import ImageError, MobilenetsError
from .distributed import DistInfo, ResumableSampler
from .recipes import Recipe


class AugmentedImages(Dataset):
    """Train images keyed by ``(index, epoch)``; each image's augmentation is seeded by (seed, epoch, index)."""

    def __init__(self, data: LabelledImages, transform: TrainTransform, seed: int) -> None:
        self.data, self.transform, self.seed = data, transform, seed

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, key: tuple[int, int]):
        index, epoch = key
        path, label = self.data.samples[index]
        try:
            img = load_image(path)
        except ImageError as e:  # collate_skip counts it; the trainer warns once
            return e
        return self.transform(img, np.random.default_rng([self.seed, epoch, index])), label


def train_transform(recipe: Recipe, resolution: int) -> TrainTransform:
    return TrainTransform(resolution, recipe.area_range, recipe.aspect_range, recipe.min_object_covered,
                          flip=recipe.flip, brightness=recipe.brightness, saturation=recipe.saturation)  # fmt: skip


def open_split(data_dir: str | Path, split: str, classes: list[str] | None = None) -> LabelledImages:
    """``DIR/train`` or ``DIR/val`` as class folders; one-line errors for missing or empty data."""
    root = Path(data_dir)
    if not root.is_dir():
        raise MobilenetsError(
            f"{root}: no such folder (expected {root}/train/<class>/*.jpg and {root}/val/<class>/*.jpg)"
        )
    folder = root / split
    if not folder.is_dir():
        raise MobilenetsError(f"{folder}: no such folder (expected {root}/{split}/<class>/*.jpg)")
    ds = open_dataset(folder, classes=classes)
    if ds.layout not in ("class-folders", "imagenet-folders"):
        raise MobilenetsError(f"{folder}: expected one folder per class, found loose image files")
    return ds


def train_loader(data: LabelledImages, recipe: Recipe, resolution: int, seed: int, sampler: ResumableSampler,
                 workers: int, info: DistInfo) -> DataLoader:  # fmt: skip
    """This rank's share of each global batch, augmented, in the sampler's (resumable) order."""
    ds = AugmentedImages(data, train_transform(recipe, resolution), seed)
    return DataLoader(ds, batch_size=recipe.batch_size // info.world_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skip, persistent_workers=workers > 0,
                      pin_memory=info.device.type == "cuda", drop_last=True)  # fmt: skip


def eval_loader(data: LabelledImages, resolution: int, workers: int, info: DistInfo) -> DataLoader:
    """The reference eval transform, batches of 64, every ``world_size``-th image on this rank."""
    ds = ImageDataset(data, EvalTransform(resolution))
    return DataLoader(ds, batch_size=64, sampler=range(info.rank, len(ds), info.world_size), num_workers=workers,
                      collate_fn=collate_skip, persistent_workers=workers > 0)  # fmt: skip
