"""Read TF1 detection-zoo SSD-MobileNet-v1 checkpoints (TF Object Detection API) without TensorFlow.

For the ``model.ckpt`` of ``ssd_mobilenet_v1_coco_2018_01_28`` and
``ssd_mobilenet_v1_quantized_300x300_coco14_sync_2018_07_18`` (and training checkpoints of
the same ``ssd_mobilenet_v1`` meta-architecture). The tensor bundle is read by
`slim_ckpt.open_checkpoint` (sizes and CRC32C checked).

Name map: the inverse of `models.ssd.tf_od_name_map` (``TF_OD_NAME_RULES``) for the model
the checkpoint describes: ``FeatureExtractor/MobilenetV1/Conv2d_N_{depthwise,pointwise}/...``,
the extra layers ``FeatureExtractor/MobilenetV1/Conv2d_13_pointwise_{1,2}_Conv2d_k_...`` and
``BoxPredictor_i/{BoxEncodingPredictor,ClassPredictor}/{weights,biases}``. Layouts as in
`slim_ckpt.tf_to_torch`: HWIO kernels -> OIHW, depthwise HWCM -> (C*M, 1, kh, kw);
``BatchNorm/{gamma,beta,moving_mean,moving_variance}`` -> our BN; a missing gamma
(``scale: false``) is 1.

What the file decides: the width multiplier and min depth (the 14 backbone depths, OD API
rule ``max(int(d * alpha), min_depth)``, min depth 16 first), the anchors per location
(box outputs / 4), the classes per anchor with background (class outputs / anchors) and the
predictor kernel. The anchors must be the default ``ssd_anchor_generator``'s (3, then 6 per
location); anything else, or variables of another network, is refused in one line.

Read and ignored: ``ExponentialMovingAverage`` shadows replace their variables by default
(the OD API's eval with ``use_moving_average``; ``use_ema=False`` reads the raw values),
optimizer slots (``RMSProp``, ``Momentum``, ``Adam``...), ``global_step`` and the fake-quant
ranges of quantization-aware training (``.../weights_quant/{min,max}``, ``.../act_quant/{min,
max}`` and their moving averages' ``biased``/``local_step``). So the quantized zoo checkpoint
loads as float weights: its QAT ranges are not used (quantize the model again, or use
Google's ``.tflite``, for integer inference). Other bookkeeping is skipped too, but a
weight-like variable (``weights``, ``biases``, ``BatchNorm/...``) in the feature extractor or
a box predictor that the model has no place for means another variant of the network
(e.g. ``use_depthwise`` extra layers) and is refused. The counts of what was skipped are in
``LoadedWeights.meta["skipped"]``.

Post-processing is the model's default (that of ``export_tflite_ssd_graph``: fast NMS, 10
detections): a checkpoint does not record its pipeline's ``post_processing``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import WeightsError
from ..models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS
from ..models.ssd import (
    SSD_FEATURE_MAPS,
    SSD_MIN_DEPTH,
    TF_OD_FEATURE_SCOPE,
    AnchorGenerator,
    SSDMobileNetV1,
    default_ssd_cfg,
    ssd_depth,
    tf_od_name_map,
)
from . import LoadedWeights
from .slim_ckpt import EMA_SUFFIX, Checkpoint, open_checkpoint, tf_to_torch

_FIRST = f"{TF_OD_FEATURE_SCOPE}/Conv2d_0/weights"
_PREDICTOR = re.compile(r"^BoxPredictor_(\d+)/(BoxEncodingPredictor|ClassPredictor)/(weights|biases)$")
_OPTIMIZER = re.compile(r"/(RMSProp|Momentum|Adam|Adagrad|AdagradDA|Ftrl|Adadelta|ProximalAdagrad)(_\d+)?$"
                        r"|^(beta1_power|beta2_power)$")  # fmt: skip
# contrib.quantize scopes (weights_quant, act_quant): their min/max, and the min/max moving averages'
# bookkeeping (``.../act_quant/<scope>/act_quant/min/biased``, ``.../local_step``)
_QUANT = re.compile(r"(^|/)\w*_quant/")
# What a layer of another variant of the network holds; other unknown names are bookkeeping.
_WEIGHT_LIKE = re.compile(r"/(weights|depthwise_weights|biases|BatchNorm/(gamma|beta|moving_mean|moving_variance))$")
_BODY = ["Conv2d_0"] + [f"Conv2d_{i}_pointwise" for i in range(1, 14)]


def is_ssd_checkpoint(entries: Mapping[str, object]) -> bool:
    """Whether a checkpoint's variables are an OD API SSD over MobileNet v1 (what `read_weights` sends here)."""
    return _FIRST in entries and any(_PREDICTOR.match(k) for k in entries)


def is_od_api_checkpoint(entries: Mapping[str, object]) -> bool:
    """Whether a checkpoint comes from the TF Object Detection API (``FeatureExtractor/`` variables): an SSD-MobileNet-v1
    or another detector, which `read_ssd_checkpoint` names in one line."""
    return any(k.startswith("FeatureExtractor/") for k in entries)


def skipped_kind(name: str) -> str:
    """Why a variable no model key reads is skipped: ``ema``, ``optimizer``, ``quantization``, ``global_step`` or ``other``."""
    if name.endswith(EMA_SUFFIX):
        return "ema"
    if _OPTIMIZER.search(name):
        return "optimizer"
    if _QUANT.search(name):
        return "quantization"
    return "global_step" if name == "global_step" else "other"


def _not_ssd(ckpt: Checkpoint) -> WeightsError:
    names = ckpt.entries
    scopes = sorted({k.split("/")[1] for k in names if k.startswith("FeatureExtractor/") and k.count("/") > 1})
    if any(k.startswith("MobilenetV1/") for k in names):
        what = "a TF-Slim MobileNet v1 classifier checkpoint, not an SSD detector"
    elif scopes and scopes != ["MobilenetV1"]:
        what = f"an OD API checkpoint of another backbone (FeatureExtractor/{scopes[0]}), not SSD-MobileNet-v1"
    elif scopes:
        heads = sorted({k.split("/")[0] for k in names if not k.startswith("FeatureExtractor/") and "/" in k})
        what = (f"an OD API MobileNet v1 checkpoint without BoxPredictor_k/ (has {', '.join(heads[:2]) or 'no head'}): "
                "another meta-architecture than ssd_mobilenet_v1")  # fmt: skip
    else:
        sample = ", ".join(sorted(names)[:3]) or "no variables"
        what = f"not an SSD-MobileNet-v1 checkpoint (no {_FIRST}; has {sample})"
    return WeightsError(f"{ckpt.index}: {what}")


def _fit_width(ckpt: Checkpoint) -> tuple[float, int]:
    """``(alpha, min_depth)`` reproducing the 14 backbone depths (min depth 16, the OD API's, first)."""
    try:
        depths = [ckpt.shape(f"{TF_OD_FEATURE_SCOPE}/{n}/weights")[-1] for n in _BODY]
    except KeyError as e:
        raise WeightsError(
            f"{ckpt.index}: SSD-MobileNet-v1 variable missing from the checkpoint: {e.args[0]}"
        ) from None
    ratio = depths[-1] / 1024
    for min_depth in (SSD_MIN_DEPTH, 8):
        for cand in (round(ratio, 2), round(ratio, 4), ratio):
            if [ssd_depth(d.depth, cand, min_depth) for d in MOBILENET_V1_CONV_DEFS] == depths:
                return cand, min_depth
    raise WeightsError(f"{ckpt.index}: backbone depths {depths} fit no MobileNet v1 width multiplier")


def _head_shape(ckpt: Checkpoint) -> tuple[list[int], int, int]:
    """``(anchors per location, classes per anchor with background, predictor kernel)`` from the predictors."""
    n_maps = len(SSD_FEATURE_MAPS)
    found = {int(m.group(1)) for m in map(_PREDICTOR.match, ckpt.entries) if m}
    if found != set(range(n_maps)):
        raise WeightsError(f"{ckpt.index}: box predictors {sorted(found)}; ssd_mobilenet_v1 has BoxPredictor_0.."
                           f"{n_maps - 1}")  # fmt: skip
    anchors, classes, kernels = [], set(), set()
    for i in range(n_maps):
        try:
            box = ckpt.shape(f"BoxPredictor_{i}/BoxEncodingPredictor/weights")
            cls = ckpt.shape(f"BoxPredictor_{i}/ClassPredictor/weights")
        except KeyError as e:
            raise WeightsError(f"{ckpt.index}: SSD variable missing from the checkpoint: {e.args[0]}") from None
        if len(box) != 4 or len(cls) != 4 or box[-1] % 4:
            raise WeightsError(f"{ckpt.index}: BoxPredictor_{i} kernels of shape {list(box)} / {list(cls)}")
        a = box[-1] // 4
        if cls[-1] % a:
            raise WeightsError(f"{ckpt.index}: BoxPredictor_{i} has {cls[-1]} class outputs for {a} anchors")
        anchors.append(a)
        classes.add(cls[-1] // a)
        kernels.add(box[0])
    if len(classes) != 1 or len(kernels) != 1:
        raise WeightsError(
            f"{ckpt.index}: box predictors disagree on classes {sorted(classes)} / kernels {sorted(kernels)}"
        )
    return anchors, classes.pop(), kernels.pop()


def _torch_shape(name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape `tf_to_torch` gives a variable of TF shape ``shape`` (checked before reading its bytes)."""
    if name.endswith("depthwise_weights") and len(shape) == 4:
        return (shape[2] * shape[3], 1, shape[0], shape[1])
    return (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else tuple(shape)


def read_ssd_checkpoint(path: str | Path | Checkpoint, use_ema: bool = True) -> LoadedWeights:
    """Weights of a TF OD API SSD-MobileNet-v1 checkpoint as `LoadedWeights` with its contract (module docstring).

    Args:
        path: the checkpoint prefix (``.../model.ckpt``), its ``.index``, a data shard, or an opened `Checkpoint`.
        use_ema: read ``ExponentialMovingAverage`` shadows where the checkpoint has them.
    """
    ckpt = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    if not is_ssd_checkpoint(ckpt.entries):
        raise _not_ssd(ckpt)
    alpha, min_depth = _fit_width(ckpt)
    anchors, num_classes, kernel = _head_shape(ckpt)
    if num_classes < 2:
        raise WeightsError(f"{ckpt.index}: {num_classes} class output(s) per anchor; SSD needs background + classes")
    generator = AnchorGenerator()
    if generator.num_anchors_per_location() != anchors:
        raise WeightsError(f"{ckpt.index}: {anchors} anchors per location; the SSD anchor generator makes "
                           f"{generator.num_anchors_per_location()}")  # fmt: skip
    with torch.device("meta"):  # names and shapes only
        model = SSDMobileNetV1(alpha, num_classes, min_depth, anchor_generator=generator, predictor_kernel=kernel)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    names = tf_od_name_map(model)

    wanted = set(names.values())
    for name in sorted(ckpt.entries):
        if name in wanted or skipped_kind(name) != "other":
            continue
        if name.startswith(("FeatureExtractor/", "BoxPredictor_")) and _WEIGHT_LIKE.search(name):
            raise WeightsError(f"{ckpt.index}: {name} is not a variable of ssd_mobilenet_v1 (alpha {alpha:g}): "
                               "another variant of the network")  # fmt: skip

    missing = [t for o, t in names.items() if t not in ckpt.entries and not o.endswith("bn.weight")]
    if missing:
        raise WeightsError(f"{ckpt.index}: SSD-MobileNet-v1 variables missing from the checkpoint: {missing[0]}"
                           + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))  # fmt: skip
    state: dict[str, torch.Tensor] = {}
    averaged = 0
    for ours, theirs in names.items():
        if theirs not in ckpt.entries:  # a BatchNorm gamma (scale: false)
            continue
        recorded = ckpt.shape(theirs)
        if _torch_shape(theirs, recorded) != shapes[ours]:
            raise WeightsError(f"{ckpt.index}: {theirs} has shape {list(recorded)}, ssd_mobilenet_v1 (alpha "
                               f"{alpha:g}) needs {list(shapes[ours])} in our layout")  # fmt: skip
        value, shadow = ckpt.read_averaged(theirs, use_ema)
        averaged += shadow
        state[ours] = tf_to_torch(theirs, value)
    for key in [k for k in names if k.endswith("bn.bias")]:
        state.setdefault(key[: -len("bias")] + "weight", torch.ones_like(state[key]))  # scale: false -> gamma 1

    used = {theirs for theirs in names.values() if theirs in ckpt.entries}
    used |= {n + EMA_SUFFIX for n in used if use_ema and n + EMA_SUFFIX in ckpt.entries}
    skipped: dict[str, int] = {}
    for name in ckpt.entries:
        if name not in used:
            kind = skipped_kind(name)
            skipped[kind] = skipped.get(kind, 0) + 1
    cfg = default_ssd_cfg(alpha, num_classes, min_depth, source=str(ckpt.prefix), arch_cfg=model.arch_cfg())
    meta = {"ema": averaged > 0, "ema_tensors": averaged, "skipped": skipped}
    return LoadedWeights(state, alpha, num_classes, None, str(ckpt.prefix), "ssd-ckpt",
                         list(cfg.labels) if cfg.labels else None, meta, cfg)  # fmt: skip
