"""Export to ONNX through ``torch.onnx``: float, or int8 QDQ statically calibrated.

`DeployModule` is traced (TorchScript exporter, opset 17, dynamic batch; one graph output
per declared output, under its name), then ONNX Runtime's basic graph optimizations fold
the constant TF 'SAME' pads into the convs' ``pads`` attribute (ONNX convs take
asymmetric padding natively) and constant-fold the rest: a float MobileNet v1 classifier
is 28 Conv, 27 Clip, one pool, flatten and softmax. Int8 is QDQ (`quantize.ort_quantize`):
per-channel int8 weights, uint8 activations, min/max calibration on the user's images.
The metadata rides in ``metadata_props``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import MobilenetsError
from ..models.deploy import DeployModule
from ..runtime.artifact import METADATA_KEY, ArtifactInfo
from ..utils import atomic_write

OPSET = 17
INPUT_NAME = "input"


def require_onnx():
    """Import onnx and onnxruntime, or say which extra installs them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise MobilenetsError("exporting to .onnx needs onnx and onnxruntime: pip install 'mobilenets[onnx]'") from None
    onnxruntime.set_default_logger_severity(3)
    return onnx, onnxruntime


def export_float_onnx(model: torch.nn.Module, input_size: tuple[int, int, int], out: str | os.PathLike,
                      bias_correction_images: np.ndarray | None = None) -> list[str]:  # fmt: skip
    """Trace ``model`` to ``out`` and let ONNX Runtime fold pads and constants; returns the output names.

    ``bias_correction_images``: first take the mean error of `quantize.ort_quantize`'s weight
    rounding on them out of the biases (`quantize.ort_correct_weight_rounding`).
    """
    _, ort = require_onnx()
    deploy = DeployModule(model, input_size).eval()
    if bias_correction_images is not None:
        from ..quantize import ort_correct_weight_rounding

        ort_correct_weight_rounding(deploy, bias_correction_images)
    names = list(deploy.names)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                deploy, (torch.zeros(1, *input_size),), str(raw), input_names=[INPUT_NAME], output_names=names,
                opset_version=OPSET, dynamo=False, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]},
            )  # fmt: skip
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])
    return names


def export_onnx(model: torch.nn.Module, out: str | os.PathLike, info: ArtifactInfo,
                calibration: np.ndarray | None = None, bias_correction: bool = True) -> ArtifactInfo:  # fmt: skip
    """Write ``model`` as ``.onnx`` (int8 QDQ when ``calibration`` is given) with ``info`` inside."""
    onnx, _ = require_onnx()
    info.layout, info.int8, info.input_dtype, info.input_quantization = "NCHW", calibration is not None, "float32", None
    bias_correction = bias_correction and calibration is not None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "float.onnx"
        names = export_float_onnx(model, info.cfg.input_size, path, calibration if bias_correction else None)
        info.tensors = {n: n for n in names}
        if calibration is not None:
            from ..quantize import ort_quantize, ort_settings

            quantized = Path(tmp) / "int8.onnx"
            level = logging.getLogger().level
            logging.getLogger().setLevel(logging.ERROR)  # quantize_static's advice to pre-process (done above)
            try:
                ort_quantize(path, quantized, calibration, INPUT_NAME)
            finally:
                logging.getLogger().setLevel(level)
            path = quantized
            info.quantization = {**ort_settings(), "calibration_images": len(calibration),
                                 "bias_correction": bias_correction}  # fmt: skip
        proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "mobilenets"
    with atomic_write(out) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return info
