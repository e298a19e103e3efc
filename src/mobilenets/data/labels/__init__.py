"""Class-name tables shipped with the package."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def imagenet_classes() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(wnids, names)`` of the 1000 ImageNet classes in sorted-wnid order (class index i)."""
    text = resources.files(__package__).joinpath("imagenet_classes.tsv").read_text()
    rows = [line.split("\t", 1) for line in text.splitlines()]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_labels(num_classes: int) -> list[str]:
    """Names for a 1000- or 1001-class ImageNet head (1001: index 0 = 'background')."""
    names = list(imagenet_classes()[1])
    if num_classes == 1001:
        return ["background", *names]
    if num_classes == 1000:
        return names
    raise ValueError(f"no ImageNet label set has {num_classes} classes")


@cache
def _table(file: str) -> tuple[str, ...]:
    """The names of a one-column (or id<TAB>name) label table shipped beside this module."""
    text = resources.files(__package__).joinpath(file).read_text()
    return tuple(line.split("\t")[-1] for line in text.splitlines() if line.strip())


def coco_labels() -> list[str]:
    """The 90 COCO category names by id - 1 (the SSD file's class index); unused ids are 'n/a'."""
    return list(_table("coco_labels.tsv"))


def voc_labels() -> list[str]:
    """The 21 PASCAL VOC segmentation classes (index 0 = background)."""
    return list(_table("voc_labels.tsv"))
