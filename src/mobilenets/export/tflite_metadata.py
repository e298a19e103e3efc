"""Standard TFLite Model Metadata, so MediaPipe Tasks (and the TFLite Support library) run our files alone.

Our own contract travels as JSON under ``"mobilenets"`` (`ArtifactInfo`); the
rest of the ecosystem reads the ``TFLITE_METADATA`` entry instead: a second flatbuffer
(schema ``metadata_schema.fbs``, identifier ``M001``) that describes the input image
(RGB, ``(pixel - mean) / std`` in 0..255 units, value range) and each output (class
probabilities with a labels file, the embedding), plus the associated files zipped onto
the end of the model the way tflite-support's populator does: the bytes stay a valid
TFLite flatbuffer (it is read from the front) and are a valid zip too (read from the
back; the zip's offsets count from the start of the file).

The metadata flatbuffer is written with the plain ``flatbuffers`` Builder from the
field layout in `_LAYOUT` (ids copied from ``metadata_schema.fbs`` 1.5.0), so writing it
needs neither mediapipe nor tflite-support. Only 1.0.0 fields are used, hence
``min_parser_version`` 1.0.0.

Segmenters (role ``logits``, an N x H x W x classes tensor) are described as Google's
deeplabv3.tflite is: a grayscale-image output with value range over dimensions 1..2 and the
labels file as TENSOR_AXIS_LABELS; MediaPipe's ImageSegmenter reads exactly that.

MediaPipe wants one output entry per output tensor, and all outputs quantized or none:
both of ours are described (its ImageClassifier reports two heads, ``probabilities`` with
named categories first, then ``embedding``; its ImageEmbedder the same two), and the int8
embedding of int8 graphs becomes float (`float_outputs`). It feeds uint8 inputs raw pixels
and ignores the normalization: `standard_metadata` refuses a uint8 input whose
quantization is not the model's normalization, which MediaPipe would misread silently.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import MobilenetsError
from ..models.cfg import SLIM_EVAL_CROP

# The role names of an artifact's outputs; the artifact contract itself comes in as a `ModelCard`
# (or any ArtifactInfo, duck-typed), so this module imports nothing else of ours.
PROBABILITIES, EMBEDDING, SEGMENTATION = "probabilities", "embedding", "logits"

TFLITE_METADATA_KEY = "TFLITE_METADATA"
MIN_PARSER_VERSION = "1.0.0"
LABELS_FILE = "labels.txt"
AUTHOR = "mobilenets"
LICENSE = "Apache License. Version 2.0 http://www.apache.org/licenses/LICENSE-2.0."

# Enum values of metadata_schema.fbs.
TENSOR_AXIS_LABELS = 2  # AssociatedFileType
RGB, GRAYSCALE = 1, 2  # ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES = 1, 2  # ContentProperties union
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions union

# table -> (number of fields, {field: (id, kind)}). Kinds: string, [string], [float], a scalar
# (int8/uint8/int32/uint32), a table name, [table name], or "union" (a table whose type was given
# in the field before it). Only the tables we write; ids and order are exactly the schema's.
_LAYOUT: dict[str, tuple[int, dict[str, tuple[int, str]]]] = {
    "ModelMetadata": (8, {"name": (0, "string"), "description": (1, "string"), "version": (2, "string"),
                          "subgraph_metadata": (3, "[SubGraphMetadata]"), "author": (4, "string"),
                          "license": (5, "string"), "associated_files": (6, "[AssociatedFile]"),
                          "min_parser_version": (7, "string")}),
    "SubGraphMetadata": (10, {"name": (0, "string"), "description": (1, "string"),
                              "input_tensor_metadata": (2, "[TensorMetadata]"),
                              "output_tensor_metadata": (3, "[TensorMetadata]"),
                              "associated_files": (4, "[AssociatedFile]")}),
    "TensorMetadata": (7, {"name": (0, "string"), "description": (1, "string"), "dimension_names": (2, "[string]"),
                           "content": (3, "Content"), "process_units": (4, "[ProcessUnit]"), "stats": (5, "Stats"),
                           "associated_files": (6, "[AssociatedFile]")}),
    "Content": (3, {"content_properties_type": (0, "uint8"), "content_properties": (1, "union"),
                    "range": (2, "ValueRange")}),
    "ImageProperties": (2, {"color_space": (0, "int8"), "default_size": (1, "ImageSize")}),
    "ImageSize": (2, {"width": (0, "uint32"), "height": (1, "uint32")}),
    "FeatureProperties": (0, {}),
    "ValueRange": (2, {"min": (0, "int32"), "max": (1, "int32")}),
    "ProcessUnit": (2, {"options_type": (0, "uint8"), "options": (1, "union")}),
    "NormalizationOptions": (2, {"mean": (0, "[float]"), "std": (1, "[float]")}),
    "Stats": (2, {"max": (0, "[float]"), "min": (1, "[float]")}),
    "BoundingBoxProperties": (3, {"index": (0, "[uint32]"), "type": (1, "int8"), "coordinate_type": (2, "int8")}),
    "AssociatedFile": (5, {"name": (0, "string"), "description": (1, "string"), "type": (2, "int8"),
                           "locale": (3, "string"), "version": (4, "string")}),
}  # fmt: skip
_SCALARS = {"int8": "PrependInt8Slot", "uint8": "PrependUint8Slot", "int32": "PrependInt32Slot",
            "uint32": "PrependUint32Slot"}  # fmt: skip


class Table:
    """One metadata table as plain data: ``Table("Stats", min=[0.0], max=[1.0])``."""

    def __init__(self, kind: str, **fields: Any) -> None:
        if kind not in _LAYOUT:
            raise KeyError(f"no table {kind!r} in the metadata layout")
        unknown = set(fields) - set(_LAYOUT[kind][1])
        if unknown:
            raise KeyError(f"{kind} has no field(s) {sorted(unknown)}")
        self.kind, self.fields = kind, {k: v for k, v in fields.items() if v is not None}


def _write(b, value: Any, kind: str) -> int:
    """Serialize a non-scalar ``value`` of schema type ``kind``; returns its offset."""
    if kind == "string":
        return b.CreateString(value)
    if kind.startswith("["):
        inner = kind[1:-1]
        if inner in ("float", "uint32"):
            b.StartVector(4, len(value), 4)
            for v in reversed(value):
                b.PrependFloat32(float(v)) if inner == "float" else b.PrependUint32(int(v))
        else:
            offsets = [_write(b, v, inner) for v in value]  # children first: nothing nests inside a vector
            b.StartVector(4, len(offsets), 4)
            for o in reversed(offsets):
                b.PrependUOffsetTRelative(o)
        return b.EndVector()
    if kind != "union" and value.kind != kind:
        raise TypeError(f"expected a {kind} table, got {value.kind}")
    size, layout = _LAYOUT[value.kind]
    children = {f: _write(b, v, layout[f][1]) for f, v in value.fields.items() if layout[f][1] not in _SCALARS}
    b.StartObject(size)
    for f, v in value.fields.items():
        slot, k = layout[f]
        if k in _SCALARS:
            getattr(b, _SCALARS[k])(slot, int(v), 0)
        else:
            b.PrependUOffsetTRelativeSlot(slot, children[f], 0)
    return b.EndObject()


def build_metadata(root: Table) -> bytes:
    """The ``M001`` flatbuffer of a ``ModelMetadata`` table."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    b.Finish(_write(b, root, "ModelMetadata"), file_identifier=b"M001")
    return bytes(b.Output())


# --- what our artifacts say ---------------------------------------------------------------------


@dataclass
class ModelCard:
    """What the standard metadata says beyond the graph itself (sizes, dtypes and quantization are read from it).

    ``mean``/``std``: our ``(x - mean) / std`` on [0, 1] values (one value, or one per channel).
    ``outputs``: role (`PROBABILITIES`, `EMBEDDING`) -> tensor name; default: the first output
    is the probabilities when there are labels, the second the embedding.
    """

    name: str
    mean: float | Sequence[float] = 0.5
    std: float | Sequence[float] = 0.5
    labels: Sequence[str] | None = None
    has_background: bool = False
    outputs: dict[str, str] = field(default_factory=dict)
    crop_fraction: float = SLIM_EVAL_CROP
    alpha: float | None = None
    version: str | None = None
    description: str | None = None
    family: str = "MobileNet v1"  # what the description calls the network

    @classmethod
    def from_artifact(cls, info: Any) -> ModelCard:
        """From an ``ArtifactInfo``: the flat one (mean, labels, outputs role -> tensor) or one with a ``cfg``."""
        cfg = getattr(info, "cfg", None)
        src = cfg if cfg is not None else info
        outputs = getattr(info, "tensors", None) or getattr(info, "outputs", None) or {}
        background = getattr(src, "has_background", None)
        if background is None:
            background = getattr(src, "label_offset", 0) == 1
        return cls(
            name=info.name, mean=src.mean, std=src.std, labels=getattr(src, "labels", None),
            has_background=bool(background), outputs=dict(outputs) if isinstance(outputs, dict) else {},
            crop_fraction=src.crop_fraction, alpha=getattr(src, "alpha", None) or (getattr(src, "arch_cfg", None) or {}).get("alpha"),
            version=getattr(info, "mobilenets_version", None),
            family=_family(getattr(src, "arch", None), getattr(src, "arch_cfg", None) or {}),
        )  # fmt: skip


def _family(arch: str | None, arch_cfg: dict) -> str:
    if arch and arch.startswith("deeplabv3_"):
        backbone = "MobileNet v2" if arch.endswith("v2") else "MobileNet v1"
        return f"DeepLab v3 / {backbone}"
    return "MobileNet v1"


def _per_channel(v: float | Sequence[float]) -> list[float]:
    """As written in NormalizationOptions, on 0..255 pixels: one value when all channels agree (MediaPipe needs that)."""
    values = [255.0 * float(x) for x in (v if isinstance(v, Sequence) else [v])]
    return values[:1] if len(set(values)) == 1 else values


def check_pixel_input(card: ModelCard, input_dtype: str, input_quantization: tuple[float, int] | None) -> None:
    """Refuse a uint8 input that does not mean the raw pixel value (MediaPipe feeds pixels unchanged)."""
    if input_dtype != "uint8":
        return
    scale, zero = input_quantization
    for mean, std in zip(_per_channel(card.mean) * 3, _per_channel(card.std) * 3):
        # Calibration sets that miss pure black or white leave the scale ~1% off (harmless); beyond 5% or
        # 3 levels, the file says something else than MediaPipe will feed it.
        if abs(scale * std - 1) > 0.05 or abs(zero - mean) > 3:
            raise MobilenetsError(f"uint8 input quantization (scale {scale:.6g}, zero point {zero}) is not the pixel "
                                  f"normalization (1/{std:g}, {mean:g}): tools that feed raw pixels would misread it")  # fmt: skip


def metadata_tables(card: ModelCard, graph: dict[str, Any], output_roles: Sequence[str], *, author: str = AUTHOR,
                    license: str = LICENSE) -> Table:  # fmt: skip
    """The ``ModelMetadata`` of a model whose graph outputs are, in order, ``output_roles``.

    ``graph``: what the file's tensors say (`graph_facts`). Roles are `PROBABILITIES` and
    `EMBEDDING`; anything else is described as a plain feature tensor named after the role.
    """
    r, dtype = graph["resolution"], graph["input_dtype"]
    mean, std = _per_channel(card.mean), _per_channel(card.std)
    norm = f"(pixel - {'/'.join(f'{m:g}' for m in mean)}) / {'/'.join(f'{s:g}' for s in std)}"
    if dtype == "uint8":
        stats = Table("Stats", min=[0.0], max=[255.0])
        values = "uint8 pixel values 0..255 (quantized with the normalization below)"
    elif dtype == "float32":
        pairs = list(zip(mean * (len(std) // len(mean)), std * (len(mean) // len(std))))
        stats = Table("Stats", min=[(0 - m) / s for m, s in pairs], max=[(255 - m) / s for m, s in pairs])
        values = f"float32 {norm}"
    else:  # int8: no pixel range to state; MediaPipe does not take int8 images
        stats = None
        q = graph["input_quantization"]
        values = f"int8 quantized (scale {q[0]:.6g}, zero point {q[1]}) from {norm}"
    image = Table(
        "TensorMetadata", name="image",
        description=f"RGB image {r} x {r}, {values}. The reference evaluation centre-crops "
                    f"{100 * card.crop_fraction:g}% of the image before the bilinear resize.",
        content=Table("Content", content_properties_type=IMAGE_PROPERTIES,
                      content_properties=Table("ImageProperties", color_space=RGB)),
        process_units=[Table("ProcessUnit", options_type=NORMALIZATION_OPTIONS,
                             options=Table("NormalizationOptions", mean=mean, std=std))],
        stats=stats,
    )  # fmt: skip
    outputs = []
    for role, width in zip(output_roles, graph["output_widths"]):
        if role == PROBABILITIES:
            background = " Index 0 is 'background'." if card.has_background else ""
            files = None
            if card.labels:
                files = [Table("AssociatedFile", name=LABELS_FILE, type=TENSOR_AXIS_LABELS,
                               description=f"Labels of the {len(card.labels)} classes, one per line.")]  # fmt: skip
            outputs.append(Table(
                "TensorMetadata", name=PROBABILITIES,
                description=f"Softmax probabilities of the {width} classes.{background}",
                content=Table("Content", content_properties_type=FEATURE_PROPERTIES,
                              content_properties=Table("FeatureProperties")),
                stats=Table("Stats", min=[0.0], max=[1.0]), associated_files=files,
            ))  # fmt: skip
        elif role == SEGMENTATION:
            # As Google's deeplabv3.tflite: a "grayscale image" per class along the last axis
            # (range = the H, W dimensions), the labels file naming that axis; ImageSegmenter reads this.
            files = None
            if card.labels:
                files = [Table("AssociatedFile", name=LABELS_FILE, type=TENSOR_AXIS_LABELS,
                               description=f"Labels of the {len(card.labels)} classes, one per line.")]  # fmt: skip
            outputs.append(Table(
                "TensorMetadata", name="segmentation_masks",
                description=f"Per-pixel logits of the {width} classes, {r} x {r} x {width} (arg-max = class).",
                content=Table("Content", content_properties_type=IMAGE_PROPERTIES,
                              content_properties=Table("ImageProperties", color_space=GRAYSCALE),
                              range=Table("ValueRange", min=1, max=2)),
                associated_files=files,
            ))  # fmt: skip
        else:
            what = (f"Pooled pre-logits features ({width} values), for retrieval or a new head."
                    if role == EMBEDDING else f"Output {role!r} ({width} values).")  # fmt: skip
            outputs.append(Table("TensorMetadata", name=role, description=what,
                                 content=Table("Content", content_properties_type=FEATURE_PROPERTIES,
                                               content_properties=Table("FeatureProperties"))))  # fmt: skip
    kind = ("image classifier" if PROBABILITIES in output_roles else
            "image segmenter" if SEGMENTATION in output_roles else "image embedder")  # fmt: skip
    precision = "full-integer int8" if graph["int8"] else "float32"
    alpha = f" width {card.alpha:g}," if card.alpha else ""
    return Table(
        "ModelMetadata", name=card.name,
        description=card.description or f"{card.family} {kind} ({precision},{alpha} {r} x {r} input).",
        version=card.version, author=author, license=license,
        subgraph_metadata=[Table("SubGraphMetadata", input_tensor_metadata=[image], output_tensor_metadata=outputs)],
        min_parser_version=MIN_PARSER_VERSION,
    )  # fmt: skip


def graph_facts(model: Any, schema: Any) -> dict[str, Any]:
    """What subgraph 0 of a ``ModelT`` says: input side, dtype and quantization, int8-ness, output names and widths."""
    sg, t = model.subgraphs[0], schema.TensorType
    tin = sg.tensors[sg.inputs[0]]
    dtype = {t.FLOAT32: "float32", t.UINT8: "uint8", t.INT8: "int8"}.get(tin.type)
    if dtype is None or len(tin.shape) != 4:
        raise MobilenetsError(
            f"expected one NHWC float32/uint8/int8 image input, got type {tin.type} shape {list(tin.shape)}"
        )
    q = tin.quantization
    quant = (float(q.scale[0]), int(q.zeroPoint[0])) if dtype != "float32" else None
    int8 = dtype != "float32" or any(
        sg.tensors[op.inputs[1]].type == t.INT8 for op in sg.operators if len(op.inputs) > 1 and op.inputs[1] >= 0
    )
    outs = [sg.tensors[i] for i in sg.outputs]
    return {"resolution": int(tin.shape[1]), "input_dtype": dtype, "input_quantization": quant, "int8": int8,
            "output_names": [o.name.decode() for o in outs], "output_widths": [int(o.shape[-1]) for o in outs]}  # fmt: skip


def associated_files(card: ModelCard) -> dict[str, bytes]:
    """The files the metadata names: ``labels.txt`` (one label per line) when the model has labels."""
    return {LABELS_FILE: ("\n".join(card.labels) + "\n").encode()} if card.labels else {}


def pack_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """``model_bytes`` with ``files`` zipped onto the end (stored, offsets from the file start), as tflite-support does."""
    out = io.BytesIO(model_bytes)
    out.seek(0, io.SEEK_END)
    if files:
        with zipfile.ZipFile(out, "a", zipfile.ZIP_STORED) as z:  # "a" on non-zip bytes appends a new archive
            for name, data in files.items():
                z.writestr(name, data)
    return out.getvalue()


def float_outputs(model: Any, schema: Any) -> list[str]:
    """Dequantize every int8 graph output to float32 (one DEQUANTIZE op each); returns their names.

    ``model`` is a ``ModelT`` of ``schema`` (``ai_edge_litert.schema_py_generated``). The float
    tensor takes over the output's name (the int8 one becomes ``<name>_int8``), so names in
    ``ArtifactInfo.outputs`` stay true. MediaPipe wants all outputs quantized (uint8) or none:
    our int8 graphs end in float probabilities and an int8 embedding.
    """
    sg, t = model.subgraphs[0], schema.TensorType
    code = schema.BuiltinOperator.DEQUANTIZE
    opcode = next((i for i, oc in enumerate(model.operatorCodes) if max(oc.builtinCode, oc.deprecatedBuiltinCode) == code),
                  None)  # fmt: skip
    renamed = []
    for k, index in enumerate(sg.outputs):
        old = sg.tensors[index]
        if old.type != t.INT8:
            continue
        if opcode is None:
            oc = schema.OperatorCodeT()
            oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, code, 2  # version 2: int8 input
            model.operatorCodes.append(oc)
            opcode = len(model.operatorCodes) - 1
        new = schema.TensorT()
        new.shape, new.shapeSignature, new.type, new.buffer = old.shape, old.shapeSignature, t.FLOAT32, 0
        new.name, old.name = old.name, old.name + b"_int8"
        sg.tensors.append(new)
        op = schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = opcode, [index], [len(sg.tensors) - 1]
        sg.operators.append(op)
        sg.outputs[k] = len(sg.tensors) - 1
        for sig in model.signatureDefs or []:
            for tm in sig.outputs:
                if tm.tensorIndex == index:
                    tm.tensorIndex = sg.outputs[k]
        renamed.append(new.name.decode())
    return renamed


def standard_metadata(model_bytes: bytes, card: ModelCard | Any, *, author: str = AUTHOR, license: str = LICENSE,
                      float_embedding: bool = True) -> bytes:  # fmt: skip
    """``model_bytes`` (a ``.tflite``) with TFLite Model Metadata and its labels file.

    ``card``: a `ModelCard`, or an ``ArtifactInfo`` (`ModelCard.from_artifact`). Every other
    metadata entry (our ``"mobilenets"`` JSON included) is kept, a previous ``TFLITE_METADATA``
    replaced, and any zip already on the end dropped (the flatbuffer is re-serialized) and
    rewritten. ``float_embedding``: apply `float_outputs` (the int8 embedding of int8 graphs),
    which MediaPipe needs.
    """
    import flatbuffers
    import numpy as np

    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MobilenetsError("writing .tflite metadata needs LiteRT: pip install 'mobilenets[tflite]'") from None
    if not isinstance(card, ModelCard):
        card = ModelCard.from_artifact(card)
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if float_embedding:
        float_outputs(model, schema)
    graph = graph_facts(model, schema)
    check_pixel_input(card, graph["input_dtype"], graph["input_quantization"])
    by_name = {name: role for role, name in card.outputs.items()}
    if not by_name:
        by_name = dict(zip(graph["output_names"], [PROBABILITIES, EMBEDDING] if card.labels else [EMBEDDING]))
    roles = [by_name.get(name, name) for name in graph["output_names"]]
    buf = schema.BufferT()
    buf.data = np.frombuffer(
        build_metadata(metadata_tables(card, graph, roles, author=author, license=license)), np.uint8
    )
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_KEY.encode(), len(model.buffers) - 1
    for m in model.metadata or []:
        if m.name == entry.name:  # the old one's buffer stays (indices must not move) but empty
            model.buffers[m.buffer].data = None
    model.metadata = [m for m in (model.metadata or []) if m.name != entry.name] + [entry]
    b = flatbuffers.Builder(len(model_bytes) + 4096)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    return pack_files(bytes(b.Output()), associated_files(card))
