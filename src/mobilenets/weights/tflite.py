"""Read MobileNet v1 weights out of a ``.tflite`` flatbuffer (float or uint8/int8).

The flatbuffer is parsed with LiteRT's own generated schema (``ai_edge_litert``), and the
graph is walked in execution order rather than trusted by tensor names: a MobileNet v1 is
exactly one 3x3 CONV_2D, 13 (DEPTHWISE_CONV_2D, 1x1 CONV_2D) pairs and, for classifiers,
a 1x1 logits CONV_2D, with only pooling/reshape/softmax besides. Anything else (SSD,
DeepLab, another network) is refused with a reason.

TFLite files hold BatchNorm folded into the conv (weights scaled, bias added) and ReLU6
fused. They load into the standard module with BN as an exact identity (gamma 1, mean 0,
variance ``1 - eps`` so ``sqrt(var + eps) == 1`` in float32) and the folded bias in beta,
so the result can be fine-tuned like any other. Quantized tensors are dequantized
(``(q - zero_point) * scale``, per tensor or per channel; int32 biases carry their scale).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..models.layers import BN_EPS
from ..models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS
from . import LoadedWeights, infer_alpha

_ALLOWED_OTHER_OPS = {"AVERAGE_POOL_2D", "MEAN", "RESHAPE", "SQUEEZE", "SOFTMAX", "QUANTIZE", "DEQUANTIZE"}
_TFLITE_IDENT = b"TFL3"


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise WeightsError("reading .tflite needs LiteRT: pip install 'mobilenets[tflite]'") from None
    return schema


def _tensor_type_to_numpy(schema) -> dict[int, np.dtype]:
    t = schema.TensorType
    return {t.FLOAT32: np.float32, t.FLOAT16: np.float16, t.INT32: np.int32, t.UINT8: np.uint8, t.INT8: np.int8,
            t.INT64: np.int64, t.INT16: np.int16}  # fmt: skip


class TFLiteGraph:
    """Minimal read access to subgraph 0 of a TFLite model."""

    def __init__(self, path: Path) -> None:
        schema = _schema()
        data = path.read_bytes()
        if len(data) < 8 or data[4:8] != _TFLITE_IDENT:
            raise WeightsError(f"{path}: not a .tflite flatbuffer (missing 'TFL3' identifier)")
        try:
            self.model = schema.Model.GetRootAsModel(data, 0)
            if self.model.SubgraphsLength() < 1:
                raise WeightsError(f"{path}: .tflite file has no subgraph")
            self.sg = self.model.Subgraphs(0)
            self.op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
            self.ops = [self._op_name(self.sg.Operators(i)) for i in range(self.sg.OperatorsLength())]
        except WeightsError:
            raise
        except Exception as e:  # noqa: BLE001 (flatbuffers raises struct/index errors on damaged files)
            raise WeightsError(f"{path}: corrupt or truncated .tflite file ({type(e).__name__})") from None
        self.schema, self.data, self.path = schema, data, path
        self.np_types = _tensor_type_to_numpy(schema)

    def _op_name(self, op) -> str:
        oc = self.model.OperatorCodes(op.OpcodeIndex())
        code = max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())
        return self.op_names.get(code, f"op{code}")

    def tensor(self, index: int):
        return self.sg.Tensors(index)

    def array(self, index: int) -> np.ndarray:
        """A constant tensor's value, dequantized to float32."""
        t = self.tensor(index)
        buf = self.model.Buffers(t.Buffer())
        raw = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
        if raw is None or isinstance(raw, int):
            raise WeightsError(f"{self.path}: constant tensor {t.Name().decode()!r} has no data (truncated file?)")
        dtype = self.np_types.get(t.Type())
        if dtype is None:
            raise WeightsError(f"{self.path}: unsupported tensor type {t.Type()} for {t.Name().decode()!r}")
        shape = tuple(int(s) for s in t.ShapeAsNumpy())
        arr = np.frombuffer(raw.tobytes(), dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise WeightsError(f"{self.path}: tensor {t.Name().decode()!r} has {arr.size} values for shape {shape}")
        arr = arr.reshape(shape)
        q = t.Quantization()
        if dtype in (np.float32, np.float16):
            return arr.astype(np.float32)
        if q is None or q.ScaleLength() == 0:
            raise WeightsError(f"{self.path}: integer tensor {t.Name().decode()!r} has no quantization scale")
        scale = q.ScaleAsNumpy().astype(np.float64)
        zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
        if scale.size > 1:  # per-channel along quantized_dimension
            bshape = [1] * arr.ndim
            bshape[q.QuantizedDimension()] = scale.size
            scale, zero = scale.reshape(bshape), zero.reshape(bshape)
        return ((arr.astype(np.float64) - zero) * scale).astype(np.float32)

    def io_quantization(self, index: int) -> tuple[float, int] | None:
        q = self.tensor(index).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        return float(q.ScaleAsNumpy()[0]), int(q.ZeroPointAsNumpy()[0]) if q.ZeroPointLength() else 0

    def conv_options(self, op) -> int:
        """The stride of a conv/depthwise op."""
        opts = op.BuiltinOptions()
        cls = self.schema.DepthwiseConv2DOptions if self.ops_of(op) == "DEPTHWISE_CONV_2D" else self.schema.Conv2DOptions
        o = cls()
        o.Init(opts.Bytes, opts.Pos)
        return o.StrideH()

    def ops_of(self, op) -> str:
        return self._op_name(op)

    def metadata(self) -> dict[str, bytes]:
        out = {}
        for i in range(self.model.MetadataLength()):
            m = self.model.Metadata(i)
            buf = self.model.Buffers(m.Buffer())
            if buf is not None and buf.DataLength():
                out[m.Name().decode()] = buf.DataAsNumpy().tobytes()
        return out


def read_tflite(path: str | Path) -> LoadedWeights:
    """Weights of a MobileNet v1 ``.tflite`` file as our state dict (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    g = TFLiteGraph(path)
    convs = [(i, g.sg.Operators(i)) for i, name in enumerate(g.ops) if name in ("CONV_2D", "DEPTHWISE_CONV_2D")]
    others = sorted({n for n in g.ops if n not in ("CONV_2D", "DEPTHWISE_CONV_2D") and n not in _ALLOWED_OTHER_OPS})
    kinds = [g.ops[i] for i, _ in convs]
    body = ["CONV_2D"] + ["DEPTHWISE_CONV_2D", "CONV_2D"] * 13
    if others or kinds[:27] != body or len(kinds) not in (27, 28):
        what = f"{kinds.count('CONV_2D')} conv + {kinds.count('DEPTHWISE_CONV_2D')} depthwise ops"
        if others:
            what += f", and {', '.join(others[:4])}"
        raise WeightsError(f"{path}: not a MobileNet v1 classifier/backbone ({what}; expected 27 or 28 convs in v1 order)")

    state: dict[str, torch.Tensor] = {}
    names = ["Conv2d_0"] + [f"Conv2d_{i}_{k}" for i in range(1, 14) for k in ("depthwise", "pointwise")]
    quantized = False
    strides = []
    for (idx, op), scope in zip(convs[:27], names):
        w_idx, b_idx = op.Inputs(1), op.Inputs(2) if op.InputsLength() > 2 else -1
        w = g.array(w_idx)
        quantized |= g.tensor(w_idx).Type() != g.schema.TensorType.FLOAT32
        stride = g.conv_options(op)
        strides.append(stride)
        if scope.endswith("depthwise"):
            weight = w.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
        else:
            weight = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        out_ch = weight.shape[0]
        bias = g.array(b_idx) if b_idx >= 0 else np.zeros(out_ch, np.float32)
        prefix = f"features.{scope}"
        state[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        state[f"{prefix}.bn.weight"] = torch.ones(out_ch)
        state[f"{prefix}.bn.bias"] = torch.from_numpy(bias.copy())
        state[f"{prefix}.bn.running_mean"] = torch.zeros(out_ch)
        # sqrt((1 - eps) + eps) rounds to exactly 1.0 in float32: BN becomes the identity.
        state[f"{prefix}.bn.running_var"] = torch.full((out_ch,), 1.0 - BN_EPS)

    expected_strides = [d.stride for d in MOBILENET_V1_CONV_DEFS]
    got_strides = [strides[0]] + strides[1::2]
    if got_strides != expected_strides:
        raise WeightsError(f"{path}: conv strides {got_strides} are not MobileNet v1's {expected_strides}")
    final = state["features.Conv2d_13_pointwise.conv.weight"].shape[0]
    alpha = infer_alpha(state, path)
    num_classes = 0
    if len(convs) == 28:
        _, op = convs[27]
        w = g.array(op.Inputs(1))
        b = g.array(op.Inputs(2)) if op.InputsLength() > 2 else np.zeros(w.shape[0], np.float32)
        if w.shape[1:3] != (1, 1) or w.shape[3] != final:
            raise WeightsError(f"{path}: logits layer has shape {w.shape}, expected [classes, 1, 1, {final}]")
        state["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)))
        state["classifier.bias"] = torch.from_numpy(b.copy())
        num_classes = int(w.shape[0])

    inp = g.sg.Inputs(0)
    in_shape = [int(s) for s in g.tensor(inp).ShapeAsNumpy()]
    resolution = in_shape[1] if len(in_shape) == 4 and in_shape[1] == in_shape[2] and in_shape[1] > 0 else None
    labels = labels_from_metadata(g)
    fmt = "tflite-quant" if quantized else "tflite-float"
    meta = {"input_quantization": g.io_quantization(inp), "quantized": quantized}
    return LoadedWeights(state, alpha, num_classes, resolution, str(path), fmt, labels, meta)


def labels_from_metadata(g: TFLiteGraph) -> list[str] | None:
    """Labels packed in a TFLite metadata zip (tflite-support) or our own export metadata."""
    meta = g.metadata()
    ours = meta.get("mobilenets")
    if ours:
        try:
            return json.loads(ours.decode()).get("labels")
        except (ValueError, UnicodeDecodeError):
            return None
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(g.data)) as z:  # metadata files are zipped onto the model
            for name in z.namelist():
                if name.endswith(".txt"):
                    lines = z.read(name).decode("utf-8", "replace").splitlines()
                    if len(lines) > 1:
                        return lines
    except (zipfile.BadZipFile, OSError):
        pass
    return None
