"""Models leave through one door: `export_model` -> a ``.tflite`` or ``.onnx`` artifact + a parity report.

    from mobilenets.export import export_model
    result = export_model(model, "tflite", "m.tflite", calibration=images)  # int8, uint8 input
    print(result.parity)   # every declared output vs the PyTorch model

Any model with ``pretrained_cfg``, ``outputs`` and ``predict`` exports: its fused inference
graph (`models.deploy.DeployModule`) is traced and each declared output becomes a tensor of
the artifact. Float artifacts compute what the PyTorch module computes (BN folded, TF 'SAME'
padding kept); int8 artifacts are statically calibrated on the images given (`quantize`).
Each artifact carries its contract (`runtime.artifact.ArtifactInfo`: the weights'
`PretrainedCfg`, the outputs and their tensors), and ``.tflite`` files also the standard
TFLite Model Metadata that MediaPipe Tasks and the TFLite Task Library read.
"""

from __future__ import annotations

import copy
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..models.cfg import OutputSpec
from ..runtime.artifact import ArtifactInfo

FORMATS = ("tflite", "onnx")
INPUT_TYPES = ("int8", "uint8")

__all__ = ["FORMATS", "ExportResult", "ParityReport", "base_info", "export_model", "parity_report"]


@dataclass
class ParityReport:
    """Exported artifact vs the PyTorch model on the same preprocessed images, output by output."""

    images: int
    source: str  # what the images were: a folder, "calibration images", "synthetic images"
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per declared output
    top1_agreement: float | None = None  # classifiers: fraction of images with the same arg-max class
    agreement: dict[str, float] = field(default_factory=dict)  # task-specific (pixels, matched boxes)

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        line = f"parity on {self.images} {self.source}: max |diff| {diffs}"
        if self.top1_agreement is not None:
            line += f"; top-1 agreement {100 * self.top1_agreement:.1f}%"
        for k, v in self.agreement.items():
            line += f"; {k} {100 * v:.2f}%"
        return line


@dataclass
class ExportResult:
    path: Path
    info: ArtifactInfo
    parity: ParityReport | None

    def as_dict(self) -> dict:
        return {"path": str(self.path), "format": self.info.format, "int8": self.info.int8,
                "input_dtype": self.info.input_dtype, "bytes": self.path.stat().st_size,
                "outputs": [o.name for o in self.info.outputs],
                "parity": self.parity.as_dict() if self.parity else None}  # fmt: skip


def base_info(model: torch.nn.Module, fmt: str, crop_fraction: float | None = None) -> ArtifactInfo:
    """The artifact contract of ``model`` before format details (tensors, layout, dtypes) are filled in."""
    from ..version import __version__

    cfg = model.pretrained_cfg
    if crop_fraction is not None:
        cfg = cfg.replace(crop_fraction=crop_fraction)
    specs: tuple[OutputSpec, ...] = tuple(model.outputs)
    return ArtifactInfo(name=getattr(model, "name", None) or cfg.arch, format=fmt, cfg=cfg, outputs=specs,
                        mobilenets_version=__version__)  # fmt: skip


def synthetic_images(input_size: tuple[int, int, int], count: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random images in [-1, 1] (for parity when no images are given)."""
    rng = np.random.default_rng(seed)
    c, h, w = input_size
    coarse = rng.uniform(-1, 1, (count, c, 8, 8)).astype(np.float32)
    x = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(h, w), mode="bilinear")
    return x.numpy().clip(-1, 1)


def parity_report(artifact: str | os.PathLike, model: torch.nn.Module, images: np.ndarray, source: str,
                  threads: int | None = None) -> ParityReport:  # fmt: skip
    """Run ``images`` (NCHW, preprocessed) through the artifact and through ``model``; compare every output."""
    from ..runtime import artifact_format, open_backend

    backend = "litert" if artifact_format(artifact) == "tflite" else "onnxruntime"
    predictor = open_backend(backend, artifact, threads=threads)
    model = model.eval()
    diffs: dict[str, float] = {}
    agree, pixels = [], []
    for i in range(0, len(images), 16):
        batch = images[i : i + 16]
        got = predictor.run(batch)
        with torch.inference_mode():
            ref = {k: v.numpy() for k, v in model.predict(torch.from_numpy(batch)).items()}
        for name, y in got.items():
            diffs[name] = max(diffs.get(name, 0.0), float(np.abs(y - ref[name]).max()))
        if "probabilities" in got:
            agree.append(got["probabilities"].argmax(1) == ref["probabilities"].argmax(1))
        if "logits" in got and got["logits"].ndim == 4:  # segmenters: same arg-max class per pixel
            pixels.append((got["logits"].argmax(1) == ref["logits"].argmax(1)).reshape(-1))
    top1 = float(np.concatenate(agree).mean()) if agree else None
    agreement = {"pixels": float(np.concatenate(pixels).mean())} if pixels else {}
    return ParityReport(len(images), source, diffs, top1, agreement)


def export_model(model: torch.nn.Module, fmt: str, out: str | os.PathLike, *, resolution: int | None = None,
                 calibration: np.ndarray | None = None, input_dtype: str = "uint8",
                 parity_images: np.ndarray | None = None, parity_source: str = "images",
                 crop_fraction: float | None = None, parity: bool = True,
                 file_ranges: bool | None = None, bias_correction: bool = True) -> ExportResult:  # fmt: skip
    """Export ``model`` to ``out``; int8 when ``calibration`` is given.

    Args:
        fmt: "tflite" (litert-torch) or "onnx" (torch.onnx).
        resolution: input side of the artifact (default: the model's ``pretrained_cfg``).
        calibration: preprocessed NCHW images for static int8 calibration (`quantize.calibration_images`).
        input_dtype: int8 .tflite only: "uint8" (default: what MediaPipe and the Task Library take) or "int8".
        parity_images: images for the parity report (default: ``calibration``, else synthetic).
        crop_fraction: the central crop the artifact records (default: the weights').
        parity: run the parity report (off for cached copies that `auto` makes).
        file_ranges: int8 SSD from a quantized file only (`weights.ssd_tflite.load_ssd`): its
            activations on the file's uint8 grids and its weights exact where int8 holds them
            (`export.ssd.file_activation_ranges`), instead of calibrated ranges. Default: on
            for an int8 .tflite of a model that still holds the file's weights
            (`weights.ssd_tflite.holds_file_weights`), off otherwise; False forces calibration.
        bias_correction: int8: take the mean error of the weight rounding out of each conv's
            bias (`quantize.correct_weight_rounding`); not on an SSD's file grids.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if input_dtype not in INPUT_TYPES:
        raise ConfigError(f"input type must be int8 or uint8, got {input_dtype!r}")
    if not hasattr(model, "pretrained_cfg") or not hasattr(model, "outputs"):
        raise ConfigError(f"{type(model).__name__} cannot be exported (it declares no pretrained_cfg/outputs)")
    model = model.eval()
    if resolution and resolution != model.pretrained_cfg.resolution:
        model = copy.copy(model)  # shares the parameters; only the contract of this export changes
        model.pretrained_cfg = model.pretrained_cfg.replace(input_size=(3, resolution, resolution))
    info = base_info(model, fmt, crop_fraction)
    from .ssd import detection_parity, export_detector, is_detector

    if file_ranges is None:
        from ..weights.ssd_tflite import holds_file_weights

        file_ranges = calibration is not None and fmt == "tflite" and is_detector(model) and holds_file_weights(model)
    if file_ranges and not (is_detector(model) and fmt == "tflite"):
        raise ConfigError("file_ranges applies to an int8 .tflite of an SSD read from a quantized file")
    if is_detector(model):  # network + TFLite_Detection_PostProcess (.tflite), NMS in the graph (.onnx)
        info = export_detector(model, fmt, out, info, calibration, input_dtype, file_ranges, bias_correction)
    elif fmt == "tflite":
        from .litert import export_tflite

        info = export_tflite(model, out, info, calibration, input_dtype, bias_correction)
    else:
        from .onnx import export_onnx

        info = export_onnx(model, out, info, calibration, bias_correction)
    report = None
    if parity:
        if parity_images is None:
            parity_images, parity_source = (calibration, "calibration images") if calibration is not None else (
                synthetic_images(info.cfg.input_size), "synthetic images")  # fmt: skip
        report = (detection_parity if is_detector(model) else parity_report)(out, model, parity_images, parity_source)
    return ExportResult(Path(out), info, report)
