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


# --- bounds-checked flatbuffer walk -----------------------------------------------------------
#
# The generated Python accessors trust every offset: a truncated or damaged file makes them
# raise struct.error/IndexError deep inside the caller, or read another tensor's bytes
# (a vector index past its length is not checked). `verify_flatbuffer` walks every table
# of the TFLite schema that anything in this package reads, before any accessor runs, and
# checks each offset, vector and string against the buffer and each index against the
# table it indexes: afterwards every accessor reads inside the file.

# field kinds: ("t", schema) table, ("v", schema) vector of tables, ("s",) string, ("n", width) scalar
# vector, ("x", width) scalar, ("u",) union table (scalars only: options tables)
_U8, _I32, _I64, _F32 = ("x", 1), ("x", 4), ("x", 8), ("x", 4)
_FB_SCHEMA: dict[str, dict[int, tuple]] = {
    "Model": {0: _I32, 1: ("v", "OperatorCode"), 2: ("v", "SubGraph"), 3: ("s",), 4: ("v", "Buffer"),
              5: ("n", 4), 6: ("v", "Metadata"), 7: ("v", "SignatureDef")},
    "OperatorCode": {0: _U8, 1: ("s",), 2: _I32, 3: _I32},
    "SubGraph": {0: ("v", "Tensor"), 1: ("n", 4), 2: ("n", 4), 3: ("v", "Operator"), 4: ("s",)},
    "Tensor": {0: ("n", 4), 1: _U8, 2: _I32, 3: ("s",), 4: ("t", "QuantizationParameters"), 5: _U8,
               6: ("u",), 7: ("n", 4), 8: _U8},
    "QuantizationParameters": {0: ("n", 4), 1: ("n", 4), 2: ("n", 4), 3: ("n", 8), 4: _U8, 5: ("u",), 6: _I32},
    "Operator": {0: _I32, 1: ("n", 4), 2: ("n", 4), 3: _U8, 4: ("u",), 5: ("n", 1), 6: _U8, 7: ("n", 1),
                 8: ("n", 4), 9: _I64, 10: _I64, 11: _U8, 12: ("u",)},
    "Buffer": {0: ("n", 1), 1: _I64, 2: _I64},
    "Metadata": {0: ("s",), 1: _I32},
    "SignatureDef": {0: ("v", "TensorMap"), 1: ("v", "TensorMap"), 2: ("s",), 3: ("s",), 4: _I32},
    "TensorMap": {0: ("s",), 1: _I32},
}  # fmt: skip


class _Corrupt(Exception):
    pass


class _Walker:
    def __init__(self, data: bytes) -> None:
        self.data, self.n = data, len(data)

    def u32(self, pos: int) -> int:
        if pos < 0 or pos + 4 > self.n:
            raise _Corrupt(f"offset {pos} outside the file")
        return int.from_bytes(self.data[pos : pos + 4], "little")

    def table(self, pos: int, schema: str | None, depth: int = 0) -> dict[int, int]:
        """Check the table at ``pos``; return {field: absolute position} of the fields present."""
        if pos < 0 or pos + 4 > self.n or depth > 8:
            raise _Corrupt(f"table at {pos} outside the file")
        vt = pos - int.from_bytes(self.data[pos : pos + 4], "little", signed=True)
        if vt < 0 or vt + 4 > self.n:
            raise _Corrupt(f"vtable of table at {pos} outside the file")
        vsize = int.from_bytes(self.data[vt : vt + 2], "little")
        tsize = int.from_bytes(self.data[vt + 2 : vt + 4], "little")
        if vsize < 4 or vsize % 2 or vt + vsize > self.n or tsize < 4 or pos + tsize > self.n:
            raise _Corrupt(f"malformed vtable for table at {pos}")
        fields = {}
        for i in range((vsize - 4) // 2):
            off = int.from_bytes(self.data[vt + 4 + 2 * i : vt + 6 + 2 * i], "little")
            if off:
                fields[i] = pos + off
        kinds = _FB_SCHEMA.get(schema, {}) if schema else {}
        for i, at in fields.items():
            kind = kinds.get(i, ("x", 1))
            width = kind[1] if kind[0] == "x" else 4
            if at + width > pos + tsize or at + width > self.n:
                raise _Corrupt(f"field {i} of table at {pos} runs past it")
            if kind[0] == "x":
                continue
            target = at + self.u32(at)
            if kind[0] == "t":
                self.table(target, kind[1], depth + 1)
            elif kind[0] == "u":
                self.table(target, None, depth + 1)
            elif kind[0] == "s":
                self.vector(target, 1, extra=1)
            elif kind[0] == "n":
                self.vector(target, kind[1])
            else:  # vector of tables
                count = self.vector(target, 4)
                for j in range(count):
                    el = target + 4 + 4 * j
                    self.table(el + self.u32(el), kind[1], depth + 1)
        return fields

    def vector(self, pos: int, width: int, extra: int = 0) -> int:
        count = self.u32(pos)
        if pos + 4 + count * width + extra > self.n:
            raise _Corrupt(f"vector at {pos} ({count} x {width} bytes) runs past the end of the file")
        return count


def verify_flatbuffer(data: bytes) -> None:
    """Raise `_Corrupt` unless every part of the TFLite model this package reads lies inside ``data``."""
    if len(data) < 8:
        raise _Corrupt("shorter than a flatbuffer header")
    _Walker(data).table(int.from_bytes(data[:4], "little"), "Model")


def _check_indices(model) -> None:
    """Every index in the graph points inside the table it indexes (the accessors do not check)."""
    n_codes, n_buffers = model.OperatorCodesLength(), model.BuffersLength()
    for s in range(model.SubgraphsLength()):
        sg = model.Subgraphs(s)
        n_tensors = sg.TensorsLength()
        ios = [sg.InputsAsNumpy(), sg.OutputsAsNumpy()]
        for t in range(n_tensors):
            tensor = sg.Tensors(t)
            if tensor.Buffer() >= max(n_buffers, 1) or tensor.Name() is None or tensor.ShapeIsNone():
                raise _Corrupt(f"tensor {t} has a bad buffer index, no name or no shape")
        for i in range(sg.OperatorsLength()):
            op = sg.Operators(i)
            if op.OpcodeIndex() >= n_codes:
                raise _Corrupt(f"operator {i} has opcode index {op.OpcodeIndex()} of {n_codes}")
            ios += [op.InputsAsNumpy(), op.OutputsAsNumpy()]
        for arr in ios:
            if not isinstance(arr, int) and len(arr) and (int(arr.min()) < -1 or int(arr.max()) >= n_tensors):
                raise _Corrupt(f"a tensor index outside 0..{n_tensors - 1}")
    for i in range(model.MetadataLength()):
        m = model.Metadata(i)
        if m.Buffer() >= n_buffers or m.Name() is None:
            raise _Corrupt(f"metadata {i} has a bad buffer index or no name")


class TFLiteGraph:
    """Minimal read access to subgraph 0 of a TFLite model (bounds-checked: see `verify_flatbuffer`)."""

    def __init__(self, path: Path) -> None:
        schema = _schema()
        try:
            data = path.read_bytes()
        except OSError as e:
            raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
        if len(data) < 8 or data[4:8] != _TFLITE_IDENT:
            raise WeightsError(f"{path}: not a .tflite flatbuffer (missing 'TFL3' identifier)")
        try:
            verify_flatbuffer(data)
            self.model = schema.Model.GetRootAsModel(data, 0)
            _check_indices(self.model)
            if self.model.SubgraphsLength() < 1:
                raise WeightsError(f"{path}: .tflite file has no subgraph")
            self.sg = self.model.Subgraphs(0)
            self.op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
            self.ops = [self._op_name(self.sg.Operators(i)) for i in range(self.sg.OperatorsLength())]
        except WeightsError:
            raise
        except _Corrupt as e:
            raise WeightsError(f"{path}: corrupt or truncated .tflite file ({e})") from None
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
        if not 0 <= index < self.sg.TensorsLength():
            raise WeightsError(f"{self.path}: an operator lacks a constant input (tensor index {index})")
        t = self.tensor(index)
        buf = self.model.Buffers(t.Buffer())
        raw = buf.DataAsNumpy() if buf is not None and buf.DataLength() else None
        if raw is None or isinstance(raw, int):
            raise WeightsError(f"{self.path}: constant tensor {t.Name().decode('utf-8', 'replace')!r} has no data (truncated file?)")
        dtype = self.np_types.get(t.Type())
        if dtype is None:
            raise WeightsError(f"{self.path}: unsupported tensor type {t.Type()} for {t.Name().decode('utf-8', 'replace')!r}")
        shape = tuple(int(s) for s in t.ShapeAsNumpy())
        raw = raw.tobytes()
        if len(raw) % np.dtype(dtype).itemsize:
            raise WeightsError(f"{self.path}: tensor {t.Name().decode('utf-8', 'replace')!r} has {len(raw)} bytes, not a whole number "
                               f"of {np.dtype(dtype).name} values (corrupt file)")  # fmt: skip
        arr = np.frombuffer(raw, dtype=dtype)
        if arr.size != int(np.prod(shape)):
            raise WeightsError(f"{self.path}: tensor {t.Name().decode('utf-8', 'replace')!r} has {arr.size} values for shape {shape}")
        arr = arr.reshape(shape)
        q = t.Quantization()
        if dtype in (np.float32, np.float16):
            return arr.astype(np.float32)
        if q is None or q.ScaleLength() == 0:
            raise WeightsError(f"{self.path}: integer tensor {t.Name().decode('utf-8', 'replace')!r} has no quantization scale")
        scale = q.ScaleAsNumpy().astype(np.float64)
        zero = q.ZeroPointAsNumpy().astype(np.float64) if q.ZeroPointLength() else np.zeros_like(scale)
        if zero.size != scale.size or not np.isfinite(scale).all():
            raise WeightsError(f"{self.path}: tensor {t.Name().decode('utf-8', 'replace')!r} has inconsistent quantization parameters")
        if scale.size > 1:  # per-channel along quantized_dimension
            dim = q.QuantizedDimension()
            if not 0 <= dim < arr.ndim or arr.shape[dim] != scale.size:
                raise WeightsError(f"{self.path}: tensor {t.Name().decode('utf-8', 'replace')!r} has {scale.size} scales for shape "
                                   f"{shape} along dimension {dim}")  # fmt: skip
            bshape = [1] * arr.ndim
            bshape[dim] = scale.size
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
        if opts is None:
            raise WeightsError(f"{self.path}: a {self.ops_of(op)} operator has no options (corrupt file)")
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
                out[m.Name().decode('utf-8', 'replace')] = buf.DataAsNumpy().tobytes()
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
        if op.InputsLength() < 2:
            raise WeightsError(f"{path}: {g.ops[idx]} operator #{idx} has no weights input (corrupt file)")
        w_idx, b_idx = op.Inputs(1), op.Inputs(2) if op.InputsLength() > 2 else -1
        w = g.array(w_idx)
        if w.ndim != 4:
            raise WeightsError(f"{path}: {scope} weights have shape {w.shape}, expected 4 dimensions")
        quantized |= g.tensor(w_idx).Type() != g.schema.TensorType.FLOAT32
        stride = g.conv_options(op)
        strides.append(stride)
        if scope.endswith("depthwise"):
            weight = w.transpose(3, 0, 1, 2)  # [1, kh, kw, C] -> [C, 1, kh, kw]
        else:
            weight = w.transpose(0, 3, 1, 2)  # OHWI -> OIHW
        out_ch = weight.shape[0]
        bias = g.array(b_idx) if b_idx >= 0 else np.zeros(out_ch, np.float32)
        if bias.shape != (out_ch,):
            raise WeightsError(f"{path}: {scope} bias has shape {bias.shape}, expected ({out_ch},)")
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
        if op.InputsLength() < 2:
            raise WeightsError(f"{path}: the logits operator has no weights input (corrupt file)")
        w = g.array(op.Inputs(1))
        b = g.array(op.Inputs(2)) if op.InputsLength() > 2 else np.zeros(w.shape[0], np.float32)
        if w.ndim != 4 or w.shape[1:3] != (1, 1) or w.shape[3] != final or b.shape != (w.shape[0],):
            raise WeightsError(f"{path}: logits layer has shape {w.shape}, expected [classes, 1, 1, {final}]")
        state["classifier.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)))
        state["classifier.bias"] = torch.from_numpy(b.copy())
        num_classes = int(w.shape[0])

    if g.sg.InputsLength() < 1:
        raise WeightsError(f"{path}: the graph has no input tensor")
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
            labels = json.loads(ours.decode()).get("labels")
        except (ValueError, UnicodeDecodeError, AttributeError):
            return None
        return [str(v) for v in labels] if isinstance(labels, list) else None
    import io
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(io.BytesIO(g.data)) as z:  # metadata files are zipped onto the model
            for name in z.namelist():
                if name.endswith(".txt"):
                    lines = z.read(name).decode('utf-8', 'replace').splitlines()
                    if len(lines) > 1:
                        return lines
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, KeyError, RuntimeError, zlib.error):
        pass  # damaged packed metadata: the file's tensors are still readable
    return None
