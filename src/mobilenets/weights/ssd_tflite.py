"""Read Google's SSD-MobileNet-v1 ``.tflite`` (``coco_ssd_mobilenet_v1_1.0_quant_2018_06_29``).

The graph is walked in execution order and checked, as `tflite.read_tflite` does for
classifiers: the MobileNet v1 body (one 3x3 CONV_2D, 13 DEPTHWISE/1x1 pairs), then the extra
feature layers (1x1 conv, 3x3 stride-2 conv) and, per feature map, a box and a class
predictor conv; besides those only RESHAPE, CONCATENATION, LOGISTIC and the custom op
``TFLite_Detection_PostProcess``. Anything else is refused with a one-line reason.

Weights are dequantized (``(q - zero_point) * scale``). BN is folded into the file's convs;
it loads with BN as the exact identity (gamma 1, mean 0, var ``1 - eps``) and the folded
bias in beta, like `tflite.read_tflite`. The post-process op's flexbuffer options and its
constant anchors (center-size, uint8) are returned in `SSDFileInfo`; the model generates
its own anchors, and `load_ssd` checks they agree with the file's to its quantization step.

Despite "1.0" in its name, Google's COCO quant file is depth multiplier 0.75 (Conv2d_13 has
768 channels); the width is read from the channel counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ..models.layers import BN_EPS, Conv2dSame, same_pad_amounts
from ..models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS
from ..models.ssd import SSD_FEATURE_MAPS, SSD_MIN_DEPTH, extra_layer_names, ssd_depth
from .tflite import TFLiteGraph

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
_ALLOWED_OTHER_OPS = {"RESHAPE", "CONCATENATION", "LOGISTIC", "CUSTOM", "QUANTIZE", "DEQUANTIZE", "SQUEEZE"}
_BODY_NAMES = ["Conv2d_0"] + [f"Conv2d_{i}_{k}" for i in range(1, 14) for k in ("depthwise", "pointwise")]


@dataclass
class SSDFileInfo:
    """What an SSD ``.tflite`` says besides its weights."""

    source: str
    alpha: float
    min_depth: int
    num_classes: int  # per anchor, with background (COCO: 91)
    resolution: int | None  # square input side (300)
    anchors_per_location: list[int]
    predictor_kernel: int
    postprocess: dict[str, Any]  # the op's custom options, as parsed from the flexbuffer
    anchors: np.ndarray  # [A, 4] (ycenter, xcenter, h, w), dequantized from the file
    anchor_step: float | None  # quantization step of the anchors (None if float)
    input_quantization: tuple[float, int] | None
    quantized: bool
    sha256: str
    meta: dict[str, Any] = field(default_factory=dict)


def _conv_weight(g: TFLiteGraph, op, depthwise: bool) -> np.ndarray:
    w = g.array(op.Inputs(1))
    # TFLite: conv [O, kh, kw, I]; depthwise [1, kh, kw, C]. Ours: OIHW / [C, 1, kh, kw].
    return np.ascontiguousarray(w.transpose(3, 0, 1, 2) if depthwise else w.transpose(0, 3, 1, 2))


def _bias(g: TFLiteGraph, op, out_ch: int) -> np.ndarray:
    if op.InputsLength() > 2 and op.Inputs(2) >= 0:
        return g.array(op.Inputs(2)).copy()
    return np.zeros(out_ch, np.float32)


def _put_conv_bn(state: dict, prefix: str, weight: np.ndarray, bias: np.ndarray) -> None:
    out_ch = weight.shape[0]
    state[f"{prefix}.conv.weight"] = torch.from_numpy(weight)
    state[f"{prefix}.bn.weight"] = torch.ones(out_ch)
    state[f"{prefix}.bn.bias"] = torch.from_numpy(bias)
    state[f"{prefix}.bn.running_mean"] = torch.zeros(out_ch)
    # sqrt((1 - eps) + eps) rounds to exactly 1.0 in float32: BN becomes the identity.
    state[f"{prefix}.bn.running_var"] = torch.full((out_ch,), 1.0 - BN_EPS)


def _fit_width(depths: list[int], path: Path) -> tuple[float, int]:
    """``(alpha, min_depth)`` that reproduce the body's 14 depths (min depth 16 first, then 8)."""
    ratio = depths[-1] / 1024
    for min_depth in (SSD_MIN_DEPTH, 8):
        for cand in (round(ratio, 2), round(ratio, 4), ratio):
            if [ssd_depth(d.depth, cand, min_depth) for d in MOBILENET_V1_CONV_DEFS] == depths:
                return cand, min_depth
    raise WeightsError(f"{path}: backbone depths {depths} fit no MobileNet v1 width multiplier")


def _postprocess_options(g: TFLiteGraph, op, path: Path) -> dict[str, Any]:
    try:
        from flatbuffers import flexbuffers
    except ImportError:
        raise WeightsError("reading the SSD post-process options needs the 'flatbuffers' package") from None
    raw = op.CustomOptionsAsNumpy()
    if isinstance(raw, int) or raw is None or raw.size == 0:
        raise WeightsError(f"{path}: {POSTPROCESS_OP} has no custom options")
    try:
        opts = flexbuffers.Loads(raw.tobytes())
    except Exception as e:  # noqa: BLE001 (flexbuffers raises assorted errors on bad bytes)
        raise WeightsError(f"{path}: cannot parse {POSTPROCESS_OP} options ({type(e).__name__})") from None
    need = ("max_detections", "max_classes_per_detection", "nms_iou_threshold", "nms_score_threshold",
            "num_classes", "y_scale", "x_scale", "h_scale", "w_scale")  # fmt: skip
    missing = [k for k in need if k not in opts]
    if not isinstance(opts, dict) or missing:
        raise WeightsError(f"{path}: {POSTPROCESS_OP} options lack {missing}")
    return dict(opts)


def read_ssd_tflite(path: str | Path) -> tuple[dict[str, torch.Tensor], SSDFileInfo]:
    """``(state_dict for SSDMobileNetV1, SSDFileInfo)`` from an SSD-MobileNet-v1 ``.tflite``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    g = TFLiteGraph(path)
    sg = g.sg
    custom = [i for i, name in enumerate(g.ops) if name == "CUSTOM"]
    custom_names = [g.model.OperatorCodes(sg.Operators(i).OpcodeIndex()).CustomCode() for i in custom]
    custom_names = [c.decode('utf-8', 'replace') if c else "?" for c in custom_names]
    convs = [(i, sg.Operators(i)) for i, name in enumerate(g.ops) if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    kinds = [g.ops[i] for i, _ in convs]
    what = f"{kinds.count('CONV_2D')} conv + {kinds.count('DEPTHWISE_CONV_2D')} depthwise ops"
    if POSTPROCESS_OP not in custom_names:
        raise WeightsError(f"{path}: not an SSD detector ({what}, no {POSTPROCESS_OP} op; a classifier "
                           "file loads with mobilenets.weights.read_weights)")  # fmt: skip
    others = sorted({n for n in g.ops if n not in ("CONV_2D", "DEPTHWISE_CONV_2D") and n not in _ALLOWED_OTHER_OPS})
    if others or set(custom_names) != {POSTPROCESS_OP}:
        extra = others + [c for c in custom_names if c != POSTPROCESS_OP]
        raise WeightsError(f"{path}: not an SSD-MobileNet-v1 (unexpected ops {', '.join(extra[:4])})")
    body = ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 13
    if kinds[:27] != body or any(k != "CONV_2D" for k in kinds[27:]):
        raise WeightsError(f"{path}: not an SSD-MobileNet-v1 ({what}; expected the MobileNet v1 body then plain convs)")

    producer = {}  # tensor index -> conv position
    for pos, (_, op) in enumerate(convs):
        producer[op.Outputs(0)] = pos
    module_of: dict[int, str] = {}  # conv position -> our module name
    state: dict[str, torch.Tensor] = {}
    quantized = False

    # 1. the body
    strides = []
    for pos, scope in enumerate(_BODY_NAMES):
        _, op = convs[pos]
        quantized |= g.tensor(op.Inputs(1)).Type() != g.schema.TensorType.FLOAT32
        if pos and producer.get(op.Inputs(0)) != pos - 1:
            raise WeightsError(f"{path}: body layer {scope} does not read the previous layer")
        strides.append(g.conv_options(op))
        w = _conv_weight(g, op, scope.endswith("depthwise"))
        _put_conv_bn(state, f"backbone.features.{scope}", w, _bias(g, op, w.shape[0]))
        module_of[pos] = f"backbone.features.{scope}"
    got_strides = [strides[0]] + strides[1::2]
    if got_strides != [d.stride for d in MOBILENET_V1_CONV_DEFS]:
        raise WeightsError(f"{path}: body strides {got_strides} are not MobileNet v1's")
    depths = [state[f"backbone.features.{n}.conv.weight"].shape[0] for n in ["Conv2d_0"] + _BODY_NAMES[2::2]]
    alpha, min_depth = _fit_width(depths, path)

    # 2. the extra layers: a chain of (1x1, kxk stride 2) pairs on Conv2d_13_pointwise
    names = extra_layer_names(alpha, min_depth, SSD_FEATURE_MAPS)
    pos = 27
    map_producers = {"Conv2d_11_pointwise": 22, "Conv2d_13_pointwise": 26}
    map_pos = [map_producers[fm.from_layer] for fm in SSD_FEATURE_MAPS if fm.from_layer]
    for reduce_name, conv_name in names:
        for scope, kernel, stride in ((reduce_name, 1, 1), (conv_name, None, 2)):
            if pos >= len(convs):
                raise WeightsError(f"{path}: the graph ends before extra layer {scope}")
            _, op = convs[pos]
            w = _conv_weight(g, op, False)
            want = int(scope.rsplit("_", 1)[1])
            if (
                producer.get(op.Inputs(0)) != pos - 1
                or w.shape[0] != want
                or g.conv_options(op) != stride
                or (kernel is not None and w.shape[2:] != (kernel, kernel))
            ):
                raise WeightsError(f"{path}: conv #{pos} ({tuple(w.shape)}, stride {g.conv_options(op)}) is not "
                                   f"the extra layer {scope} of an SSD-MobileNet-v1 at alpha {alpha:g}")  # fmt: skip
            _put_conv_bn(state, f"extras.{scope}", w, _bias(g, op, w.shape[0]))
            module_of[pos] = f"extras.{scope}"
            pos += 1
        map_pos.append(pos - 1)

    # 3. predictors: for each feature map, two convs read it: box (4 per anchor) and class
    readers: dict[int, list[int]] = {}
    for p in range(pos, len(convs)):
        src = producer.get(convs[p][1].Inputs(0))
        if src not in map_pos:
            raise WeightsError(f"{path}: conv #{p} reads no SSD feature map")
        readers.setdefault(src, []).append(p)
    anchors_per_location, num_classes, kernels = [], None, set()
    for i, src in enumerate(map_pos):
        pair = readers.get(src, [])
        if len(pair) != 2:
            raise WeightsError(f"{path}: feature map {i} has {len(pair)} predictor convs, expected 2")
        ws = [_conv_weight(g, convs[p][1], False) for p in pair]
        box_i = 0 if ws[0].shape[0] < ws[1].shape[0] else 1
        wb, wc = ws[box_i], ws[1 - box_i]
        if wb.shape[0] % 4:
            raise WeightsError(f"{path}: box predictor {i} has {wb.shape[0]} outputs (not 4 per anchor)")
        a = wb.shape[0] // 4
        if wc.shape[0] % a or (num_classes is not None and wc.shape[0] // a != num_classes):
            raise WeightsError(f"{path}: class predictor {i} has {wc.shape[0]} outputs for {a} anchors")
        num_classes = wc.shape[0] // a
        anchors_per_location.append(a)
        kernels.add(wb.shape[2])
        for head, w, p in (("BoxEncodingPredictor", wb, pair[box_i]), ("ClassPredictor", wc, pair[1 - box_i])):
            module_of[p] = f"box_predictors.BoxPredictor_{i}.{head}"
            state[f"box_predictors.BoxPredictor_{i}.{head}.weight"] = torch.from_numpy(w)
            state[f"box_predictors.BoxPredictor_{i}.{head}.bias"] = torch.from_numpy(_bias(g, convs[p][1], w.shape[0]))
    if len(kernels) != 1:
        raise WeightsError(f"{path}: predictors mix kernel sizes {sorted(kernels)}")

    # 4. the post-process op: options and anchors
    op = sg.Operators(custom[custom_names.index(POSTPROCESS_OP)])
    options = _postprocess_options(g, op, path)
    if int(options["num_classes"]) + 1 != num_classes and int(options["num_classes"]) != num_classes:
        raise WeightsError(f"{path}: post-process has {options['num_classes']} classes, predictors {num_classes}")
    anchors = g.array(op.Inputs(2))
    grid = [[int(v) for v in g.tensor(convs[p][1].Outputs(0)).ShapeAsNumpy()][1:3] for p in map_pos]
    total = sum(h * w * a for (h, w), a in zip(grid, anchors_per_location))
    if anchors.shape != (total, 4):
        raise WeightsError(f"{path}: anchors have shape {list(anchors.shape)}, expected [{total}, 4]")
    q = g.tensor(op.Inputs(2)).Quantization()
    step = float(q.ScaleAsNumpy()[0]) if q is not None and q.ScaleLength() else None

    inp = sg.Inputs(0)
    in_shape = [int(s) for s in g.tensor(inp).ShapeAsNumpy()]
    resolution = in_shape[1] if len(in_shape) == 4 and in_shape[1] == in_shape[2] and in_shape[1] > 0 else None
    info = SSDFileInfo(
        source=str(path), alpha=alpha, min_depth=min_depth, num_classes=num_classes, resolution=resolution,
        anchors_per_location=anchors_per_location, predictor_kernel=kernels.pop(), postprocess=options,
        anchors=anchors, anchor_step=step, input_quantization=g.io_quantization(inp), quantized=quantized,
        sha256=hashlib.sha256(g.data).hexdigest(),
    )  # fmt: skip
    if quantized:
        info.meta["activation_quant"], score_input = _activation_quant(g, convs, module_of)
        info.meta["conv_arithmetic"] = _conv_arithmetic(g, convs, module_of)
        if score_input is not None:
            info.meta["score_input"] = score_input
    return state, info


def _activation_quant(g: TFLiteGraph, convs: list, module_of: dict[int, str],
                      ) -> tuple[dict[str, list[tuple[float, int]]], tuple[float, int] | None]:  # fmt: skip
    """Per module of ours, the uint8 grids its output passes through in the file; and the LOGISTIC op's input grid.

    A conv's own output grid, then (predictors) the grid of the concatenation that gathers
    all maps; ``score_converter`` gets the LOGISTIC op's output grid.
    """
    score_input = None
    sg = g.sg
    consumers: dict[int, list[int]] = {}
    for i in range(sg.OperatorsLength()):
        op = sg.Operators(i)
        for j in range(op.InputsLength()):
            consumers.setdefault(op.Inputs(j), []).append(i)
    out: dict[str, list[tuple[float, int]]] = {}
    for pos, name in module_of.items():
        t = convs[pos][1].Outputs(0)
        grids = [g.io_quantization(t)]
        if name.startswith("box_predictors."):
            while len(consumers.get(t, [])) == 1:
                nxt = consumers[t][0]
                kind = g.ops[nxt]
                if kind not in ("RESHAPE", "CONCATENATION", "SQUEEZE", "LOGISTIC"):
                    break
                t = sg.Operators(nxt).Outputs(0)
                if kind == "LOGISTIC":
                    out["score_converter"] = [g.io_quantization(t)]
                    score_input = g.io_quantization(sg.Operators(nxt).Inputs(0))
                    break
                q = g.io_quantization(t)
                if q != grids[-1]:
                    grids.append(q)
        out[name] = [q for q in grids if q is not None]
    return out, score_input


def conv_of(module: nn.Module) -> nn.Conv2d:
    """The convolution of a layer of ours: a ConvBnAct's ``conv``, or the module itself (predictors)."""
    return module.conv if hasattr(module, "conv") else module


@dataclass(frozen=True)
class ConvArithmetic:
    """How the file computes one conv: its uint8 grids, weight and bias scales, output clamp.

    ``weight_scale`` has one entry (per tensor) or one per output channel; the bias is int32
    on ``bias_scale`` (the file's, ``input scale * weight scale``). ``clamp`` is the range of
    ``q - output zero point`` the fused activation leaves (ReLU6: ``0 .. round(6 / scale)``).
    """

    input: tuple[float, int]
    output: tuple[float, int]
    weight_scale: tuple[float, ...]
    bias_scale: tuple[float, ...]
    clamp: tuple[int, int]


_RELU, _RELU6 = 1, 3  # ActivationFunctionType


def _conv_arithmetic(g: TFLiteGraph, convs: list, module_of: dict[int, str]) -> dict[str, ConvArithmetic]:
    out = {}
    for pos, name in module_of.items():
        _, op = convs[pos]
        grids = [g.io_quantization(op.Inputs(i)) for i in (0, 1)] + [g.io_quantization(op.Outputs(0))]
        if any(q is None for q in grids) or op.InputsLength() < 3 or op.Inputs(2) < 0:
            continue
        wq, bq = g.tensor(op.Inputs(1)).Quantization(), g.tensor(op.Inputs(2)).Quantization()
        cls = g.schema.DepthwiseConv2DOptions if g.ops_of(op) == "DEPTHWISE_CONV_2D" else g.schema.Conv2DOptions
        o = cls()
        o.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
        act = o.FusedActivationFunction()
        scale, zero = grids[2]
        lo, hi = -zero, 255 - zero
        if act in (_RELU, _RELU6):
            lo = max(lo, 0)
        if act == _RELU6:
            hi = min(hi, int(np.rint(np.float32(6.0) / np.float32(scale))))
        out[name] = ConvArithmetic(
            grids[0], grids[2], tuple(float(v) for v in wq.ScaleAsNumpy()),
            tuple(float(v) for v in bq.ScaleAsNumpy()), (lo, hi),
        )  # fmt: skip
    return out


def _grid_steps(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor | None:
    """``values / scale`` as exact integers (float64), or None where the file's grid does not hold ``values``."""
    k = torch.round(values.detach().double() / scale)
    return k if torch.equal((k * scale).float(), values.detach().float()) else None


def _on_grid(values: torch.Tensor, scale: torch.Tensor, what: str) -> torch.Tensor:
    """`_grid_steps`, refusing values the file's grid does not hold."""
    k = _grid_steps(values, scale)
    if k is None:
        raise WeightsError(f"{what} is no longer on the file's quantization grid (changed after loading?)")
    return k


def holds_file_weights(model: nn.Module) -> bool:
    """Whether ``model`` still holds the weights of the quantized file it was read from.

    True for a model from `load_ssd` / `build_ssd` of a uint8 file whose every conv is still
    on the file's weight grid: then the file's activation grids describe it too (emulation,
    int8 export on them). False once it is trained, has a new head, or never had a file.
    """
    info = getattr(model, "file_info", None)
    arith = info.meta.get("conv_arithmetic") if info is not None else None
    if not arith:
        return False
    for name, a in arith.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return False
        w = conv_of(module).weight
        scale = torch.tensor(a.weight_scale, dtype=torch.float64)
        if scale.numel() not in (1, w.shape[0]) or _grid_steps(w, scale.view(-1, *([1] * (w.dim() - 1)))) is None:
            return False
    return True


def _round_half_away(v: torch.Tensor) -> torch.Tensor:
    """C's ``std::round`` (TFLite's ``TfLiteRound``): ties away from zero, unlike `torch.round`."""
    t = v.trunc()
    return torch.where((v - t).abs() == 0.5, t + v.sign(), torch.round(v))


def _integer_conv_hook(module: nn.Module, arith: ConvArithmetic, grids: list[tuple[float, int]]):
    """A forward hook that recomputes ``module`` (ConvBnAct with identity BN, or a plain conv) in integers.

    Exactly as LiteRT's XNNPACK kernels (its default on CPU): the int32 accumulation of
    ``(q_in - z_in) * (q_w - z_w)`` plus the int32 bias (exact integers in float32 or float64),
    then ``float32(acc) * float32(s_in * s_w / s_out)`` rounded to nearest-even, clamped to
    the fused activation's range. A predictor's output is then requantized to the
    concatenation's grid as TFLite's CONCATENATION does (float32 ``q * s_in / s_out - z_in *
    s_in / s_out``, rounded half away from zero). (TFLite's builtin kernels, without XNNPACK,
    requantize with a 31-bit fixed-point multiplier instead: one step apart in ~0.1% of the
    first layer's values, compounding.)
    """
    conv = conv_of(module)
    s_w = torch.tensor(arith.weight_scale, dtype=torch.float64)
    w = _on_grid(conv.weight, s_w.view(-1, 1, 1, 1), f"{type(module).__name__} weight")
    bias = conv.bias if conv.bias is not None else getattr(getattr(module, "bn", None), "bias", None)
    b = _on_grid(bias, torch.tensor(arith.bias_scale, dtype=torch.float64), "bias") if bias is not None else None
    s_in, s_out = np.float32(arith.input[0]), np.float32(arith.output[0])
    requant = torch.from_numpy((s_in * np.asarray(arith.weight_scale, np.float32)) / s_out).view(1, -1, 1, 1)
    lo, hi = arith.clamp
    same = isinstance(conv, Conv2dSame)
    # float32 sums integers exactly while every partial sum stays below 2**24: then it is as
    # exact as float64 and several times faster (Google's file: at most 2.9e6 here).
    k_max = max(abs(arith.input[1]), abs(255 - arith.input[1]))
    bound = float(w.abs().flatten(1).sum(1).max()) * k_max + (float(b.abs().max()) if b is not None else 0.0)
    dtype = torch.float32 if bound < 2**24 else torch.float64
    w, b = w.to(dtype), b.to(dtype) if b is not None else None

    def hook(_module, inputs, output):
        k = torch.round(inputs[0].to(dtype) / float(s_in))  # q_in - z_in (exact: |q - z| <= 255); pads are the zero point
        pad = conv.padding
        if same:
            ih, iw = k.shape[-2:]
            top, bottom = same_pad_amounts(int(ih), conv.kernel_size[0], conv.stride[0], conv.dilation[0])
            left, right = same_pad_amounts(int(iw), conv.kernel_size[1], conv.stride[1], conv.dilation[1])
            k, pad = F.pad(k, (left, right, top, bottom)), 0
        acc = F.conv2d(k, w, b, conv.stride, pad, conv.dilation, conv.groups)
        q = torch.round(acc.float().mul_(requant)).clamp_(lo, hi)  # q - z_out
        scale, zero = arith.output
        for s2, z2 in grids[1:]:  # CONCATENATION to another grid (predictors)
            f = np.float32(scale) * (np.float32(1.0) / np.float32(s2))
            q = (_round_half_away((q + zero) * float(f) + float(np.float32(-zero) * f)) + z2).clamp(0, 255) - z2
            scale, zero = s2, z2
        return q.mul_(float(np.float32(scale))).to(output.dtype)

    return hook


def _logistic_hook(input_grid: tuple[float, int], output_grid: tuple[float, int]):
    """LOGISTIC on uint8: ``round(sigmoid(s_in * (q - z_in)) / s_out) + z_out`` (LiteRT's lookup table)."""
    s_in, s_out, z_out = np.float32(input_grid[0]), float(output_grid[0]), output_grid[1]

    def hook(_module, inputs, output):
        k = torch.round(inputs[0].double() / float(s_in))
        x = (k.float() * float(s_in)).double()  # the table's float32 input value
        q = (torch.round(torch.sigmoid(x) / s_out) + z_out).clamp(0, 255)
        return ((q - z_out) * s_out).to(output.dtype)

    return hook


def emulate_file_arithmetic(model, info: SSDFileInfo, exact: bool = True) -> list:
    """Make ``model`` compute like the uint8 file: its anchors, and its integer arithmetic.

    Pins the file's (uint8-rounded) anchors at its input size and adds forward hooks. With
    ``exact`` (default) every conv is recomputed in integers as LiteRT's XNNPACK kernels do
    (`_integer_conv_hook`), the predictors' outputs are requantized to the concatenations'
    grids and the sigmoid goes through the uint8 table: on inputs on the file's input grid
    (`file_normalisation`), every activation equals LiteRT's (XNNPACK) bit for bit, and so do
    the scores; boxes agree to float32 rounding of the decoding. ``exact=False``
    only rounds each float output to the file's grid (cheaper; errors of one step compound
    through the layers). The float model without it is the reference definition; this is for
    checking parity and studying quantization. Returns the hook handles.
    """
    grids = info.meta.get("activation_quant")
    if not grids:
        raise WeightsError(f"{info.source}: not a quantized file; nothing to emulate")
    res = info.resolution or 300
    model.pin_anchors(torch.from_numpy(info.anchors), (res, res))
    arith = info.meta.get("conv_arithmetic", {}) if exact else {}

    def hook_for(qs):
        def hook(_module, _inputs, output):
            for scale, zero in qs:
                output = (torch.round(output / scale) + zero).clamp(0, 255).sub(zero).mul(scale)
            return output

        return hook

    handles = []
    for name, qs in grids.items():
        module = model.get_submodule(name)
        if name in arith:
            hook = _integer_conv_hook(module, arith[name], qs)
        elif exact and name == "score_converter" and "score_input" in info.meta:
            hook = _logistic_hook(info.meta["score_input"], qs[0])
        else:
            hook = hook_for(qs)
        handles.append(module.register_forward_hook(hook))
    return handles


def file_normalisation(info: SSDFileInfo) -> dict[str, tuple[float, float, float]]:
    """``mean``/``std`` (on [0, 1]) that give exactly the real values of the file's uint8 input.

    The file reads ``q`` as ``(q - zero) * scale`` (Google's: ``(q - 128) / 128``, i.e.
    ``q / 128 - 1``, not the ``q / 127.5 - 1`` it was trained with). With ``q = 255 v``,
    that is ``(v - zero / 255) / (1 / (255 scale))``; a Predictor then quantizes it back
    to ``round(255 v)``, the pixel itself. A float file keeps the OD API's [-1, 1].
    """
    if info.input_quantization is None:
        return {}
    scale, zero = info.input_quantization
    mean, std = zero / 255.0, 1.0 / (255.0 * scale)
    return {"mean": (mean,) * 3, "std": (std,) * 3}


def read_ssd_weights(path: str | Path):
    """Google's SSD ``.tflite`` as `LoadedWeights` (state dict + the full contract in ``cfg``), for `read_weights`."""
    from . import LoadedWeights

    model = load_ssd(path)
    info = model.file_info
    cfg = model.pretrained_cfg
    fmt = "tflite-quant" if info.quantized else "tflite-float"
    return LoadedWeights(model.state_dict(), info.alpha, info.num_classes, info.resolution, str(path), fmt,
                         list(cfg.labels) if cfg.labels else None, {"sha256": info.sha256}, cfg, info)  # fmt: skip


def build_ssd(w, resolution: int | None = None):
    """The `SSDMobileNetV1` that ``w`` holds (``w.cfg.arch_cfg`` rebuilds it), in eval mode, with ``w.cfg`` as its contract.

    ``resolution``: the input side of the contract (default: the weights'); anchors follow
    the input size, so the network runs at any size.
    """
    from ..models.ssd import SSDMobileNetV1

    cfg = w.cfg
    model = SSDMobileNetV1.from_arch_cfg(cfg.arch_cfg, num_classes=cfg.num_classes)
    own = model.state_dict()
    for name, t in w.state_dict.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise WeightsError(f"{w.source}: tensor {name!r} has shape {tuple(t.shape)}, the model needs "
                               f"{tuple(own[name].shape)}")  # fmt: skip
    missing, unexpected = model.load_state_dict(w.state_dict, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{w.source}: weights do not fit SSDMobileNetV1 (missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]})")  # fmt: skip
    if resolution:
        cfg = cfg.replace(input_size=(3, resolution, resolution))
    model.pretrained_cfg = cfg.replace(arch_cfg={**cfg.arch_cfg, **model.arch_cfg()})
    if isinstance(w.file_info, SSDFileInfo):  # read from Google's file: its grids (emulation, int8 export)
        model.file_info = w.file_info
    return model.eval()


def detector_contract(g: TFLiteGraph, file_labels: list[str] | None = None):
    """The `PretrainedCfg` of an SSD ``.tflite`` run as it is (LiteRT): what `load_ssd` records for it.

    Its own width and input quantization (`file_normalisation`), the whole image resized,
    and COCO's 91 labels (background first) unless the file's metadata carries a label map.
    """
    from ..models.ssd import COCO_NUM_CLASSES, default_ssd_cfg

    _, info = read_ssd_tflite(g.path)
    res = info.resolution or 300
    changes = {}
    from ..data.coco import is_coco_labels

    if file_labels and is_coco_labels(file_labels):
        file_labels = None  # Google's label map: COCO's, with '???' for the unused ids
    if file_labels and len(file_labels) in (info.num_classes, info.num_classes - 1):
        labels = list(file_labels)
        if len(labels) == info.num_classes - 1:
            labels = ["background", *labels]
        changes["labels"] = tuple(labels)
    elif info.num_classes != COCO_NUM_CLASSES:
        changes["labels"] = None
    return default_ssd_cfg(
        info.alpha, info.num_classes, info.min_depth, input_size=(3, res, res), source=info.source,
        sha256=info.sha256, quantization="uint8-qat" if info.quantized else None,
        arch_cfg={"alpha": info.alpha, "min_depth": info.min_depth, "postprocess": dict(info.postprocess)},
        **file_normalisation(info), **changes,
    )  # fmt: skip


def is_detector_graph(g: TFLiteGraph) -> bool:
    """Whether a ``.tflite`` graph ends in ``TFLite_Detection_PostProcess`` (what `read_weights` sends here)."""
    if "CUSTOM" not in g.ops:
        return False
    for i, name in enumerate(g.ops):
        if name == "CUSTOM":
            code = g.model.OperatorCodes(g.sg.Operators(i).OpcodeIndex()).CustomCode()
            if code and code.decode('utf-8', 'replace') == POSTPROCESS_OP:
                return True
    return False


def load_ssd(path: str | Path, emulate_quantization: bool = False):
    """A ready `SSDMobileNetV1` (eval mode) holding the weights and post-process settings of ``path``.

    Raises `WeightsError` if the model's generated anchors differ from the file's by more
    than one quantization step (the file was built with another anchor configuration).
    ``emulate_quantization`` applies `emulate_file_arithmetic` (file anchors, its integer
    arithmetic: LiteRT's outputs bit for bit, at ~2-3x the float model's time).
    """
    from ..models.ssd import AnchorGenerator, BoxCoder, PostProcess, SSDMobileNetV1, default_ssd_cfg

    state, info = read_ssd_tflite(path)
    opts = info.postprocess
    gen = AnchorGenerator()
    if gen.num_anchors_per_location() != info.anchors_per_location:
        raise WeightsError(f"{path}: {info.anchors_per_location} anchors per location; the SSD anchor "
                           f"generator makes {gen.num_anchors_per_location()}")  # fmt: skip
    model = SSDMobileNetV1(
        alpha=info.alpha, num_classes=info.num_classes, min_depth=info.min_depth, anchor_generator=gen,
        box_coder=BoxCoder((opts["y_scale"], opts["x_scale"], opts["h_scale"], opts["w_scale"])),
        postprocess=PostProcess.from_tflite_options(opts), predictor_kernel=info.predictor_kernel,
    )  # fmt: skip
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: weights do not fit SSDMobileNetV1 (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    res = info.resolution or 300
    ours = model.anchors_for((res, res)).numpy()
    if ours.shape != info.anchors.shape:
        raise WeightsError(f"{path}: file has {info.anchors.shape[0]} anchors, the model makes {ours.shape[0]}")
    tol = (info.anchor_step or 0.0) + 1e-5
    worst = float(np.abs(ours - info.anchors).max())
    if worst > tol:
        raise WeightsError(
            f"{path}: the file's anchors differ from the SSD anchor generator's by {worst:.4f} (> {tol:.4f})"
        )
    model.pretrained_cfg = default_ssd_cfg(
        info.alpha, info.num_classes, info.min_depth, input_size=(3, res, res), source=info.source,
        sha256=info.sha256, quantization="uint8-qat" if info.quantized else None, arch_cfg=model.arch_cfg(),
        **file_normalisation(info),
    )  # fmt: skip
    model.file_info = info
    if emulate_quantization:
        emulate_file_arithmetic(model, info)
    return model.eval()
