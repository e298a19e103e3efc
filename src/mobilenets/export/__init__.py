"""Models leave through one door: `export_model` -> a ``.tflite`` or ``.onnx`` artifact + a parity report.

    from mobilenets.export import export_model
    result = export_model(model, "tflite", "m.tflite", calibration="calib_images/")  # int8
    print(result.parity)   # max |prob diff| and top-1 agreement vs the PyTorch model

Float artifacts compute what the PyTorch module computes (BN folded, TF 'SAME' padding
kept). Int8 artifacts are statically calibrated on the images given (see `quantize`).
Each artifact carries its contract (`metadata.ArtifactInfo`); `mobilenets.runtime`
reads it, so ``load_predictor(weights="m.tflite", backend="litert")`` needs nothing else.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from .metadata import ArtifactError, ArtifactInfo, artifact_format, read_artifact_info

FORMATS = ("tflite", "onnx")
INPUT_TYPES = ("int8", "uint8")

__all__ = ["FORMATS", "ArtifactError", "ArtifactInfo", "ExportResult", "ParityReport", "artifact_format",
           "base_info", "export_model", "parity_report", "read_artifact_info"]  # fmt: skip


@dataclass
class ParityReport:
    """Exported artifact vs the PyTorch model on the same preprocessed images."""

    images: int
    source: str  # what the images were: a folder, "calibration images", "synthetic"
    max_abs_prob_diff: float
    top1_agreement: float  # fraction of images with the same arg-max class

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (f"parity on {self.images} {self.source}: max |prob diff| {self.max_abs_prob_diff:.2e}, "
                f"top-1 agreement {100 * self.top1_agreement:.1f}%")  # fmt: skip


@dataclass
class ExportResult:
    path: Path
    info: ArtifactInfo
    parity: ParityReport

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.info.format, "int8": self.info.int8,
                "input_dtype": self.info.input_dtype, "bytes": self.path.stat().st_size,
                "parity": self.parity.as_dict()}  # fmt: skip


def base_info(model: torch.nn.Module, fmt: str, resolution: int, crop_fraction: float = 0.875) -> ArtifactInfo:
    """The artifact contract of ``model`` (labels, size, preprocessing) before format details are filled in."""
    from .. import __version__

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return ArtifactInfo(
        name=getattr(model, "name", "mobilenet_v1"), format=fmt, resolution=resolution,
        num_classes=model.num_classes, num_features=model.num_features, labels=cfg.get("labels"),
        has_background=bool(cfg.get("has_background")), crop_fraction=crop_fraction,
        alpha=getattr(model, "alpha", None), source=cfg.get("source"), mobilenets_version=__version__,
    )  # fmt: skip


def synthetic_images(resolution: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random images in [-1, 1] (for parity when no images are given)."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(-1, 1, (count, 3, 8, 8)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(resolution, resolution), mode="bilinear")
    return x.numpy().clip(-1, 1)


def parity_report(artifact: str | os.PathLike, model: torch.nn.Module, images: np.ndarray, source: str,
                  threads: int | None = None) -> ParityReport:  # fmt: skip
    """Run ``images`` (NCHW, preprocessed) through the artifact and through ``model``; compare probabilities."""
    from ..runtime import load_predictor

    predictor = load_predictor(weights=artifact, backend="litert" if artifact_format(artifact) == "tflite" else "onnxruntime",
                               threads=threads)  # fmt: skip
    with torch.inference_mode():
        ref = torch.cat([model.eval()(torch.from_numpy(images[i : i + 32])).softmax(1)
                         for i in range(0, len(images), 32)]).numpy()  # fmt: skip
    got = np.concatenate([predictor.probabilities(images[i : i + 32]) for i in range(0, len(images), 32)])
    return ParityReport(len(images), source, float(np.abs(got - ref).max()), float((got.argmax(1) == ref.argmax(1)).mean()))


def export_model(model: torch.nn.Module, fmt: str, out: str | os.PathLike, *, resolution: int | None = None,
                 calibration: np.ndarray | None = None, input_dtype: str = "int8",
                 parity_images: np.ndarray | None = None, parity_source: str = "images",
                 crop_fraction: float = 0.875) -> ExportResult:  # fmt: skip
    """Export ``model`` (a `MobileNetV1` with a classifier) to ``out``; int8 when ``calibration`` is given.

    Args:
        fmt: "tflite" (litert-torch) or "onnx" (torch.onnx).
        resolution: input side of the artifact (default: the model's).
        calibration: preprocessed NCHW images for static int8 calibration (`quantize.calibration_images`).
        input_dtype: int8 .tflite only: "int8" or "uint8" image input.
        parity_images: images for the parity report (default: ``calibration``, else synthetic).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if input_dtype not in INPUT_TYPES:
        raise ConfigError(f"input type must be int8 or uint8, got {input_dtype!r}")
    if fmt == "onnx" and calibration is not None and input_dtype != "int8":
        raise ConfigError("uint8 input is a .tflite option; an int8 .onnx takes float input and quantizes inside")
    resolution = resolution or getattr(model, "default_resolution", None) or 224
    model = model.eval()
    info = base_info(model, fmt, resolution, crop_fraction)
    if fmt == "tflite":
        from .litert import export_tflite

        info = export_tflite(model, out, info, calibration, input_dtype)
    else:
        from .onnx import export_onnx

        info = export_onnx(model, out, info, calibration)
    if parity_images is None:
        parity_images, parity_source = (calibration, "calibration images") if calibration is not None else (
            synthetic_images(resolution), "synthetic images")  # fmt: skip
    return ExportResult(Path(out), info, parity_report(out, model, parity_images, parity_source))
