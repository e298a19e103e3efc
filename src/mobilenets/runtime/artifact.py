"""What an exported artifact says about itself: the weights' contract, its outputs, its input tensor.

Every artifact `mobilenets export` writes carries one JSON document under the key
``"mobilenets"`` (a TFLite ``Metadata`` entry, an ONNX ``metadata_props`` entry): the
weights' `PretrainedCfg` (task, labels, preprocessing, ...), the declared outputs and the
file's tensor for each, the input layout, dtype and quantization. A consumer needs nothing
else.

Google's own ``.tflite`` files carry none of this; `foreign_tflite_info` reads what their
tensors say (size, dtype, quantization, output shapes) and assumes the release's contract:
classifiers and embedding extractors (inception preprocessing, ImageNet labels with
background for 1001 classes), the SSD detector (``TFLite_Detection_PostProcess``) and
the DeepLab segmenter.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, WeightsError
from ..models.cfg import OutputSpec, PretrainedCfg

METADATA_KEY = "mobilenets"
SCHEMA_VERSION = 2


class ArtifactError(WeightsError):
    """An exported artifact that is corrupt, foreign or meant for another backend."""


@dataclass
class ArtifactInfo:
    """The contract of one model file.

    ``tensors`` maps each declared output to the file's tensor name; ``transpose`` gives,
    per output, the axis order that turns the file's tensor into the declared shape
    (e.g. NHWC segmentation logits -> NCHW).
    """

    name: str
    format: str  # tflite | onnx
    cfg: PretrainedCfg
    outputs: tuple[OutputSpec, ...] = ()
    tensors: dict[str, str] = field(default_factory=dict)
    transpose: dict[str, list[int]] = field(default_factory=dict)
    layout: str = "NCHW"  # of the input tensor: NCHW (onnx) or NHWC (tflite)
    int8: bool = False
    input_dtype: str = "float32"  # float32 | int8 | uint8
    input_quantization: tuple[float, int] | None = None  # (scale, zero_point) for integer inputs
    quantization: dict[str, Any] | None = None  # how int8 weights/activations were made
    mobilenets_version: str | None = None
    schema: int = SCHEMA_VERSION

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    def to_json(self) -> str:
        d = {"name": self.name, "format": self.format, "cfg": self.cfg.as_dict(),
             "outputs": [o.as_dict() for o in self.outputs], "tensors": self.tensors, "transpose": self.transpose,
             "layout": self.layout, "int8": self.int8, "input_dtype": self.input_dtype,
             "input_quantization": list(self.input_quantization) if self.input_quantization else None,
             "quantization": self.quantization, "mobilenets_version": self.mobilenets_version, "schema": self.schema}  # fmt: skip
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> ArtifactInfo:
        try:
            d = json.loads(text)
            if not isinstance(d, dict):
                raise TypeError("not a JSON object")
            if d.get("schema") != SCHEMA_VERSION:
                raise ArtifactError(f"{where}: written by another mobilenets version (metadata schema "
                                    f"{d.get('schema')}, this one reads {SCHEMA_VERSION}): export it again")  # fmt: skip
            q = d.get("input_quantization")
            return cls(
                name=str(d["name"]), format=str(d["format"]), cfg=PretrainedCfg.from_dict(d["cfg"]),
                outputs=tuple(OutputSpec.from_dict(o) for o in d["outputs"]), tensors=dict(d["tensors"]),
                transpose={k: [int(a) for a in v] for k, v in (d.get("transpose") or {}).items()},
                layout=str(d["layout"]), int8=bool(d["int8"]), input_dtype=str(d["input_dtype"]),
                input_quantization=(float(q[0]), int(q[1])) if q else None, quantization=d.get("quantization"),
                mobilenets_version=d.get("mobilenets_version"),
            )  # fmt: skip
        except ArtifactError:
            raise
        except (ValueError, TypeError, KeyError, IndexError, ConfigError, UnicodeDecodeError) as e:
            raise ArtifactError(f"{where}: unreadable mobilenets metadata ({type(e).__name__}: {e})") from None


def artifact_format(path: str | os.PathLike) -> str | None:
    """'tflite' or 'onnx' by content (the TFLite identifier; ONNX by its suffix); None otherwise."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head[4:8] == b"TFL3":
        return "tflite"
    # ONNX is a bare protobuf with no magic number: trust the suffix, as every ONNX tool does.
    return "onnx" if path.suffix.lower() == ".onnx" else None


def read_onnx_info(path: str | os.PathLike) -> ArtifactInfo:
    """The metadata of a ``.onnx`` file written by `mobilenets export` (needs the ``onnx`` package)."""
    try:
        import onnx
    except ImportError:
        raise ArtifactError("reading .onnx files needs onnx: pip install 'mobilenets[onnx]'") from None
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, OSError, RuntimeError) as e:  # a damaged file
        raise ArtifactError(f"{path}: corrupt or truncated .onnx file ({type(e).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ArtifactError(f"{path}: an .onnx file without mobilenets metadata (export it with `mobilenets export`)")
    return ArtifactInfo.from_json(props[METADATA_KEY], str(path))


def read_tflite_info(path: str | os.PathLike) -> ArtifactInfo:
    """Our metadata from a ``.tflite`` file, or what a foreign (e.g. Google's) file's tensors say."""
    from ..weights.tflite import TFLiteGraph

    path = Path(path)
    graph = TFLiteGraph(path)
    ours = graph.metadata().get(METADATA_KEY)
    if ours is not None:
        return ArtifactInfo.from_json(ours, str(path))
    return foreign_tflite_info(graph)


def _io(graph, index: int) -> tuple[str, list[int], str | None]:
    import numpy as np

    t = graph.tensor(index)
    dtypes = {np.float32: "float32", np.uint8: "uint8", np.int8: "int8", np.int32: "int32"}
    return t.Name().decode('utf-8', 'replace'), [int(s) for s in t.ShapeAsNumpy()], dtypes.get(graph.np_types.get(t.Type()))


def foreign_tflite_info(graph) -> ArtifactInfo:
    """The contract of a Google ``.tflite`` we did not write, from its tensors (the releases' conventions)."""
    from ..data.labels import imagenet_labels, voc_labels
    from ..models.registry import default_cfg
    from ..weights.tflite import labels_from_metadata

    sg, path = graph.sg, graph.path
    if sg.InputsLength() != 1:
        raise ArtifactError(f"{path}: expected one image input, found {sg.InputsLength()}")
    _, shape, input_dtype = _io(graph, sg.Inputs(0))
    if len(shape) != 4 or shape[3] != 3 or shape[1] != shape[2]:
        raise ArtifactError(f"{path}: input shape {shape} is not a square N x H x W x 3 image")
    if input_dtype not in ("float32", "uint8", "int8"):
        raise ArtifactError(f"{path}: unsupported input tensor type {input_dtype}")
    res = shape[1]
    outs = [_io(graph, sg.Outputs(i)) for i in range(sg.OutputsLength())]
    file_labels = labels_from_metadata(graph)
    quant = "uint8-qat" if input_dtype != "float32" else None
    tensors: dict[str, str] = {}
    transpose: dict[str, list[int]] = {}
    from ..weights.ssd_tflite import detector_contract, is_detector_graph

    if is_detector_graph(graph) and len(outs) == 4:
        cfg = detector_contract(graph, file_labels)  # the file's input quantization and width, COCO labels
        post = cfg.arch_cfg["postprocess"]  # the op's outputs have no static shape: K comes from its options
        k = int(post["max_detections"]) * int(post["max_classes_per_detection"])
        names = ("boxes", "classes", "scores", "count")
        specs = (OutputSpec("boxes", (-1, k, 4), meaning="ymin, xmin, ymax, xmax in [0, 1]"),
                 OutputSpec("classes", (-1, k), meaning="class index (COCO id - 1)"),
                 OutputSpec("scores", (-1, k), meaning="detection scores"),
                 OutputSpec("count", (-1,), meaning="valid detections"))  # fmt: skip
        tensors = {n: o[0] for n, o in zip(names, outs)}
    elif len(outs) == 1 and len(outs[0][1]) == 4 and outs[0][1][1:3] == [res, res]:
        classes = outs[0][1][3]
        labels = file_labels or (voc_labels() if classes == 21 else None)
        specs = (OutputSpec("logits", (-1, classes, res, res), meaning="per-pixel class logits"),)
        tensors, transpose = {"logits": outs[0][0]}, {"logits": [0, 3, 1, 2]}
        cfg = PretrainedCfg(task="segment", arch="deeplabv3_mobilenet_v2", num_classes=classes, label_offset=0,
                            labels=tuple(labels) if labels else None, input_size=(3, res, res), crop_fraction=1.0,
                            quantization=quant, source=str(path))  # fmt: skip
    else:
        specs_l, num_classes = [], 0
        for name, oshape, _ in outs:
            width = oshape[-1]
            if width in (1000, 1001) and "probabilities" not in tensors:
                tensors["probabilities"], num_classes = name, width
                specs_l.append(OutputSpec("probabilities", (-1, width), meaning="softmax over the classes"))
            elif "embedding" not in tensors:
                tensors["embedding"] = name
                specs_l.append(OutputSpec("embedding", (-1, width), meaning="pooled pre-logits features"))
        if not tensors:
            raise ArtifactError(f"{path}: no output this package understands (shapes {[o[1] for o in outs]})")
        specs = tuple(specs_l)
        labels = file_labels or (imagenet_labels(num_classes) if num_classes else None)
        cfg = default_cfg(1.0, res, num_classes).replace(
            labels=tuple(labels) if labels else None, label_offset=1 if num_classes == 1001 else 0,
            quantization=quant, source=str(path), arch_cfg={})  # fmt: skip
    return ArtifactInfo(
        name=path.stem, format="tflite", cfg=cfg, outputs=specs, tensors=tensors, transpose=transpose, layout="NHWC",
        int8=input_dtype != "float32", input_dtype=input_dtype,
        input_quantization=graph.io_quantization(sg.Inputs(0)) if input_dtype != "float32" else None,
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
