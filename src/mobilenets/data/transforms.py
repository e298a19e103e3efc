"""Preprocessing: the reference eval transform (TF1 inception eval) and a fast Pillow one.

The official MobileNet v1 numbers were measured with TF-Slim's ``preprocess_for_eval``:
decode the JPEG as ``tf.image.decode_jpeg`` does (libjpeg's fast integer DCT), convert to
float in [0, 1], ``tf.image.central_crop`` (the weights' crop fraction),
``tf.image.resize_bilinear`` with TF1 semantics (``align_corners=False``, no half-pixel
centres, no antialias), then ``(x - mean) / std``. Pillow's bilinear resize antialiases
when shrinking and samples at pixel centres; that moves top-1 by 1-4 points, so
`EvalTransform` reproduces TF exactly and `PillowEvalTransform` is offered, under that
name, only for speed. ``EvalTransform.from_cfg(cfg)`` builds the transform a
`PretrainedCfg` describes; the defaults are TF-Slim's eval contract.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..models.cfg import INCEPTION_MEAN, INCEPTION_STD, SLIM_EVAL_CROP
from .images import load_image

# TF's convert_image_dtype multiplies by the float32 constant 1/255.
U8_SCALE = np.float32(1.0 / 255.0)


def tf_central_crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """``(top, left, crop_h, crop_w)`` exactly as ``tf.image.central_crop`` computes them."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"central crop fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return 0, 0, height, width
    top = int((float(height) - float(height) * fraction) / 2)  # float64 then truncate, as TF
    left = int((float(width) - float(width) * fraction) / 2)
    return top, left, height - 2 * top, width - 2 * left


def tf1_resize_bilinear(image: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """TF1 ``resize_bilinear(align_corners=False, half_pixel_centers=False)`` of an HxWxC image.

    Source coordinate of output pixel ``i`` is ``i * in / out`` (float32), no antialias;
    the arithmetic order follows TF's kernel so results agree to float32 rounding. A uint8
    image is treated as TF's ``convert_image_dtype`` would (x / 255 in float32), converting
    only the rows and columns the output reads, which gives identical values faster.
    """
    image = np.asarray(image)
    in_h, in_w = image.shape[:2]

    def axis(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale = np.float32(in_size) / np.float32(out_size)
        src = np.arange(out_size, dtype=np.float32) * scale
        lo = np.floor(src)
        hi = np.minimum(np.ceil(src), in_size - 1).astype(np.int64)
        return lo.astype(np.int64), hi, (src - lo).astype(np.float32)

    def to_float(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32) * U8_SCALE if x.dtype == np.uint8 else x.astype(np.float32, copy=False)

    y0, y1, ly = axis(in_h, out_h)
    x0, x1, lx = axis(in_w, out_w)
    lx = lx[None, :, None]
    top = to_float(image[y0])
    bottom = to_float(image[y1])
    top = top[:, x0] + (top[:, x1] - top[:, x0]) * lx
    bottom = bottom[:, x0] + (bottom[:, x1] - bottom[:, x0]) * lx
    return top + (bottom - top) * ly[:, None, None]


@dataclass(frozen=True)
class EvalTransform:
    """The reference eval preprocessing: PIL image or path -> float32 tensor 3 x R x R.

    Args:
        resolution: output side.
        crop_fraction: central crop kept before resizing (TF-Slim's eval crop for the
            official numbers; 1.0 resizes the whole image, as the TFLite demo apps do).
        mean, std: per channel (or one for all), applied to [0, 1] values.
        decode: how a path or bytes is decoded ("tf": as ``tf.image.decode_jpeg``; "pillow").
    """

    resolution: int = 224
    crop_fraction: float = SLIM_EVAL_CROP
    mean: tuple[float, ...] | float = INCEPTION_MEAN
    std: tuple[float, ...] | float = INCEPTION_STD
    decode: str = "tf"

    @classmethod
    def from_cfg(cls, cfg) -> EvalTransform:
        """The transform a `PretrainedCfg` describes (its resize method picks the class)."""
        kind = PillowEvalTransform if cfg.resize == "pillow_bilinear" else EvalTransform
        return kind(cfg.resolution, cfg.crop_fraction, tuple(cfg.mean), tuple(cfg.std), cfg.decode)

    def load(self, img: Image.Image | str | os.PathLike | bytes) -> Image.Image:
        """An RGB image from a PIL image, a path or encoded bytes (decoded as ``decode`` says)."""
        return img if isinstance(img, Image.Image) else load_image(img, decode=self.decode)

    def to_array(self, img: Image.Image | str | os.PathLike | bytes) -> np.ndarray:
        """HxWx3 float32 after crop and resize, still in [0, 1] (for uint8 runtimes)."""
        x = np.asarray(self.load(img), dtype=np.uint8)
        top, left, h, w = tf_central_crop_box(x.shape[0], x.shape[1], self.crop_fraction)
        return tf1_resize_bilinear(x[top : top + h, left : left + w], self.resolution, self.resolution)

    def __call__(self, img: Image.Image | str | os.PathLike | bytes) -> torch.Tensor:
        x = (self.to_array(img) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@dataclass(frozen=True)
class PillowEvalTransform(EvalTransform):
    """Fast approximation: Pillow's crop and (antialiased) bilinear resize. Not the reference."""

    decode: str = "pillow"

    def to_array(self, img: Image.Image | str | os.PathLike | bytes) -> np.ndarray:
        img = self.load(img)
        top, left, h, w = tf_central_crop_box(img.height, img.width, self.crop_fraction)
        img = img.crop((left, top, left + w, top + h)).resize((self.resolution, self.resolution), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).astype(np.float32) * U8_SCALE
