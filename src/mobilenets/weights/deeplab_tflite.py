"""Read Google's DeepLab v3 / MobileNet v2 ``.tflite`` (``deeplabv3.tflite``) into `DeepLabV3`.

The graph is walked in execution order and checked op by op against the architecture,
not trusted by tensor names: a 3x3 stride-2 CONV_2D stem, MobileNet v2 inverted
residuals ([1x1 CONV_2D, ReLU6] -> 3x3 DEPTHWISE_CONV_2D, ReLU6 -> linear 1x1 CONV_2D [->
ADD of the block input]), then DeepLab's head: AVERAGE_POOL_2D over the whole feature map
-> 1x1 CONV_2D, ReLU (``image_pooling``) -> RESIZE_BILINEAR back; 1x1 CONV_2D, ReLU
(``aspp0``); CONCATENATION (pool first) -> 1x1 CONV_2D, ReLU (``concat_projection``) ->
1x1 CONV_2D (``logits/semantic``) -> RESIZE_BILINEAR to the input size. Every conv must
pad 'SAME' (no PAD ops) and every resize must use ``align_corners=True`` without half-pixel
centres, which is what `DeepLabV3` computes. Channels, strides and dilations must be
exactly those DeepLab builds for the width and output stride they imply. Anything else (a
classifier, the SSD file, another network) is refused with one line.

BatchNorm is folded into the convs in the file; it loads as an exact identity (gamma 1,
mean 0, variance ``1 - eps``) with the folded bias in beta, as `weights.tflite` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..models.deeplab import HEAD_BN_EPS, DeepLabV3, deeplab_cfg
from ..models.layers import BN_EPS
from ..models.mobilenet_v2 import STEM_DEPTH, LayerDef, layer_defs
from . import LoadedWeights
from .tflite import TFLiteGraph, labels_from_metadata

_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "AVERAGE_POOL_2D", "RESIZE_BILINEAR", "CONCATENATION"}
_NONE, _RELU, _RELU6 = 0, 1, 3  # ActivationFunctionType
_SAME, _VALID = 0, 1  # Padding


class _Refused(Exception):
    """Internal: the reason a graph is not a DeepLab v3 / MobileNet v2 (becomes one WeightsError line)."""


@dataclass
class _Conv:
    op: int  # operator index
    kind: str  # CONV_2D | DEPTHWISE_CONV_2D
    inp: int  # input tensor
    out: int  # output tensor
    w_idx: int  # weight tensor
    weight: np.ndarray  # as stored: OHWI, or 1HWC for depthwise
    bias: np.ndarray
    stride: int
    dilation: int
    padding: int
    act: int

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_ch(self) -> int:
        return int(self.weight.shape[3] if self.kind == "DEPTHWISE_CONV_2D" else self.weight.shape[0])

    @property
    def in_ch(self) -> int:
        return int(self.weight.shape[3])


class _Walker:
    """Reads ops in execution order, with typed access to their options."""

    def __init__(self, g: TFLiteGraph) -> None:
        self.g, self.s, self.i = g, g.schema, 0
        self.n = g.sg.OperatorsLength()

    def peek(self, k: int = 0) -> str | None:
        return self.g.ops[self.i + k] if self.i + k < self.n else None

    def op(self, k: int = 0):
        return self.g.sg.Operators(self.i + k)

    def options(self, op, cls):
        o = cls()
        raw = op.BuiltinOptions()
        if raw is None:
            raise _Refused(f"op {self.i} ({self.g.ops[self.i]}) has no options")
        o.Init(raw.Bytes, raw.Pos)
        return o

    def shape(self, tensor: int) -> tuple[int, ...]:
        return tuple(int(v) for v in self.g.tensor(tensor).ShapeAsNumpy())

    def conv(self) -> _Conv:
        kind = self.peek()
        if kind not in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            raise _Refused(f"op {self.i} is {kind}, expected a convolution")
        op = self.op()
        cls = self.s.DepthwiseConv2DOptions if kind == "DEPTHWISE_CONV_2D" else self.s.Conv2DOptions
        o = self.options(op, cls)
        if o.StrideH() != o.StrideW() or o.DilationHFactor() != o.DilationWFactor():
            raise _Refused(f"op {self.i} ({kind}) has unequal strides or dilations")
        if kind == "DEPTHWISE_CONV_2D" and o.DepthMultiplier() not in (0, 1):
            raise _Refused(f"op {self.i} is a depthwise conv with channel multiplier {o.DepthMultiplier()}")
        w = self.g.array(op.Inputs(1))
        if w.ndim != 4 or w.shape[1] != w.shape[2]:
            raise _Refused(f"op {self.i} ({kind}) has a {tuple(w.shape)} kernel")
        b_idx = op.Inputs(2) if op.InputsLength() > 2 else -1
        out_ch = w.shape[3] if kind == "DEPTHWISE_CONV_2D" else w.shape[0]
        b = self.g.array(b_idx) if b_idx >= 0 else np.zeros(out_ch, np.float32)
        c = _Conv(self.i, kind, op.Inputs(0), op.Outputs(0), op.Inputs(1), w, b, o.StrideH(), o.DilationHFactor(),
                  o.Padding(), o.FusedActivationFunction())  # fmt: skip
        if c.padding != _SAME:
            raise _Refused(f"op {self.i} ({kind}) pads 'VALID'; DeepLab's convs pad 'SAME'")
        self.i += 1
        return c


def _check(cond: bool, reason: str) -> None:
    if not cond:
        raise _Refused(reason)


def _walk_backbone(w: _Walker, graph_input: int) -> tuple[_Conv, list[dict], int]:
    """Stem and inverted residuals; returns (stem, blocks, output tensor)."""
    stem = w.conv()
    _check(stem.kind == "CONV_2D" and stem.kernel == 3 and stem.stride == 2 and stem.act == _RELU6
           and stem.inp == graph_input, "the first op is not MobileNet v2's 3x3 stride-2 ReLU6 conv on the input")  # fmt: skip
    x, blocks = stem.out, []
    while True:
        k0, k1 = w.peek(), w.peek(1)
        starts = k0 == "DEPTHWISE_CONV_2D" or (k0 == "CONV_2D" and k1 == "DEPTHWISE_CONV_2D")
        if not starts:
            break
        expand = w.conv() if k0 == "CONV_2D" else None
        dw = w.conv()
        project = w.conv()
        name = f"block {len(blocks)}"
        if expand is not None:
            _check(expand.kernel == 1 and expand.act == _RELU6 and expand.inp == x and expand.stride == 1,
                   f"{name}: expand conv is not a 1x1 ReLU6 conv on the previous output")  # fmt: skip
        _check(dw.kind == "DEPTHWISE_CONV_2D" and dw.kernel == 3 and dw.act == _RELU6
               and dw.inp == (expand.out if expand else x), f"{name}: depthwise conv is not a 3x3 ReLU6 conv")  # fmt: skip
        _check(project.kind == "CONV_2D" and project.kernel == 1 and project.inp == dw.out and project.stride == 1,
               f"{name}: no 1x1 projection after the depthwise conv")  # fmt: skip
        _check(project.act == _NONE, f"{name}: the 1x1 conv after the depthwise conv has an activation "
               "(MobileNet v1 style, not a v2 linear bottleneck)")  # fmt: skip
        out, residual = project.out, False
        if w.peek() == "ADD":
            op = w.op()
            ins = {op.Inputs(0), op.Inputs(1)}
            if ins == {project.out, x}:
                act = w.options(op, w.s.AddOptions).FusedActivationFunction()
                _check(act == _NONE, f"{name}: residual ADD has a fused activation")
                out, residual = op.Outputs(0), True
                w.i += 1
        blocks.append({"expand": expand, "depthwise": dw, "project": project, "residual": residual})
        x = out
    return stem, blocks, x


def _resize(w: _Walker, inp: int, what: str) -> int:
    _check(w.peek() == "RESIZE_BILINEAR", f"expected RESIZE_BILINEAR after {what}, found {w.peek()}")
    op = w.op()
    _check(op.Inputs(0) == inp, f"RESIZE_BILINEAR after {what} does not read its output")
    o = w.options(op, w.s.ResizeBilinearOptions)
    _check(o.AlignCorners() and not o.HalfPixelCenters(),
           f"RESIZE_BILINEAR after {what} has align_corners={o.AlignCorners()}, half_pixel_centers="
           f"{o.HalfPixelCenters()}; DeepLab's is align_corners=True")  # fmt: skip
    w.i += 1
    return op.Outputs(0)


def _walk_head(w: _Walker, feat: int, graph_output: int) -> dict:
    """image_pooling, aspp0, concat_projection, logits and the final resizes."""
    pool_branch = aspp0 = None
    branch_out: dict[int, str] = {}
    while True:
        if w.peek() == "AVERAGE_POOL_2D":
            _check(pool_branch is None, "two image-pooling branches")
            op = w.op()
            _check(op.Inputs(0) == feat, "AVERAGE_POOL_2D does not read the backbone output")
            o = w.options(op, w.s.Pool2DOptions)
            fh, fw = w.shape(feat)[1:3]
            _check((o.FilterHeight(), o.FilterWidth()) == (fh, fw) and o.Padding() == _VALID
                   and o.FusedActivationFunction() == _NONE,
                   f"AVERAGE_POOL_2D {o.FilterHeight()}x{o.FilterWidth()} is not a global pool of the {fh}x{fw} map")  # fmt: skip
            w.i += 1
            conv = w.conv()
            _check(conv.inp == op.Outputs(0) and conv.kernel == 1 and conv.act == _RELU,
                   "image_pooling is not a 1x1 ReLU conv on the pooled features")  # fmt: skip
            out = _resize(w, conv.out, "image_pooling")
            _check(w.shape(out)[1:3] == (fh, fw), "image_pooling is not resized back to the feature map")
            pool_branch = conv
            branch_out[out] = "image_pooling"
        elif w.peek() == "CONV_2D" and aspp0 is None:
            conv = w.conv()
            _check(conv.inp == feat and conv.kernel == 1 and conv.act == _RELU,
                   f"op {conv.op}: expected aspp0, a 1x1 ReLU conv on the backbone output")  # fmt: skip
            aspp0 = conv
            branch_out[conv.out] = "aspp0"
        else:
            break
    _check(aspp0 is not None, f"no aspp0 branch (op {w.i} is {w.peek()}; atrous ASPP branches are not supported)")
    _check(w.peek() == "CONCATENATION", f"expected CONCATENATION of the branches, found {w.peek()}")
    op = w.op()
    o = w.options(op, w.s.ConcatenationOptions)
    order = [branch_out.get(op.Inputs(j), "?") for j in range(op.InputsLength())]
    expected = (["image_pooling"] if pool_branch else []) + ["aspp0"]
    _check(o.Axis() in (3, -1) and order == expected and o.FusedActivationFunction() == _NONE,
           f"CONCATENATION joins {order} on axis {o.Axis()}, expected {expected} on channels")  # fmt: skip
    concat = op.Outputs(0)
    w.i += 1
    proj = w.conv()
    _check(proj.inp == concat and proj.kernel == 1 and proj.act == _RELU, "concat_projection is not a 1x1 ReLU conv")
    logits = w.conv()
    _check(logits.inp == proj.out and logits.kernel == 1 and logits.act == _NONE,
           "logits is not a linear 1x1 conv after concat_projection")  # fmt: skip
    x = logits.out
    while w.peek() == "RESIZE_BILINEAR":
        x = _resize(w, x, "logits")
    _check(w.i == w.n, f"unexpected op {w.peek()} after the logits")
    _check(x == graph_output, "the graph's output is not the resized logits")
    return {"image_pooling": pool_branch, "aspp0": aspp0, "concat_projection": proj, "logits": logits}


def _infer_config(stem: _Conv, blocks: list[dict], in_hw: tuple[int, int], feat_hw: tuple[int, int]) -> tuple[float, int, list[LayerDef]]:  # fmt: skip
    _check(len(blocks) == 17, f"{len(blocks)} inverted residual blocks, MobileNet v2 has 17")
    output_stride = 1
    for layer in [stem] + [b["depthwise"] for b in blocks]:
        output_stride *= layer.stride
    _check(output_stride in (8, 16), f"output stride {output_stride}; DeepLab uses 8 or 16")
    expect_hw = tuple(-(-s // output_stride) for s in in_hw)
    _check(tuple(feat_hw) == expect_hw, f"feature map {list(feat_hw)} is not the input / {output_stride}")
    got = [(stem.out_ch, stem.stride, stem.dilation, 0, False)] + [
        (b["project"].out_ch, b["depthwise"].stride, b["depthwise"].dilation,
         b["expand"].out_ch if b["expand"] else 0, b["residual"]) for b in blocks]  # fmt: skip
    for dm in sorted({round(stem.out_ch / STEM_DEPTH, 2), stem.out_ch / STEM_DEPTH}):
        exact = dm == 1.0
        defs = layer_defs(dm, 8 if exact else 1, 8 if exact else 1, output_stride, last_conv=False)
        # The residual ADDs must be exactly where slim adds them (stride 1, equal depths).
        want = [(d.out_ch, d.stride, d.dilation, d.expand_ch, d.name != "Conv" and d.stride == 1 and d.in_ch == d.out_ch)
                for d in defs]  # fmt: skip
        if want == got:
            return dm, output_stride, defs
    raise _Refused(
        f"channels/strides/dilations/residuals {got[:4]}... fit no MobileNet v2 width at output stride {output_stride}"
    )


def _unit(state: dict[str, torch.Tensor], prefix: str, c: _Conv, eps: float) -> None:
    if c.kind == "DEPTHWISE_CONV_2D":
        weight = c.weight.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
    else:
        weight = c.weight.transpose(0, 3, 1, 2)  # OHWI -> OIHW
    n = weight.shape[0]
    state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
    state[f"{prefix}.bn.weight"] = torch.ones(n)
    state[f"{prefix}.bn.bias"] = torch.from_numpy(c.bias.astype(np.float32).copy())
    state[f"{prefix}.bn.running_mean"] = torch.zeros(n)
    # sqrt((1 - eps) + eps) rounds to exactly 1.0 in float32 (eps 1e-3 and 1e-5): BN is the identity.
    state[f"{prefix}.bn.running_var"] = torch.full((n,), 1.0 - eps)


def read_deeplab_tflite(path: str | Path) -> LoadedWeights:
    """The weights of a DeepLab v3 / MobileNet v2 ``.tflite`` as our `DeepLabV3` state dict.

    ``alpha`` holds the depth multiplier; ``meta`` the builder's arguments
    (``deeplab_kwargs``: backbone, depth_multiplier, num_classes, output_stride,
    image_pooling) and the ops' input/output tensor names.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    g = TFLiteGraph(path)
    try:
        others = sorted({n for n in g.ops if n not in _OPS})
        _check(not others, f"has {', '.join(others[:4])} ops")
        _check(g.sg.InputsLength() == 1 and g.sg.OutputsLength() == 1, "needs one input and one output")
        inp, out = g.sg.Inputs(0), g.sg.Outputs(0)
        w = _Walker(g)
        in_shape, out_shape = w.shape(inp), w.shape(out)
        _check(len(in_shape) == 4 and in_shape[3] == 3, f"input shape {list(in_shape)} is not 1xHxWx3")
        _check(len(out_shape) == 4 and out_shape[1:3] == in_shape[1:3],
               f"output shape {list(out_shape)} is not per-pixel at the input size {list(in_shape[1:3])}")  # fmt: skip
        stem, blocks, feat = _walk_backbone(w, inp)
        head = _walk_head(w, feat, out)
        dm, output_stride, defs = _infer_config(stem, blocks, in_shape[1:3], w.shape(feat)[1:3])
    except _Refused as e:
        raise WeightsError(f"{path}: not a DeepLab v3 / MobileNet v2 segmentation model ({e})") from None

    state: dict[str, torch.Tensor] = {}
    _unit(state, "backbone.features.Conv", stem, BN_EPS)
    for d, b in zip(defs[1:], blocks):
        for part in ("expand", "depthwise", "project"):
            if b[part] is not None:
                _unit(state, f"backbone.features.{d.name}.{part}", b[part], BN_EPS)
    for name in ("image_pooling", "aspp0", "concat_projection"):
        if head[name] is not None:
            _unit(state, name, head[name], HEAD_BN_EPS)
    lg = head["logits"]
    state["logits.weight"] = torch.from_numpy(np.ascontiguousarray(lg.weight.transpose(0, 3, 1, 2)))
    state["logits.bias"] = torch.from_numpy(lg.bias.astype(np.float32).copy())
    num_classes = lg.out_ch

    quantized = g.tensor(stem.w_idx).Type() != g.schema.TensorType.FLOAT32
    kwargs = {"backbone": "mobilenet_v2", "depth_multiplier": dm, "num_classes": num_classes,
              "output_stride": output_stride, "image_pooling": head["image_pooling"] is not None}  # fmt: skip
    meta = {"deeplab_kwargs": kwargs, "input_name": g.tensor(inp).Name().decode('utf-8', 'replace'),
            "output_name": g.tensor(out).Name().decode('utf-8', 'replace'), "input_quantization": g.io_quantization(inp),
            "quantized": quantized}  # fmt: skip
    res = int(in_shape[1]) if in_shape[1] == in_shape[2] and in_shape[1] > 0 else None
    # The file's own label map spells a few names differently ("tv", "dining table");
    # the contract keeps the VOC table's names (`data.voc`), in the same order.
    cfg = deeplab_cfg(**kwargs, **({"resolution": res} if res else {})).replace(
        source=str(path), quantization="uint8" if quantized else None)  # fmt: skip
    return LoadedWeights(state, dm, num_classes, res, str(path), "tflite-quant" if quantized else "tflite-float",
                         labels_from_metadata(g), meta, cfg)  # fmt: skip


def is_segmenter_graph(g: TFLiteGraph) -> bool:
    """Whether a ``.tflite`` graph looks like a segmenter (one output, per pixel at the input size, a resize):
    what `weights.read_weights` sends to `read_deeplab_tflite` rather than the classifier reader."""
    if g.sg.InputsLength() != 1 or g.sg.OutputsLength() != 1 or "RESIZE_BILINEAR" not in g.ops:
        return False
    ins = [int(v) for v in g.tensor(g.sg.Inputs(0)).ShapeAsNumpy()]
    outs = [int(v) for v in g.tensor(g.sg.Outputs(0)).ShapeAsNumpy()]
    return len(ins) == len(outs) == 4 and ins[1:3] == outs[1:3]


def build_deeplab(w: LoadedWeights, resolution: int | None = None) -> DeepLabV3:
    """The `DeepLabV3` that ``w`` holds (``w.cfg.arch_cfg`` builds it), in eval mode, with ``w.cfg`` as its contract.

    ``resolution``: the input side of the contract (default: the weights'); the network
    itself runs at any size.
    """
    cfg = w.cfg
    known = ("backbone", "depth_multiplier", "output_stride", "atrous_rates", "image_pooling", "decoder", "padding")
    kwargs = {k: v for k, v in cfg.arch_cfg.items() if k in known}
    kwargs.setdefault("backbone", cfg.arch.removeprefix("deeplabv3_"))
    if kwargs.get("atrous_rates") == []:
        kwargs["atrous_rates"] = None
    model = DeepLabV3(num_classes=cfg.num_classes, **kwargs)
    own = model.state_dict()
    for name, t in w.state_dict.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise WeightsError(f"{w.source}: tensor {name!r} has shape {tuple(t.shape)}, the model needs "
                               f"{tuple(own[name].shape)}")  # fmt: skip
    missing, unexpected = model.load_state_dict(w.state_dict, strict=False)
    if missing or unexpected:
        raise WeightsError(f"{w.source}: weights do not fit DeepLabV3 (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if resolution:
        cfg = cfg.replace(input_size=(3, resolution, resolution))
    model.pretrained_cfg = cfg.replace(arch_cfg={**model.pretrained_cfg.arch_cfg, **cfg.arch_cfg})
    return model.eval()


def load_deeplab(path: str | Path) -> DeepLabV3:
    """`DeepLabV3` with the weights of a DeepLab v3 / MobileNet v2 ``.tflite``, in eval mode."""
    return build_deeplab(read_deeplab_tflite(path))
