"""What an exported artifact says about itself: model, labels, input contract, outputs.

Every artifact `mobilenets export` writes carries one JSON document under the key
``"mobilenets"`` (a TFLite ``Metadata`` entry, an ONNX ``metadata_props`` entry), so a
consumer needs nothing else: the class names, the input size and layout, the eval
preprocessing (central crop, then ``(x - mean) / std`` on [0, 1] values), the input
quantization of int8/uint8-input models, and which output is which.

Google's own ``.tflite`` files carry none of this; `foreign_tflite_info` reads what their
tensors say (size, dtype, quantization) and assumes the release's contract (inception
preprocessing, ImageNet labels with background for 1001 classes).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import WeightsError

METADATA_KEY = "mobilenets"
SCHEMA_VERSION = 1
PROBABILITIES, EMBEDDING = "probabilities", "embedding"


class ArtifactError(WeightsError):
    """An exported artifact that is corrupt, foreign or meant for another backend."""


@dataclass
class ArtifactInfo:
    """The contract of one exported model file."""

    name: str
    format: str  # tflite | onnx
    resolution: int
    num_classes: int
    num_features: int
    labels: list[str] | None = None
    has_background: bool = False
    crop_fraction: float = 0.875
    mean: float = 0.5
    std: float = 0.5
    layout: str = "NCHW"  # of the input tensor: NCHW (onnx) or NHWC (tflite)
    int8: bool = False
    input_dtype: str = "float32"  # float32 | int8 | uint8
    input_quantization: tuple[float, int] | None = None  # (scale, zero_point) for integer inputs
    outputs: dict[str, str] = field(default_factory=dict)  # PROBABILITIES / EMBEDDING -> tensor name
    alpha: float | None = None
    source: str | None = None
    quantization: dict[str, Any] | None = None  # how int8 weights/activations were made
    mobilenets_version: str | None = None
    schema: int = SCHEMA_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> ArtifactInfo:
        try:
            data = json.loads(text)
            if data.get("input_quantization") is not None:
                scale, zero = data["input_quantization"]
                data["input_quantization"] = (float(scale), int(zero))
            return cls(**data)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{where}: unreadable mobilenets metadata ({e})") from None


def artifact_format(path: str | os.PathLike) -> str | None:
    """'tflite' or 'onnx' by content (the TFLite identifier, or a protobuf with an ONNX graph); None otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return "tflite"
    # ONNX is a bare protobuf: field 1 (ir_version, varint) comes first in every exporter's output.
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":
        return "onnx" if path.suffix.lower() == ".onnx" else None
    return None


def read_onnx_info(path: str | os.PathLike) -> ArtifactInfo:
    """The metadata of a ``.onnx`` file written by `mobilenets export` (needs the ``onnx`` package)."""
    try:
        import onnx
    except ImportError:
        raise ArtifactError("reading .onnx files needs onnx: pip install 'mobilenets[onnx]'") from None
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError) as e:  # a damaged file
        raise ArtifactError(f"{path}: corrupt or truncated .onnx file ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError(f"{path}: an .onnx file without mobilenets metadata (export it with `mobilenets export`)")
    return ArtifactInfo.from_json(props[METADATA_KEY], str(path))


def read_tflite_info(path: str | os.PathLike) -> ArtifactInfo:
    """Our metadata from a ``.tflite`` file, or what a foreign (e.g. Google's) file's tensors say."""
    from ..weights.tflite import _Graph

    path = Path(path)
    graph = _Graph(path)
    ours = graph.metadata().get(METADATA_KEY)
    if ours is not None:
        return ArtifactInfo.from_json(ours, str(path))
    return foreign_tflite_info(graph)


def foreign_tflite_info(graph) -> ArtifactInfo:
    """The contract of a MobileNet ``.tflite`` we did not write, from its tensors (official release conventions)."""
    import numpy as np

    from ..data.labels import imagenet_labels
    from ..weights.tflite import _labels_from_metadata

    sg, path = graph.sg, graph.path
    if sg.InputsLength() != 1:
        raise ArtifactError(f"{path}: expected one image input, found {sg.InputsLength()}")
    inp = graph.tensor(sg.Inputs(0))
    shape = [int(s) for s in inp.ShapeAsNumpy()]
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ArtifactError(f"{path}: input shape {shape} is not a square N x H x W x 3 image")
    dtypes = {np.float32: "float32", np.uint8: "uint8", np.int8: "int8"}
    input_dtype = dtypes.get(graph.np_types.get(inp.Type()))
    if input_dtype is None:
        raise ArtifactError(f"{path}: unsupported input tensor type {inp.Type()}")
    outputs, num_classes, num_features = {}, 0, 0
    for i in range(sg.OutputsLength()):
        t = graph.tensor(sg.Outputs(i))
        width = int(t.ShapeAsNumpy()[-1])
        if width in (1000, 1001) and PROBABILITIES not in outputs:
            outputs[PROBABILITIES], num_classes = t.Name().decode(), width
        elif EMBEDDING not in outputs:
            outputs[EMBEDDING], num_features = t.Name().decode(), width
    labels = _labels_from_metadata(graph) or (imagenet_labels(num_classes) if num_classes else None)
    return ArtifactInfo(
        name=path.stem, format="tflite", resolution=shape[1], num_classes=num_classes, num_features=num_features,
        labels=labels, has_background=num_classes == 1001, layout="NHWC", int8=input_dtype != "float32",
        input_dtype=input_dtype, input_quantization=graph.io_quantization(sg.Inputs(0)) if input_dtype != "float32" else None,
        outputs=outputs, source=str(path),
    )  # fmt: skip


def read_artifact_info(path: str | os.PathLike) -> ArtifactInfo:
    """`ArtifactInfo` of a ``.tflite`` or ``.onnx`` file; `ArtifactError` if it is neither or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    fmt = artifact_format(path)
    if fmt == "tflite":
        return read_tflite_info(path)
    if fmt == "onnx":
        return read_onnx_info(path)
    raise ArtifactError(f"{path}: not a .tflite or .onnx model")
