"""Export an SSD detector the way Google ships one: the network, then ``TFLite_Detection_PostProcess``.

``.tflite`` (float, or int8 calibrated on the user's images): litert-torch converts only
the network (`RawDetector`: box encodings [1, A, 4] and sigmoid class scores [1, A, C],
background first), through the same path as every other model (`litert.convert_tflite`,
TF 'SAME' pads folded, uint8 input). The post-process is then appended by flatbuffer
surgery, as the TF OD API's export does: one CUSTOM op ``TFLite_Detection_PostProcess``
reading the two network outputs and a constant anchors tensor (float32 ``(yc, xc, h, w)``,
the model's own), with its settings as flexbuffer custom options (the keys and types of
Google's file), and its four outputs, named as Google's (``TFLite_Detection_PostProcess``,
``:1``, ``:2``, ``:3``: boxes, classes, scores, count), become the graph's outputs. Int8
network outputs are dequantized first (the op takes float). Standard TFLite Model
Metadata like Google's file (``locations`` with bounding-box properties, ``classes`` with
a ``labelmap.txt`` value-label file, ``scores``, ``number of detections``, the input's
normalization) lets LiteRT apps and MediaPipe's ObjectDetector take the file alone.

``.onnx``: the whole model, decoding and NMS included, as one graph. The NMS is the
PyTorch model's own (`models.ssd.greedy_nms`: TFLite's fast NMS, best class per anchor,
class-agnostic, ties to the lowest index) run for exactly ``max_detections`` rounds, so it
traces into plain tensor ops (ArgMax, IoU, masks; ~20 ops a round) with no data-dependent
branch; outputs are the same four, zero beyond ``count``. (ONNX's ``NonMaxSuppression``
is not used: its tie order and ``score > threshold`` differ from TFLite's.)

`detection_parity` matches an artifact's detections to the PyTorch model's by class and IoU.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, MobilenetsError
from ..models.cfg import OutputSpec
from ..runtime.artifact import METADATA_KEY, ArtifactInfo
from ..utils import atomic_write

POSTPROCESS_OP = "TFLite_Detection_PostProcess"
OUTPUT_TENSORS = (POSTPROCESS_OP, f"{POSTPROCESS_OP}:1", f"{POSTPROCESS_OP}:2", f"{POSTPROCESS_OP}:3")
LABELMAP_FILE = "labelmap.txt"


def is_detector(model: nn.Module) -> bool:
    """Whether ``model`` is an SSD whose export needs the post-process op (what `export_model` routes here)."""
    return getattr(getattr(model, "pretrained_cfg", None), "task", None) == "detect" and hasattr(model, "raw")


class RawDetector(nn.Module):
    """The network of an SSD without its post-process: what litert-torch converts.

    Declares, per feature map ``i``, ``box_encodings_i`` [N, A_i, 4] and ``class_scores_i``
    [N, A_i, C] (sigmoids, background first), so `models.deploy.DeployModule` fuses and wraps
    it like any task model. The maps stay separate outputs: concatenated inside an int8 graph,
    they would share the quantization range the converter gives the last (smallest) map, and
    the larger maps' logits and box codes would saturate. `append_postprocess` concatenates
    them in float.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.pretrained_cfg = model.pretrained_cfg
        res = tuple(model.pretrained_cfg.input_size[1:])
        counts = [h * w * a for (h, w), a in zip(model.grid_sizes(res), model.anchor_generator.num_anchors_per_location())]
        boxes = tuple(OutputSpec(f"box_encodings_{i}", (-1, a, 4)) for i, a in enumerate(counts))
        scores = tuple(OutputSpec(f"class_scores_{i}", (-1, a, model.num_classes)) for i, a in enumerate(counts))
        self.outputs = boxes + scores

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.model.forward_features(x)
        out = {}
        for i, (p, m) in enumerate(zip(self.model.box_predictors.values(), maps)):
            box, logits = p(m)
            out[f"box_encodings_{i}"] = box
            out[f"class_scores_{i}"] = self.model.score_converter(logits)
        return out


def postprocess_options(model: nn.Module) -> dict:
    """The op's flexbuffer custom options for ``model``'s `PostProcess` and box coder (Google's keys and types)."""
    post = model.postprocess
    sy, sx, sh, sw = model.box_coder.scales
    opts = {"max_detections": int(post.max_detections), "max_classes_per_detection": int(post.max_classes_per_detection),
            "nms_iou_threshold": float(post.nms_iou_threshold), "nms_score_threshold": float(post.nms_score_threshold),
            "num_classes": int(post.num_classes), "y_scale": float(sy), "x_scale": float(sx), "h_scale": float(sh),
            "w_scale": float(sw)}  # fmt: skip
    if post.use_regular_nms:
        opts.update(use_regular_nms=True, detections_per_class=int(post.detections_per_class))
    return opts


def append_postprocess(fb, model: nn.Module) -> list[str]:
    """Add ``TFLite_Detection_PostProcess`` after the two network outputs of ``fb``; returns the new output names."""
    from flatbuffers import flexbuffers

    from .tflite_metadata import float_outputs

    s, sg, m = fb.schema, fb.sg, fb.model
    n_maps = len(model.box_predictors)
    if len(sg.outputs) != 2 * n_maps:
        raise MobilenetsError(f"an SSD network graph has {2 * n_maps} outputs (boxes, scores per map), "
                              f"got {len(sg.outputs)}")  # fmt: skip
    float_outputs(m, s)  # the op reads float encodings and scores
    res = tuple(model.pretrained_cfg.input_size[1:])
    anchors = model.anchors_for(res).numpy().astype(np.float32)

    def concat(inputs: list[int], width: int, name: bytes) -> int:
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = [1, anchors.shape[0], width], s.TensorType.FLOAT32, 0, name
        sg.tensors.append(t)
        op = s.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = fb.opcode("CONCATENATION"), list(inputs), [len(sg.tensors) - 1]
        op.builtinOptionsType = s.BuiltinOptions.ConcatenationOptions
        op.builtinOptions = s.ConcatenationOptionsT()
        op.builtinOptions.axis = 1
        sg.operators.append(op)
        return len(sg.tensors) - 1

    pieces = list(sg.outputs)
    if sum(int(sg.tensors[i].shape[1]) for i in pieces[:n_maps]) != anchors.shape[0]:
        raise MobilenetsError(f"box encodings do not fit the model's {anchors.shape[0]} anchors")
    box = concat(pieces[:n_maps], 4, b"concat")
    scores = concat(pieces[n_maps:], int(sg.tensors[pieces[n_maps]].shape[2]), b"concat_1")

    buf = s.BufferT()
    buf.data = np.frombuffer(anchors.tobytes(), np.uint8)
    m.buffers.append(buf)
    t = s.TensorT()
    t.shape, t.type, t.buffer, t.name = list(anchors.shape), s.TensorType.FLOAT32, len(m.buffers) - 1, b"anchors"
    sg.tensors.append(t)
    anchor_index = len(sg.tensors) - 1

    k = model.postprocess.detections_per_image
    outs = []
    for name, shape in zip(OUTPUT_TENSORS, ([1, k, 4], [1, k], [1, k], [1])):
        o = s.TensorT()
        o.shape, o.type, o.buffer, o.name = shape, s.TensorType.FLOAT32, 0, name.encode()
        sg.tensors.append(o)
        outs.append(len(sg.tensors) - 1)

    oc = s.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = s.BuiltinOperator.CUSTOM
    oc.customCode, oc.version = POSTPROCESS_OP.encode(), 1
    m.operatorCodes.append(oc)
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = len(m.operatorCodes) - 1, [box, scores, anchor_index], outs
    op.customOptions = np.frombuffer(bytes(flexbuffers.Dumps(postprocess_options(model))), np.uint8)
    op.customOptionsFormat = s.CustomOptionsFormat.FLEXBUFFERS
    sg.operators.append(op)
    sg.outputs = outs
    for sig in m.signatureDefs or []:
        maps = []
        for name, index in zip(OUTPUT_TENSORS, outs):
            tm = s.TensorMapT()
            tm.name, tm.tensorIndex = name.encode(), index
            maps.append(tm)
        sig.outputs = maps
    return list(OUTPUT_TENSORS)


# --- standard metadata ----------------------------------------------------------------------------


def detector_metadata(model_bytes: bytes, info: ArtifactInfo) -> bytes:
    """``model_bytes`` with TFLite Model Metadata laid out as Google's SSD file's, plus ``labelmap.txt``.

    One label per class without background (line ``k`` = class ``k``; unused COCO ids are
    ``???`` as in Google's map): MediaPipe and the Task Library name ``classes`` from it.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    from .tflite_metadata import (
        FEATURE_PROPERTIES,
        IMAGE_PROPERTIES,
        NORMALIZATION_OPTIONS,
        RGB,
        TFLITE_METADATA_KEY,
        ModelCard,  # fmt: skip
        Table,
        build_metadata,
        check_pixel_input,
        graph_facts,
        pack_files,
    )

    cfg = info.cfg
    card = ModelCard.from_artifact(info)
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = graph_facts(model, schema)
    check_pixel_input(card, graph["input_dtype"], graph["input_quantization"])
    mean = [255.0 * float(v) for v in cfg.mean][:1] if len(set(cfg.mean)) == 1 else [255.0 * float(v) for v in cfg.mean]
    std = [255.0 * float(v) for v in cfg.std][:1] if len(set(cfg.std)) == 1 else [255.0 * float(v) for v in cfg.std]
    r = cfg.resolution
    image = Table(
        "TensorMetadata", name="image",
        description=f"RGB image {r} x {r} ({graph['input_dtype']}): the whole image resized, (pixel - mean) / std.",
        content=Table("Content", content_properties_type=IMAGE_PROPERTIES,
                      content_properties=Table("ImageProperties", color_space=RGB)),
        process_units=[Table("ProcessUnit", options_type=NORMALIZATION_OPTIONS,
                             options=Table("NormalizationOptions", mean=mean, std=std))],
        stats=Table("Stats", min=[0.0], max=[255.0]) if graph["input_dtype"] == "uint8" else None,
    )  # fmt: skip

    def feature(name: str, description: str, **kw) -> Table:
        return Table("TensorMetadata", name=name, description=description,
                     content=Table("Content", content_properties_type=FEATURE_PROPERTIES,
                                   content_properties=Table("FeatureProperties")), **kw)  # fmt: skip

    labels = class_labels(cfg)
    files = [Table("AssociatedFile", name=LABELMAP_FILE, type=TENSOR_VALUE_LABELS,
                   description="Label of objects that this model can recognize.")] if labels else None  # fmt: skip
    outputs = [
        Table("TensorMetadata", name="locations", description="The locations of the detected boxes.",
              content=Table("Content", content_properties_type=BOUNDING_BOX_PROPERTIES,
                            content_properties=Table("BoundingBoxProperties", index=[1, 0, 3, 2], type=BOUNDARIES,
                                                     coordinate_type=RATIO),
                            range=Table("ValueRange", min=2, max=2))),
        feature("classes", "The classes of the detected boxes.", associated_files=files),
        feature("scores", "The scores of the detected boxes."),
        feature("number of detections", "The number of the detected boxes."),
    ]  # fmt: skip
    precision = "full-integer int8" if graph["int8"] else "float32"
    root = Table(
        "ModelMetadata", name=info.name,
        description=f"SSD-MobileNet-v1 object detector ({precision}, width {cfg.arch_cfg.get('alpha', 1.0):g}, "
                    f"{r} x {r} input) with TFLite_Detection_PostProcess.",
        version=info.mobilenets_version, author="mobilenets",
        license="Apache License. Version 2.0 http://www.apache.org/licenses/LICENSE-2.0.",
        subgraph_metadata=[Table("SubGraphMetadata", input_tensor_metadata=[image], output_tensor_metadata=outputs)],
        min_parser_version="1.0.0",
    )  # fmt: skip
    buf = schema.BufferT()
    buf.data = np.frombuffer(build_metadata(root), np.uint8)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name, entry.buffer = TFLITE_METADATA_KEY.encode(), len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != entry.name] + [entry]
    b = flatbuffers.Builder(len(model_bytes) + 4096)
    b.Finish(model.Pack(b), file_identifier=b"TFL3")
    files_out = {LABELMAP_FILE: ("\n".join(labels) + "\n").encode()} if labels else {}
    return pack_files(bytes(b.Output()), files_out)


# metadata_schema.fbs enums used above
TENSOR_VALUE_LABELS = 3  # AssociatedFileType
BOUNDING_BOX_PROPERTIES = 3  # ContentProperties union
BOUNDARIES = 1  # BoundingBoxType
RATIO = 0  # CoordinateType


def class_labels(cfg) -> list[str] | None:
    """One name per reported class (background dropped), COCO's unused ids as ``???`` like Google's label map."""
    if not cfg.labels:
        return None
    names = list(cfg.labels)[cfg.label_offset :]
    return ["???" if n == "n/a" else n for n in names]


# --- .tflite ----------------------------------------------------------------------------------------


def file_activation_ranges(model: nn.Module) -> dict[str, tuple[float, float]] | None:
    """``{module: (min, max)}`` of the uint8 grids of the quantized file ``model`` was read from, else None.

    Each conv's own output grid (`weights.ssd_tflite.load_ssd` records them): an int8 export
    that uses them puts every activation on the file's grid (int8 zero point = uint8 - 128).
    """
    info = getattr(model, "file_info", None)
    grids = getattr(info, "meta", {}).get("activation_quant") if info is not None else None
    if not grids:
        return None
    return {name: (-zero * scale, (255 - zero) * scale) for name, qs in grids.items() if qs
            for scale, zero in qs[:1] if name != "score_converter"}  # fmt: skip


def file_weight_ranges(model: nn.Module) -> dict[str, np.ndarray] | None:
    """``{module: per-channel max |w|}`` that keep the quantized file's weights exact in symmetric int8.

    The file's weights are ``(q - z) * s`` with one scale per tensor; a channel whose
    ``|q - z|`` stays within 127 gets range ``127 s`` (int8 scale ``s``: its weights are
    exact), the others (~0.6% in Google's COCO file) their own max (one rounding each).
    """
    info = getattr(model, "file_info", None)
    arith = getattr(info, "meta", {}).get("conv_arithmetic") if info is not None else None
    if not arith:
        return None
    from ..weights.ssd_tflite import conv_of

    out = {}
    for name, a in arith.items():
        w = conv_of(model.get_submodule(name)).weight.detach().double()
        scale = torch.tensor(a.weight_scale, dtype=torch.float64).view(-1, *([1] * (w.dim() - 1)))
        steps = torch.round(w / scale).abs().flatten(1).amax(1).clamp_min(127)
        out[name] = (steps * scale.flatten()).numpy()
    return out


# A sigmoid score of 0.95: class logits up to it stay representable in a calibrated int8 export.
SCORE_LOGIT_COVER = math.log(0.95 / 0.05)


def class_logit_cover(model: nn.Module) -> dict[str, tuple[None, float]]:
    """``{class predictor: (None, logit of 0.95)}``: the calibrated range of each class logit map reaches it.

    A class predictor's calibrated maximum is the most confident detection the calibration
    images hold on its feature map; a few images may have none there (coco8's 4 training
    images top out at score 0.36 on the 19 x 19 map), and every score above would be clipped
    to it. Widening the top to a sigmoid of 0.95 costs a coarser step (about 1.3x here).
    """
    if not isinstance(getattr(model, "score_converter", None), nn.Sigmoid):
        return {}
    return {f"box_predictors.{key}.ClassPredictor": (None, SCORE_LOGIT_COVER) for key in model.box_predictors}


def export_detector_tflite(model: nn.Module, out: str | os.PathLike, info: ArtifactInfo,
                           calibration: np.ndarray | None = None, input_dtype: str = "uint8",
                           file_ranges: bool = False, bias_correction: bool = True) -> ArtifactInfo:  # fmt: skip
    """Write an SSD as ``.tflite``: network (int8 when ``calibration`` is given) + the post-process op + metadata.

    ``file_ranges``: int8 activations on the grids of the quantized file the model was read
    from (`file_activation_ranges`) instead of the calibrated ranges (the input's stays
    calibrated), and its weights exact where symmetric int8 holds them (`file_weight_ranges`).
    Otherwise the calibrated ranges of the class logits reach a score of 0.95
    (`class_logit_cover`) and, with ``bias_correction``, the weight rounding is bias-corrected
    (`quantize.correct_weight_rounding`).
    """
    from .litert import Flatbuffer, add_metadata, convert_tflite, input_contract

    raw = RawDetector(model)
    ranges = weight_ranges = None
    if file_ranges:
        ranges, weight_ranges = file_activation_ranges(model), file_weight_ranges(model)
        if ranges is None or calibration is None:
            raise ConfigError("file_ranges needs calibration images (int8) and a model read from a quantized "
                              "file (weights.ssd_tflite.load_ssd)")  # fmt: skip
    # Calibrated: class logits kept representable up to a score of 0.95, weight rounding
    # bias-corrected. On the file's grids the weights are the file's own (exact in all but
    # ~0.6% of channels) and the activations on the grids it was trained for; correcting the
    # few rounded channels measured within noise there (94.3% vs 94.0% of detections on 93
    # photos, 32 vs 34 of 36 on coco8 val).
    cover = class_logit_cover(model) if calibration is not None and not file_ranges else None
    bias_correction = bias_correction and not file_ranges
    fb = Flatbuffer(convert_tflite(raw, info.cfg.input_size, calibration, ranges, weight_ranges, cover,
                                   bias_correction=bias_correction))  # fmt: skip
    input_contract(fb, info, calibration, input_dtype, bias_correction)
    if ranges:
        info.quantization = {**(info.quantization or {}), "activation_ranges": "the imported file's uint8 grids"}
    names = append_postprocess(fb, model)
    info.tensors = {spec.name: name for spec, name in zip(info.outputs, names)}
    add_metadata(fb, METADATA_KEY, info.to_json().encode())
    data = detector_metadata(fb.serialize(), info)
    with atomic_write(out) as tmp:
        tmp.write_bytes(data)
    return info


# --- .onnx ------------------------------------------------------------------------------------------


def export_detector_onnx(model: nn.Module, out: str | os.PathLike, info: ArtifactInfo) -> ArtifactInfo:
    """Write an SSD as ``.onnx`` with decoding and NMS inside the graph (float, any batch size)."""
    import tempfile
    import warnings

    from .onnx import INPUT_NAME, OPSET, require_onnx

    onnx, ort = require_onnx()
    from ..models.deploy import fuse_for_inference

    post = model.postprocess
    if post.use_regular_nms:
        raise ConfigError("the ONNX export implements fast NMS (use_regular_nms=False) only")
    fused = fuse_for_inference(model, info.cfg.input_size)
    fused.postprocess.traceable = True  # the fixed-round greedy NMS: traces into plain tensor ops
    fused.anchors_for(tuple(info.cfg.input_size[1:]))  # generated now: a constant of the graph
    wrapper = _DictToTuple(fused).eval()
    names = [o.name for o in info.outputs]
    info.layout, info.int8, info.input_dtype, info.input_quantization = "NCHW", False, "float32", None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, (torch.zeros(1, *info.cfg.input_size),), str(raw), input_names=[INPUT_NAME],
                              output_names=names, opset_version=OPSET, dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]})  # fmt: skip
        optimized = Path(tmp) / "opt.onnx"
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        so.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(raw), so, providers=["CPUExecutionProvider"])
        proto = onnx.load(str(optimized))
    info.tensors = {n: n for n in names}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, info.to_json()
    proto.producer_name = "mobilenets"
    with atomic_write(out) as tmp_out:
        onnx.save(proto, str(tmp_out))
    return info


class _DictToTuple(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = [o.name for o in model.outputs]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model.predict(x)
        return tuple(out[n] for n in self.names)


# --- routing and parity -------------------------------------------------------------------------------


def export_detector(model: nn.Module, fmt: str, out: str | os.PathLike, info: ArtifactInfo,
                    calibration: np.ndarray | None = None, input_dtype: str = "uint8",
                    file_ranges: bool = False, bias_correction: bool = True) -> ArtifactInfo:  # fmt: skip
    """`export_model` for an SSD: ``.tflite`` with the post-process op, or ``.onnx`` with NMS inside (float only)."""
    if fmt == "tflite":
        return export_detector_tflite(model, out, info, calibration, input_dtype, file_ranges, bias_correction)
    if calibration is not None:
        raise ConfigError("an int8 .onnx detector is not supported: export float .onnx, or int8 .tflite")
    return export_detector_onnx(model, out, info)


def match_detections(ref: dict[str, np.ndarray], got: dict[str, np.ndarray], min_score: float = 0.3,
                     ious: tuple[float, ...] = (0.5, 0.8, 0.9, 0.99), score_tol: float | None = None) -> dict:  # fmt: skip
    """Match every reference detection (score >= ``min_score``) to one of ``got`` of the same class, per image.

    Returns ``{"n": reference detections, "iou>=t": share with a same-class match at IoU >= t
    (and, with ``score_tol``, a score within it), "score_diff": largest |score difference| of
    the best-IoU matches at IoU >= 0.5}``.
    """
    from ..models.ssd import box_iou_one_to_many

    hits = {t: 0 for t in ious}
    n, diffs = 0, []
    for i in range(len(ref["count"])):
        n_ref, n_got = round(float(ref["count"][i])), round(float(got["count"][i]))
        gb = torch.from_numpy(np.ascontiguousarray(got["boxes"][i][:n_got], np.float32))
        for j in range(n_ref):
            if ref["scores"][i, j] < min_score:
                continue
            n += 1
            same = np.flatnonzero(got["classes"][i][:n_got] == ref["classes"][i, j])
            if not len(same):
                continue
            rb = torch.from_numpy(np.ascontiguousarray(ref["boxes"][i, j : j + 1], np.float32))
            iou = box_iou_one_to_many(rb, gb[same][None])[0].numpy()
            diff = np.abs(got["scores"][i, same].astype(np.float64) - float(ref["scores"][i, j]))
            ok = np.ones(len(same), bool) if score_tol is None else diff <= score_tol
            for t in ious:
                hits[t] += bool(np.any((iou >= t) & ok))
            k = int(iou.argmax())
            if iou[k] >= 0.5:
                diffs.append(float(diff[k]))
    out = {"n": n, **{f"iou>={t:g}": hits[t] / n if n else 1.0 for t in ious}}
    out["score_diff"] = max(diffs) if diffs else 0.0
    return out


def detection_parity(artifact: str | os.PathLike, model: nn.Module, images: np.ndarray, source: str,
                     threads: int | None = None, min_score: float = 0.3):  # fmt: skip
    """`ParityReport` of a detector artifact: its detections matched to the PyTorch model's by class and IoU."""
    from ..runtime import artifact_format, open_backend
    from . import ParityReport

    backend = "litert" if artifact_format(artifact) == "tflite" else "onnxruntime"
    predictor = open_backend(backend, artifact, threads=threads)
    model = model.eval()
    refs, gots = [], []
    for i in range(0, len(images), 8):
        batch = images[i : i + 8]
        gots.append(predictor.run(batch))
        with torch.inference_mode():
            refs.append({k: v.numpy() for k, v in model.predict(torch.from_numpy(batch)).items()})
    ref = {k: np.concatenate([r[k] for r in refs]) for k in refs[0]}
    got = {k: np.concatenate([g[k] for g in gots]) for k in gots[0]}
    m = match_detections(ref, got, min_score)
    agreement = {f"same class & IoU{k[3:]} (of {m['n']} scoring >= {min_score:g})": v for k, v in m.items()
                 if k.startswith("iou")}  # fmt: skip
    diffs = {"scores (matched)": m["score_diff"], "count": float(np.abs(ref["count"] - got["count"]).max())}
    return ParityReport(len(images), source, diffs, None, agreement)
