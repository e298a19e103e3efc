"""Export to LiteRT (``.tflite``) through ``litert-torch``: float, or full-integer int8.

The float graph converts as TFLite files are built by Google: BN folded, ReLU6 fused,
and TF 'SAME' padding inside each conv (the converter folds the constant pads of
`DeployModule` back into ``padding=SAME``). Int8 goes through PT2E with
`quantize.pt2e_quantizer`; there the converter keeps each stride-2 pad as
TRANSPOSE -> PAD -> TRANSPOSE in front of its conv, so `fold_same_padding` rewrites the
flatbuffer: the conv reads the unpadded tensor with ``padding=SAME``, which is the same
arithmetic (TF 'SAME' is defined as exactly that pad) and the int8 graph becomes
op-for-op the shape of Google's. The input is uint8 by default (one QUANTIZE uint8 ->
int8 put in front: what MediaPipe Tasks and the TFLite Task Library accept) or int8 on
request; the probabilities are float (softmax on the dequantized logits), the embedding
is int8 with its scale. Each declared output of the model is one output tensor, in order.
Segmenters' per-pixel logits leave the graph N x H x W x classes, as Google's DeepLab file
(`NHWCOutputs`; ``ArtifactInfo.transpose`` turns them back into the declared NCHW), with
ImageSegmenter metadata, so MediaPipe runs the file alone.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from ..errors import MobilenetsError
from ..models.deploy import DeployModule
from ..models.layers import same_pad_amounts
from ..runtime.artifact import METADATA_KEY, ArtifactInfo
from ..utils import atomic_write


def require_litert_torch():
    """Import litert-torch, or say which extra installs it."""
    try:
        import litert_torch
    except ImportError:
        raise MobilenetsError("exporting to .tflite needs litert-torch: pip install 'mobilenets[litert]'") from None
    return litert_torch


class NHWCOutputs(torch.nn.Module):
    """A `DeployModule` whose 4-D outputs named in ``names`` come out N x H x W x C (TFLite's layout).

    Segmentation logits leave the graph as Google's DeepLab file gives them, [1, H, W, classes]:
    what MediaPipe's ImageSegmenter reads, and the converter's own NHWC layout, so no
    TRANSPOSE is left at the end of the graph.
    """

    def __init__(self, deploy: DeployModule, names: tuple[str, ...]) -> None:
        super().__init__()
        self.deploy, self.permute = deploy, tuple(n in names for n in deploy.names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(y.permute(0, 2, 3, 1) if p else y for y, p in zip(self.deploy(x), self.permute))


NHWC_AXES = [0, 3, 1, 2]  # ArtifactInfo.transpose: the file's NHWC tensor -> the declared NCHW output


def nhwc_output_names(model: torch.nn.Module) -> tuple[str, ...]:
    """Outputs a .tflite gives channels-last: per-pixel maps (N x C x H x W declared) of a segmenter."""
    if getattr(model.pretrained_cfg, "task", None) != "segment":
        return ()
    return tuple(o.name for o in model.outputs if len(o.shape) == 4)


def convert_tflite(model: torch.nn.Module, input_size: tuple[int, int, int], calibration: np.ndarray | None = None,
                   ranges: dict[str, tuple[float, float]] | None = None,
                   weight_ranges: dict[str, np.ndarray] | None = None,
                   cover: dict[str, tuple[float | None, float | None]] | None = None,
                   bias_correction: bool = True) -> bytes:  # fmt: skip
    """The ``.tflite`` flatbuffer of ``model`` (NHWC input): float, or int8 when ``calibration`` is given.

    ``ranges``, ``weight_ranges``, ``cover``, ``bias_correction``: fixed activation / weight
    ranges, activation ranges to include (by module name) and the weight-rounding bias
    correction, int8 only (`quantize.pt2e_calibrate`).
    """
    litert_torch = require_litert_torch()
    deploy = DeployModule(model, input_size, channels_last=True).eval()
    nhwc = nhwc_output_names(model)
    if nhwc:
        deploy = NHWCOutputs(deploy, nhwc).eval()
    c, h, w = input_size
    example = np.zeros((1, h, w, c), np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        if calibration is None:
            edge = litert_torch.convert(deploy, (torch.from_numpy(example),))
        else:
            from litert_torch.quantize.quant_config import QuantConfig

            from ..quantize import pt2e_calibrate

            graph, quantizer = pt2e_calibrate(deploy, np.zeros((2, h, w, c), np.float32), calibration, ranges=ranges,
                                              weight_ranges=weight_ranges, cover=cover,
                                              bias_correction=bias_correction)
            edge = litert_torch.convert(graph, (torch.from_numpy(example),), quant_config=QuantConfig(pt2e_quantizer=quantizer))
        path = Path(tmp) / "model.tflite"
        edge.export(str(path))
        return path.read_bytes()


# --- flatbuffer rewriting ---------------------------------------------------------------------


class Flatbuffer:
    """A mutable TFLite model (the schema's object API) with name lookups for subgraph 0."""

    def __init__(self, data: bytes) -> None:
        from ai_edge_litert import schema_py_generated as schema

        self.schema = schema
        self.model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        self.sg = self.model.subgraphs[0]
        self._names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}

    def op_name(self, op) -> str:
        oc = self.model.operatorCodes[op.opcodeIndex]
        return self._names.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "?")

    def const(self, index: int) -> np.ndarray:
        t = self.sg.tensors[index]
        data = self.model.buffers[t.buffer].data
        dtype = {self.schema.TensorType.INT32: np.int32, self.schema.TensorType.INT64: np.int64}[t.type]
        return np.frombuffer(np.asarray(data, np.uint8).tobytes(), dtype).reshape(list(t.shape))

    def opcode(self, name: str, version: int = 1) -> int:
        code = getattr(self.schema.BuiltinOperator, name)
        for i, oc in enumerate(self.model.operatorCodes):
            if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code:
                return i
        oc = self.schema.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), version
        self.model.operatorCodes.append(oc)
        return len(self.model.operatorCodes) - 1

    def serialize(self) -> bytes:
        import flatbuffers

        builder = flatbuffers.Builder(1 << 20)
        builder.Finish(self.model.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def fold_same_padding(fb: Flatbuffer) -> int:
    """Fold [TRANSPOSE ->] PAD [-> TRANSPOSE] -> conv(VALID) into conv(SAME) where the pad is TF 'SAME'. Returns the count."""
    sg, s = fb.sg, fb.schema
    producer = {t: i for i, op in enumerate(sg.operators) for t in op.outputs}
    uses: dict[int, int] = defaultdict(int)
    for op in sg.operators:
        for t in op.inputs:
            uses[t] += 1
    for t in sg.outputs:
        uses[t] += 1

    def sole_producer(t: int, name: str):
        i = producer.get(t)
        if i is None or uses[t] != 1 or fb.op_name(sg.operators[i]) != name:
            return None, None
        return i, sg.operators[i]

    dead: set[int] = set()
    for op in sg.operators:
        if fb.op_name(op) not in ("CONV_2D", "DEPTHWISE_CONV_2D") or op.builtinOptions.padding != s.Padding.VALID:
            continue
        chain, t = [], op.inputs[0]
        i2, t2 = sole_producer(t, "TRANSPOSE")
        if t2 is not None:
            if fb.const(t2.inputs[1]).tolist() != [0, 2, 3, 1]:
                continue
            chain.append(i2)
            t = t2.inputs[0]
        ip, pad = sole_producer(t, "PAD")
        if pad is None:
            continue
        chain.append(ip)
        amounts = fb.const(pad.inputs[1])
        source = pad.inputs[0]
        if t2 is not None:  # the pad ran in NCHW between two transposes
            i1, t1 = sole_producer(source, "TRANSPOSE")
            if t1 is None or fb.const(t1.inputs[1]).tolist() != [0, 3, 1, 2]:
                continue
            chain.append(i1)
            source = t1.inputs[0]
            amounts = amounts[[0, 2, 3, 1]]  # NCHW rows -> NHWC rows
        height, width = (int(d) for d in sg.tensors[source].shape[1:3])
        kh, kw = (int(d) for d in sg.tensors[op.inputs[1]].shape[1:3])
        o = op.builtinOptions
        want = [[0, 0], list(same_pad_amounts(height, kh, o.strideH, o.dilationHFactor)),
                list(same_pad_amounts(width, kw, o.strideW, o.dilationWFactor)), [0, 0]]  # fmt: skip
        if amounts.tolist() != want:
            continue
        op.inputs[0] = source
        o.padding = s.Padding.SAME
        dead.update(chain)
    sg.operators = [op for i, op in enumerate(sg.operators) if i not in dead]
    return len(dead)


def uint8_input(fb: Flatbuffer) -> tuple[float, int]:
    """Make the int8 image input uint8 (zero point + 128) through one QUANTIZE op; returns its (scale, zero point)."""
    s, sg = fb.schema, fb.sg
    old = sg.tensors[sg.inputs[0]]
    if old.type != s.TensorType.INT8:
        raise MobilenetsError("uint8 input needs an int8-input model")
    new = s.TensorT()
    new.shape, new.shapeSignature, new.type, new.buffer = old.shape, old.shapeSignature, s.TensorType.UINT8, 0
    new.name, old.name = old.name, old.name + b"_int8"
    q = s.QuantizationParametersT()
    q.scale = list(old.quantization.scale)
    q.zeroPoint = [int(z) + 128 for z in old.quantization.zeroPoint]
    new.quantization = q
    sg.tensors.append(new)
    index = len(sg.tensors) - 1
    op = s.OperatorT()
    op.opcodeIndex = fb.opcode("QUANTIZE", version=2)
    op.inputs, op.outputs = [index], [sg.inputs[0]]
    op.builtinOptionsType, op.builtinOptions = s.BuiltinOptions.QuantizeOptions, s.QuantizeOptionsT()
    for sig in fb.model.signatureDefs or []:
        for tm in sig.inputs:
            if tm.tensorIndex == sg.inputs[0]:
                tm.tensorIndex = index
    sg.operators.insert(0, op)
    sg.inputs[0] = index
    return float(q.scale[0]), int(q.zeroPoint[0])


def add_metadata(fb: Flatbuffer, name: str, payload: bytes) -> None:
    buf = fb.schema.BufferT()
    buf.data = np.frombuffer(payload, np.uint8)
    fb.model.buffers.append(buf)
    md = fb.schema.MetadataT()
    md.name, md.buffer = name.encode(), len(fb.model.buffers) - 1
    fb.model.metadata = [m for m in (fb.model.metadata or []) if m.name != md.name] + [md]


def input_contract(fb: Flatbuffer, info: ArtifactInfo, calibration: np.ndarray | None, input_dtype: str,
                   bias_correction: bool = False) -> None:  # fmt: skip
    """Fold the pads of a converted graph, then record its input (and how it was quantized) in ``info``; uint8 if asked."""
    fold_same_padding(fb)
    sg = fb.sg
    tin = sg.tensors[sg.inputs[0]]
    info.layout = "NHWC"
    info.int8 = calibration is not None
    if info.int8:
        from ..quantize import PT2E_SETTINGS

        info.quantization = {**PT2E_SETTINGS, "calibration_images": len(calibration), "bias_correction": bias_correction}
        if input_dtype not in ("int8", "uint8"):
            raise MobilenetsError(f"a full-integer .tflite takes int8 or uint8 input, not {input_dtype}")
        info.input_dtype = "int8"
        info.input_quantization = (float(tin.quantization.scale[0]), int(tin.quantization.zeroPoint[0]))
        if input_dtype == "uint8":
            info.input_quantization = uint8_input(fb)
            info.input_dtype = "uint8"


def export_tflite(model: torch.nn.Module, out: str | os.PathLike, info: ArtifactInfo,
                  calibration: np.ndarray | None = None, input_dtype: str = "uint8",
                  bias_correction: bool = True) -> ArtifactInfo:  # fmt: skip
    """Write ``model`` as ``.tflite`` (int8 when ``calibration`` is given) with ``info`` inside; returns the final info."""
    fb = Flatbuffer(convert_tflite(model, info.cfg.input_size, calibration, bias_correction=bias_correction))
    input_contract(fb, info, calibration, input_dtype, bias_correction)
    sg = fb.sg
    names = [sg.tensors[i].name.decode() for i in sg.outputs]
    if len(names) != len(info.outputs):
        raise MobilenetsError(f"the converted graph has {len(names)} outputs for {len(info.outputs)} declared ones")
    info.tensors = {spec.name: name for spec, name in zip(info.outputs, names)}
    info.transpose = {name: NHWC_AXES for name in nhwc_output_names(model)}
    add_metadata(fb, METADATA_KEY, info.to_json().encode())
    data = fb.serialize()
    if info.cfg.task in ("classify", "embed", "segment"):
        from .tflite_metadata import standard_metadata

        data = standard_metadata(data, info)  # what MediaPipe Tasks and the TFLite Task Library read
    with atomic_write(out) as tmp:
        tmp.write_bytes(data)
    return info
