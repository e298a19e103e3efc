"""Post-training int8 quantization of MobileNet v1, calibrated on the user's images.

What it takes for MobileNet v1 to keep its accuracy in int8:

- **BatchNorm folded first** (`models.deploy.DeployModule`): the folded weights are what
  runs, so they are what gets quantized.
- **Per-channel symmetric int8 weights.** The depthwise filters of one layer differ in
  magnitude by two orders (folding BN scales each channel separately); one scale per
  tensor rounds the small channels to zero. One scale per output channel keeps them.
- **ReLU6 fused into its conv**, so each activation is observed after the clamp: its range
  is at most [0, 6] and the 8 bits are spent there, not on pre-activation outliers.
- **Min/max calibration.** ReLU6 bounds every activation, so there are no tails to clip;
  min/max over a few hundred images is stable, and far cheaper than histogram observers.
- **Padding shares its input's quantization**, and the softmax runs in float on the
  dequantized logits (it is 0.1% of the work and keeps the probabilities smooth).
- **Bias correction of the weight rounding** (`correct_weight_rounding`): rounding a
  channel's weights shifts its mean output by ``E[conv(x, q(w) - w)]``; measured on the
  calibration images and taken out of the bias, so the int8 layer is right on average
  (for PT2E's rounding, and for ONNX Runtime's: `ort_correct_weight_rounding`).

Calibration images are the user's (`calibration_images`), preprocessed with the model's
own eval transform; never the evaluation set.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .data.images import is_image_file, load_image
from .data.transforms import EvalTransform
from .errors import ImageError, MobilenetsError
from .utils import x86_without_vnni

DEFAULT_CALIBRATION_SIZE = 200


class CalibrationError(MobilenetsError):
    """Calibration images that are missing, empty or unreadable."""


def image_files(folder: str | os.PathLike, size: int | None = DEFAULT_CALIBRATION_SIZE, seed: int = 0,
                      purpose: str = "calibrate on") -> list[Path]:  # fmt: skip
    """Up to ``size`` image files under ``folder`` (recursive), a seeded random sample, in path order."""
    folder = Path(folder)
    if not folder.exists():
        raise CalibrationError(f"{folder}: no such folder (of images to {purpose})")
    if not folder.is_dir():
        raise CalibrationError(f"{folder}: not a folder (of images to {purpose})")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise CalibrationError(f"{folder}: no images to {purpose} (extensions: .jpg .jpeg .png .bmp .gif .webp .tif)")
    if size is not None and len(files) > size:
        pick = np.random.default_rng(seed).choice(len(files), size, replace=False)
        files = [files[i] for i in sorted(pick)]
    return files


def load_batch(files: list[Path], transform: EvalTransform, desc: str = "preprocessing") -> np.ndarray:
    """N x 3 x R x R float32 through ``transform``; unreadable files are skipped with one warning."""
    arrays, bad = [], []
    for path in tqdm(files, desc=desc, unit="img", leave=False, disable=None if len(files) >= 20 else True):
        try:
            arrays.append(transform(load_image(path)).numpy())
        except ImageError as e:
            bad.append(str(e))
    if not arrays:
        raise CalibrationError(f"none of the {len(files)} image(s) could be read; first error: {bad[0]}")
    if bad:
        print(f"mobilenets: warning: skipped {len(bad)} unreadable image(s); first: {bad[0]}", file=sys.stderr)
    return np.stack(arrays)


def calibration_images(folder: str | os.PathLike, transform: EvalTransform,
                       size: int | None = DEFAULT_CALIBRATION_SIZE, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Calibration batch from ``folder`` through the model's own eval ``transform`` (`EvalTransform.from_cfg`)."""
    files = image_files(folder, size, seed)
    return load_batch(files, transform, desc="calibration images")


# --- PT2E (LiteRT): MobileNet-aware annotation ------------------------------------------------


def pt2e_quantizer():
    """litert-torch's PT2E quantizer, taught MobileNet v1: conv+ReLU6 fused, shared padding qparams, min/max."""
    import torch
    from litert_torch.quantize import pt2e_quantizer as pq
    from litert_torch.quantize import pt2e_quantizer_utils as pqu
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    aten = torch.ops.aten
    convs = (aten.conv2d.default, aten.convolution.default)
    clamps = (aten.hardtanh.default, aten.hardtanh_.default)
    pads = (aten.constant_pad_nd.default, aten.pad.default)

    class MobileNetQuantizer(pq.PT2EQuantizer):
        """Annotates conv -> ReLU6 and padding first; litert-torch's own patterns do the rest."""

        def annotate(self, model):
            cfg = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in clamps:
                    continue
                conv = node.args[0]
                if getattr(conv, "target", None) not in convs or len(conv.users) != 1:
                    continue
                qmap = {conv.args[0]: pqu.get_input_act_qspec(cfg), conv.args[1]: pqu.get_weight_qspec(cfg)}
                if len(conv.args) > 2 and conv.args[2] is not None:
                    qmap[conv.args[2]] = pqu.get_bias_qspec(cfg)
                conv.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=pqu.get_output_act_qspec(cfg), _annotated=True
                )
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in pads:
                    continue
                src = node.args[0]
                if "quantization_annotation" in src.meta:  # after a ReLU6: same scale, no requantize
                    spec = SharedQuantizationSpec(src)
                    qmap = {src: spec}
                else:  # the stem's padding of the image: quantize the input once, pad in int8
                    spec = SharedQuantizationSpec((src, node))
                    qmap = {src: pqu.get_input_act_qspec(cfg)}
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map=qmap, output_qspec=spec, _annotated=True
                )
            # Residual ADDs (MobileNet v2 blocks, conv or ADD outputs on both sides) run in int8 too;
            # litert-torch's own add pattern needs source metadata the exported graph lacks.
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target != aten.add.Tensor or "quantization_annotation" in node.meta:
                    continue
                a, b = node.args[:2]
                if all(isinstance(v, torch.fx.Node) and v.target in (*convs, aten.add.Tensor) for v in (a, b)):
                    node.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: pqu.get_input_act_qspec(cfg), b: pqu.get_input_act_qspec(cfg)},
                        output_qspec=pqu.get_output_act_qspec(cfg), _annotated=True,
                    )  # fmt: skip
            return super().annotate(model)

    cfg = pq.get_symmetric_quantization_config(is_per_channel=True)
    act = dataclasses.replace(cfg.input_activation, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))
    cfg = dataclasses.replace(cfg, input_activation=act, output_activation=act)
    return MobileNetQuantizer().set_global(cfg)


# Ops that move values without changing them: an observer after one belongs to the layer before.
_SHAPE_OPS = ("permute", "reshape", "view", "pad", "constant_pad_nd", "squeeze", "unsqueeze", "flatten")


def _module_named(path: str, names) -> str | None:
    """The name in ``names`` that ends ``path`` or one of its parents (``a.b.Conv2d_0.1`` -> ``Conv2d_0``)."""
    while path:
        for name in names:
            if path == name or path.endswith("." + name):
                return name
        path = path.rpartition(".")[0]
    return None


def _observed_module(node, names) -> str | None:
    """The name in ``names`` of the module whose output (or weight) ``node`` is, through shape-only ops."""
    while node is not None:
        if node.op == "get_attr":  # a parameter: "<module path>.weight"
            return _module_named(str(node.target).rpartition(".")[0], names)
        target = str(getattr(node, "target", ""))
        if any(f"aten.{op}." in target for op in _SHAPE_OPS):  # its values are its input's (a pad: the layer's input)
            node = node.args[0] if node.args else None
            continue
        stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
        return _module_named(list(stack.values())[-1][0] if stack else "", names)
    return None


PT2E_WEIGHT_EPS = 2.0**-12  # the smallest weight scale litert-torch's per-channel observer gives


def int8_weight_scale(weight, max_abs=None, levels: int = 127, floor: float = PT2E_WEIGHT_EPS):
    """Per-output-channel scale of symmetric int8 weights: ``max |w| / levels`` (or ``max_abs / levels``), at least ``floor``.

    PT2E (litert-torch) and ONNX Runtime's 8-bit weights: ``levels`` 127; ONNX Runtime's
    7-bit (``reduce_range``) weights: 64.
    """
    import torch

    if max_abs is None:
        max_abs = weight.detach().abs().flatten(1).amax(1)
    scale = torch.as_tensor(np.asarray(max_abs), dtype=torch.float64) / levels
    return scale.clamp_min(floor).view(-1, *([1] * (weight.dim() - 1)))


def correct_weight_rounding(module, images: np.ndarray, weight_ranges: dict[str, np.ndarray] | None = None,
                            batch: int = 16, levels: int = 127, floor: float = PT2E_WEIGHT_EPS,
                            skip: tuple[str, ...] = ()) -> int:  # fmt: skip
    """Fold the mean error of int8 weight rounding into each conv's bias, in place; returns the convs changed.

    For every ``nn.Conv2d`` of ``module`` (a `DeployModule`: BN folded, padding explicit, so
    the conv sees exactly what the int8 graph will; ``images`` in its input layout) the
    weights are rounded as the quantizer will round them (`int8_weight_scale` with
    ``levels`` and ``floor``; ``weight_ranges`` by module name as in `pt2e_calibrate`) and
    ``mean over the images of conv(x, q(w) - w)`` per output channel, with the conv's own
    stride, padding and groups, is subtracted from its bias (Nagel et al. 2019, "Data-Free
    Quantization", empirical bias correction). Convs under a name in ``skip`` (layers the
    quantizer keeps float) are left alone. The weights stay float: the quantizer rounds them
    afterwards. Convs without a bias get one.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    convs = {name: m for name, m in module.named_modules() if type(m) is nn.Conv2d}
    deltas, sums = {}, {}
    for name, conv in convs.items():
        if skip and _module_named(name, skip) is not None:
            continue
        w = conv.weight.detach().double()
        r = weight_ranges.get(_module_named(name, weight_ranges)) if weight_ranges else None
        s = int8_weight_scale(w, None if r is None else r, levels, floor)
        dw = torch.round(w / s).clamp(-levels, levels) * s - w
        dw = torch.where(dw.abs() <= 1e-5 * s, 0.0, dw)  # on the grid but for float32's own rounding
        if float(dw.abs().max()) > 0:
            deltas[name] = dw

    def hook(conv, args, name):
        x, dw = args[0], deltas[name]
        if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.groups == 1 and conv.padding in ((0, 0), 0):
            part = dw.flatten(1) @ x.double().sum((0, 2, 3))  # linear: the mean of conv(x, dw) is dw @ the mean of x
            n = x.shape[0] * x.shape[2] * x.shape[3]
        else:
            dy = F.conv2d(x.float(), dw.float(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
            part, n = dy.double().sum((0, 2, 3)), dy.shape[0] * dy.shape[2] * dy.shape[3]
        total, count = sums.get(name, (0.0, 0))
        sums[name] = (total + part, count + n)

    handles = [convs[n].register_forward_pre_hook(lambda c, a, n=n: hook(c, a, n)) for n in deltas]
    try:
        with torch.no_grad():
            steps = range(0, len(images), batch)
            for i in tqdm(steps, desc="bias correction", unit="batch", leave=False, disable=None):
                module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch], np.float32)))
    finally:
        for h in handles:
            h.remove()
    for name, (total, count) in sums.items():
        conv = convs[name]
        shift = (total / count).float()
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels), requires_grad=False)
        conv.bias.data -= shift
    return len(sums)


def pt2e_calibrate(module, example_nhwc: np.ndarray, calibration: np.ndarray, batch: int = 16,
                   ranges: dict[str, tuple[float, float]] | None = None,
                   weight_ranges: dict[str, np.ndarray] | None = None,
                   cover: dict[str, tuple[float | None, float | None]] | None = None,
                   bias_correction: bool = True):  # fmt: skip
    """Export ``module`` (NHWC input), observe ``calibration`` (NCHW), return (quantized graph, quantizer).

    ``bias_correction`` (default) first applies `correct_weight_rounding` to ``module`` (in
    place: pass a copy, such as a `DeployModule`). ``cover``: ``{module name: (lo, hi)}``
    widens the observed range of its output to reach down to ``lo`` and up to ``hi`` (None:
    that end as observed).

    To put tensors on known grids, such as those of an already quantized file (a name
    matches the end of a module path, e.g. ``backbone.features.Conv2d_0``):
    ``ranges``: ``{module name: (min, max)}`` replaces the observed range of its output;
    ``weight_ranges``: ``{module name: per-output-channel max |w|}`` replaces that of its
    weight (symmetric int8: scale ``max / 127``).
    """
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    if bias_correction:
        correct_weight_rounding(module, calibration.transpose(0, 2, 3, 1), weight_ranges, batch)
    ep = torch.export.export(module, (torch.from_numpy(example_nhwc),),
                             dynamic_shapes=({0: torch.export.Dim("batch", max=4096)},))  # fmt: skip
    quantizer = pt2e_quantizer()
    prepared = quantize_pt2e.prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for i in tqdm(range(0, len(calibration), batch), desc="calibrating", unit="batch", leave=False, disable=None):
            prepared(torch.from_numpy(np.ascontiguousarray(calibration[i : i + batch].transpose(0, 2, 3, 1))))
    ranges, weight_ranges, cover = ranges or {}, weight_ranges or {}, cover or {}
    for node in prepared.graph.nodes if ranges or weight_ranges or cover else ():
        if node.op != "call_module" or not node.args or not isinstance(node.args[0], torch.fx.Node):
            continue
        observer = getattr(prepared, str(node.target))
        if not hasattr(observer, "min_val"):
            continue
        if node.args[0].op == "get_attr":
            name = _observed_module(node.args[0], weight_ranges)
            if name is not None and observer.max_val.shape == (len(weight_ranges[name]),):
                r = torch.as_tensor(np.asarray(weight_ranges[name]), dtype=observer.max_val.dtype)
                observer.min_val.copy_(-r)
                observer.max_val.copy_(r)
        elif observer.min_val.dim() == 0:
            name = _observed_module(node.args[0], ranges)
            if name is not None:
                lo, hi = ranges[name]
                observer.min_val.fill_(lo)
                observer.max_val.fill_(hi)
            name = _observed_module(node.args[0], cover)
            if name is not None:
                lo, hi = cover[name]
                if lo is not None:
                    observer.min_val.fill_(min(float(observer.min_val), lo))
                if hi is not None:
                    observer.max_val.fill_(max(float(observer.max_val), hi))
    converted = quantize_pt2e.convert_pt2e(prepared, fold_quantize=False)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    return move_exported_model_to_eval(converted), quantizer


# --- ONNX Runtime: QDQ, static calibration ----------------------------------------------------


# Weight width follows the CPU that exports (the one the artifact is made for). x86 without
# VNNI multiplies u8 x s8 pairs with VPMADDUBSW, whose int16 sums can saturate
# (255 * 127 * 2 > 32767): with 8-bit weights top-1 agreement dropped to ~84%, so there
# 7-bit weights (reduce_range) make saturation impossible. With VNNI (VPDPBUSD sums in
# int32) nothing saturates and 7-bit weights only lose precision: on the 0.75_192_quant
# weights, imagenet_samples_100, 8-bit 77% and 7-bit 72% top-1 against 76% float (measured
# on an AVX-512/VNNI machine). The stem (3 input channels) and the first depthwise conv stay
# float: there ONNX Runtime's int8 kernels are slower than its fp32 ones on AVX2, and the
# image itself is then never rounded to 8 bits.
ORT_FLOAT_LAYERS = ("Conv2d_0", "Conv2d_1_depthwise")


def ort_weight_bits() -> int:
    """7 on x86 without VNNI-class int8 dot products, 8 elsewhere."""
    return 7 if x86_without_vnni() else 8


def ort_settings() -> dict:
    """How `ort_quantize` quantizes on this machine (recorded in the artifact)."""
    bits = ort_weight_bits()
    return {"format": "QDQ", "activations": "uint8 asymmetric", "weights": f"int8 per-channel symmetric, {bits}-bit",
            "weight_bits": bits, "calibration": "min/max", "softmax": "float", "float_layers": list(ORT_FLOAT_LAYERS),
            "made_for": "x86 with VNNI, or other CPUs" if bits == 8 else "x86 without VNNI (AVX2)"}  # fmt: skip


PT2E_SETTINGS = {"format": "PT2E -> TFLite", "activations": "int8 asymmetric", "weights": "int8 per-channel symmetric",
                 "calibration": "min/max", "softmax": "float"}  # fmt: skip


def ort_correct_weight_rounding(deploy, calibration: np.ndarray) -> int:
    """`correct_weight_rounding` for `ort_quantize`'s weights: this machine's width, its float layers left alone."""
    levels = 127 if ort_weight_bits() == 8 else 64  # ONNX Runtime's symmetric int8 range, or its reduced one
    return correct_weight_rounding(deploy, calibration, levels=levels, floor=float(np.finfo(np.float32).tiny),
                                   skip=ORT_FLOAT_LAYERS)  # fmt: skip


def ort_quantize(float_model: str | os.PathLike, out: str | os.PathLike, calibration: np.ndarray,
                 input_name: str = "input", batch: int = 16) -> None:  # fmt: skip
    """Write the static int8 QDQ version of ``float_model`` (already BN-folded and optimized) to ``out``."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            starts = range(0, len(calibration), batch)
            self.batches = iter(tqdm(starts, desc="calibrating", unit="batch", leave=False, disable=None))

        def get_next(self) -> dict | None:
            i = next(self.batches, None)
            return None if i is None else {input_name: calibration[i : i + batch]}

    import onnx

    graph = onnx.load(str(float_model), load_external_data=False).graph
    keep_float = [n.name for n in graph.node if any(f"/features/{layer}/" in n.name for layer in ORT_FLOAT_LAYERS)]
    quantize_static(
        str(float_model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        reduce_range=ort_weight_bits() == 7,
        nodes_to_exclude=keep_float,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        # Clip (ReLU6) listed so that it folds into its conv's output range instead of
        # costing a second, wider quantization step.
        op_types_to_quantize=["Conv", "Clip", "GlobalAveragePool", "Flatten"],
    )  # fmt: skip
