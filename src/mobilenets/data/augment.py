"""Train augmentation: TF-Slim's inception ``preprocess_for_train`` (fast mode), as MobileNet v1 used it.

``preprocess_image(..., is_training=True, fast_mode=True)`` in TF-Slim does, per image:

1. ``sample_distorted_bounding_box`` over the whole image: area fraction uniform in
   ``area_range`` (0.05, 1.0), aspect ratio uniform in ``aspect_range`` (3/4, 4/3), up to
   100 attempts, and the crop must cover ``min_object_covered`` (0.1) of the image, so the
   effective area range is [0.1, 1.0]; the whole image when every attempt fails;
2. bilinear resize of the crop with TF1 semantics (fast mode uses bilinear only);
3. random left-right flip;
4. ``distort_color`` fast mode, ordering 0: brightness +- 32/255, then saturation x [0.5, 1.5],
   then clip to [0, 1];
5. ``(x - 0.5) * 2``.

The distributions are TF's; the random numbers are not (TF's RNG cannot be reproduced).
Each call takes its own ``numpy.random.Generator``, so an image's augmentation depends only
on the seed it is given (the trainer derives it from run seed, epoch and image index). That
makes training reproducible across DataLoader workers, processes and resumed runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .transforms import U8_SCALE, tf1_resize_bilinear


@dataclass(frozen=True)
class TrainTransform:
    """TF1 inception train augmentation: PIL image + generator -> float32 tensor 3 x R x R in [-1, 1]."""

    resolution: int = 224
    area_range: tuple[float, float] = (0.05, 1.0)
    aspect_range: tuple[float, float] = (3 / 4, 4 / 3)
    min_object_covered: float = 0.1
    max_attempts: int = 100
    flip: bool = True
    brightness: float = 32 / 255
    saturation: tuple[float, float] = (0.5, 1.5)

    def crop_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """``(top, left, h, w)`` of a distorted bounding box, as ``sample_distorted_bounding_box`` draws it."""
        area = height * width
        min_area = max(self.area_range[0], self.min_object_covered) * area
        for _ in range(self.max_attempts):
            aspect = rng.uniform(*self.aspect_range)  # width / height
            target = rng.uniform(*self.area_range) * area
            h = round(math.sqrt(target / aspect))
            w = round(h * aspect)
            if 0 < h <= height and 0 < w <= width and h * w >= min_area:
                top = rng.integers(0, height - h + 1).item()
                left = rng.integers(0, width - w + 1).item()
                return top, left, h, w
        return 0, 0, height, width

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = self.crop_box(img.height, img.width, rng)
        crop = np.asarray(img, dtype=np.uint8)[top : top + h, left : left + w].astype(np.float32) * U8_SCALE
        x = tf1_resize_bilinear(crop, self.resolution, self.resolution)
        if self.flip and rng.random() < 0.5:
            x = x[:, ::-1]
        if self.brightness:
            x = x + np.float32(rng.uniform(-self.brightness, self.brightness))
        if self.saturation != (1.0, 1.0):
            x = adjust_saturation(x, np.float32(rng.uniform(*self.saturation)))
        x = (np.clip(x, 0.0, 1.0) - np.float32(0.5)) * np.float32(2.0)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def adjust_saturation(rgb: np.ndarray, factor: np.float32) -> np.ndarray:
    """``tf.image.adjust_saturation``: scale HSV saturation by ``factor`` (clipped to 1), keep hue and value.

    For fixed hue and value every channel is ``v - v * s * k(h)``, so scaling ``s`` to
    ``s' = min(s * factor, 1)`` is ``c' = v - (v - c) * s' / s`` without leaving RGB.
    Like TF, saturation is computed on the values as given (brightness may have pushed
    them outside [0, 1]; the clip comes after).
    """
    v = rgb.max(axis=2, keepdims=True)
    m = rgb.min(axis=2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.where(v > 0, (v - m) / v, 0).astype(np.float32)
        s_new = np.minimum(s * factor, np.float32(1.0))
        ratio = np.where(s > 0, s_new / s, 1).astype(np.float32)
    return (v - (v - rgb) * ratio).astype(np.float32)
