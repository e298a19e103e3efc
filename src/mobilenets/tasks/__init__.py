"""Tasks as one shape: which outputs a model must declare, how images go in and results come out.

A task is its model builder (`builder.model_from_weights`, by the weights' ``cfg.arch``),
the outputs it declares (`Task.outputs`), the eval preprocessing of its contract
(`EvalTransform.from_cfg`), a post-processing step per image and its metrics:

- ``classify``: ``probabilities`` -> top-k labels; top-1/top-5 (`tasks.classify`);
- ``embed``: ``embedding`` -> vectors, cosine neighbours (`tasks.embed`);
- ``detect``: ``boxes``/``classes``/``scores``/``count`` -> labelled boxes; COCO mAP;
- ``segment``: ``logits`` -> a class mask; mIoU.

`check_task` gives the one-line error a user sees when a file of another task is given
(an SSD file to ``classify``, a classifier to ``segment``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import is_image_file
from ..errors import ImageError, MobilenetsError
from ..runtime import Predictor


@dataclass(frozen=True)
class Task:
    """A task's name, the outputs a model must declare for it, and what it is for."""

    name: str
    outputs: tuple[str, ...]
    summary: str


TASKS: dict[str, Task] = {
    "classify": Task("classify", ("probabilities",), "top-k labels per image"),
    "embed": Task("embed", ("embedding",), "feature vectors per image"),
    "detect": Task("detect", ("boxes", "classes", "scores", "count"), "labelled boxes per image"),
    "segment": Task("segment", ("logits",), "a class per pixel"),
}


def check_task(predictor: Predictor, task: str) -> None:
    """`MobilenetsError` (one line) unless ``predictor`` declares the outputs ``task`` needs."""
    missing = [o for o in TASKS[task].outputs if o not in predictor.output_names]
    if missing:
        raise MobilenetsError(f"{predictor.info.get('source') or predictor.name} is a {predictor.task} model "
                              f"(outputs: {', '.join(predictor.output_names)}); `{task}` needs "
                              f"{', '.join(TASKS[task].outputs)}")  # fmt: skip


def expand_images(items: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expand to their image files (sorted, recursive, hidden files skipped)."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_image_file(f)
                           and not any(part.startswith(".") for part in f.relative_to(p).parts))  # fmt: skip
            if not found:
                raise MobilenetsError(f"{p}: folder has no images")
            out.extend(found)
        else:
            out.append(p)
    return out


@dataclass
class Skipped:
    """Images that could not be read: counted, the reasons kept."""

    errors: list[tuple[Path, str]]

    @property
    def count(self) -> int:
        return len(self.errors)


def preprocess_batches(paths: list[Path], transform: Callable, batch_size: int = 16, strict: bool = False,
                       skipped: Skipped | None = None) -> Iterator[tuple[list[Path], np.ndarray]]:  # fmt: skip
    """``(paths, N x C x H x W batch)`` through ``transform``; unreadable images are skipped into ``skipped``.

    With ``strict`` the first unreadable image raises its `ImageError` instead.
    """
    ok: list[Path] = []
    arrays: list[np.ndarray] = []
    for path in paths:
        try:
            arrays.append(transform(path).numpy())
            ok.append(path)
        except ImageError as e:
            if strict or skipped is None:
                raise
            skipped.errors.append((path, str(e)))
        if len(ok) == batch_size:
            yield ok, np.stack(arrays)
            ok, arrays = [], []
    if ok:
        yield ok, np.stack(arrays)
