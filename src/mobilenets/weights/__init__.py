"""Weights enter through one door: any supported file -> `LoadedWeights` -> a ready model.

Supported sources (format detected from the content, not trusted from the name):
- ``.safetensors`` written by this package (state dict + contract in the header);
- ``.tflite`` float or uint8/int8 (`tflite.read_tflite`);
- TF-Slim checkpoints ``.ckpt.index`` / ``.ckpt.data-*`` (`slim_ckpt.read_slim_checkpoint`);
- TF1 detection-zoo SSD-MobileNet-v1 checkpoints, told apart by their variable names
  (`ssd_ckpt.read_ssd_checkpoint`);
- Keras Applications ``.h5`` (`keras_h5.read_keras_h5`);
- the official release ``.tgz`` (`archive.read_release_archive`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, WeightsError
from ..models.cfg import PretrainedCfg


@dataclass
class LoadedWeights:
    """A state dict in our naming plus what the source says about it (`cfg`: the full contract)."""

    state_dict: dict[str, torch.Tensor]
    alpha: float
    num_classes: int  # 0 = backbone only (no logits)
    resolution: int | None  # the input size the source was built for, when it records one
    source: str
    format: str  # safetensors | tflite-float | tflite-quant | slim-ckpt | ssd-ckpt | keras-h5
    labels: list[str] | None = None  # class names, when the file carries them
    meta: dict[str, Any] = field(default_factory=dict)
    cfg: PretrainedCfg | None = None  # set by `read_weights` (`contract_of`) when the reader gives none
    file_info: Any = None  # the reader's own parse of the file, for builders that need more (`ssd_tflite.SSDFileInfo`)


_DATA_SHARD = re.compile(r"\.data-\d{5}-of-\d{5}$")


def infer_alpha(state: dict[str, torch.Tensor], source: str | os.PathLike) -> float:
    """The width multiplier that reproduces every layer's channel count (TF-Slim rule, min depth 8)."""
    from ..models.mobilenet_v1 import MOBILENET_V1_CONV_DEFS, scaled_depth

    names = ["Conv2d_0"] + [f"Conv2d_{i}_pointwise" for i in range(1, 14)]
    depths = [state[f"features.{n}.conv.weight"].shape[0] for n in names]
    ratio = depths[-1] / 1024
    for cand in (round(ratio, 2), round(ratio, 4), ratio):  # 0.1 rather than 0.099609375
        if [scaled_depth(d.depth, cand) for d in MOBILENET_V1_CONV_DEFS] == depths:
            return cand
    raise WeightsError(f"{source}: channel counts {depths} fit no MobileNet v1 width multiplier")


def read_weights(path: str | os.PathLike) -> LoadedWeights:
    """Read any supported weights file, with its contract in ``.cfg``; `WeightsError` names the problem otherwise."""
    w = _read(Path(path))
    check_finite(w.state_dict, path)
    check_magnitudes(w.state_dict, path)
    if w.cfg is None:
        w.cfg = contract_of(w)
    return w


def _read(path: Path) -> LoadedWeights:
    is_ckpt = path.name.endswith((".ckpt", ".index")) or _DATA_SHARD.search(path.name)
    if is_ckpt or (not path.exists() and Path(f"{path}.index").is_file()):  # also model.ckpt-1234
        from .slim_ckpt import open_checkpoint, read_slim_checkpoint
        from .ssd_ckpt import is_od_api_checkpoint, is_ssd_checkpoint, read_ssd_checkpoint

        ckpt = open_checkpoint(path)  # the variable names say which network it is
        if is_ssd_checkpoint(ckpt.entries) or is_od_api_checkpoint(ckpt.entries):
            return read_ssd_checkpoint(ckpt)  # a detector of another kind gets its own one-line refusal there
        return read_slim_checkpoint(ckpt)
    if not path.exists():
        if path.is_symlink():
            raise WeightsError(f"{path}: a symbolic link to nothing (broken, or a loop of links)")
        raise WeightsError(f"{path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory; give the weights file inside it")
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise WeightsError(f"{path}: cannot read ({e.strerror or e})") from None
    if head[4:8] == b"TFL3":
        from .deeplab_tflite import is_segmenter_graph, read_deeplab_tflite
        from .ssd_tflite import is_detector_graph, read_ssd_weights
        from .tflite import TFLiteGraph, read_tflite

        graph = TFLiteGraph(path)
        if is_detector_graph(graph):
            return read_ssd_weights(path)
        if is_segmenter_graph(graph):
            return read_deeplab_tflite(path)
        return read_tflite(path)
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        from .keras_h5 import read_keras_h5

        return read_keras_h5(path)
    if head[:2] == b"\x1f\x8b" or path.suffix in (".tgz", ".gz", ".tar"):
        from .archive import read_release_archive

        return read_release_archive(path)
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5", ".keras"):
        raise WeightsError(f"{path}: not an HDF5 file (no HDF5 signature), so not Keras .h5 weights")
    if suffix == ".tflite":
        raise WeightsError(f"{path}: not a .tflite flatbuffer (missing 'TFL3' identifier)")
    if suffix == ".safetensors" or len(head) >= 8:
        return read_safetensors(path)
    raise WeightsError(f"{path}: unrecognised weights format")


# --- the contract ------------------------------------------------------------------------


def contract_of(w: LoadedWeights) -> PretrainedCfg:
    """The `PretrainedCfg` of weights whose file records none: the release's conventions plus what the file says."""
    from ..data.labels import imagenet_labels
    from ..models.registry import default_cfg

    cfg = default_cfg(w.alpha, w.resolution or 224, w.num_classes)
    labels = w.labels
    if labels is None and w.num_classes in (1000, 1001):
        labels = imagenet_labels(w.num_classes)
    offset = 1 if labels and w.num_classes and str(labels[0]).strip().lower() == "background" else 0
    # cfg.source: where the weights came from (``source`` in a file's header, else the file itself)
    quant = "uint8-qat" if w.format == "tflite-quant" else None
    return cfg.replace(labels=tuple(labels) if labels else None, label_offset=offset, quantization=quant,
                       source=w.meta.get("source") or w.source, sha256=w.meta.get("sha256"))  # fmt: skip


def _values(t: torch.Tensor):
    """A float tensor as a numpy array when numpy has its dtype (fast for the many small tensors), else itself."""
    t = t.detach()
    return t.cpu().numpy() if t.dtype in (torch.float32, torch.float64, torch.float16) else t.float()


def check_finite(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """`WeightsError` naming the first tensor holding NaN or Inf (a corrupt or diverged file)."""
    import numpy as np

    for name, t in state.items():
        if t.is_floating_point() and t.numel():
            v = _values(t)
            ok = np.isfinite(v) if isinstance(v, np.ndarray) else torch.isfinite(v)
            if not bool(ok.all()):
                bad = int((~ok).sum())
                raise WeightsError(f"{source}: tensor {name!r} has {bad} non-finite value(s) (NaN/Inf): corrupt weights")


# Far above any trained MobileNet (folded .tflite weights reach ~70, BN statistics a few hundred):
# larger values are a damaged file, and would silently swamp every output they touch.
MAX_ABS_VALUE = 1e6


def check_magnitudes(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """`WeightsError` naming the first tensor with a value beyond `MAX_ABS_VALUE`, or a negative BN variance."""
    for name, t in state.items():
        if not t.is_floating_point() or not t.numel():
            continue
        v = _values(t)
        biggest, smallest = float(abs(v).max()), float(v.min())
        if biggest > MAX_ABS_VALUE:
            raise WeightsError(f"{source}: tensor {name!r} holds {biggest:.3g}, beyond any trained weight "
                               f"(|w| <= {MAX_ABS_VALUE:g}): corrupt weights")  # fmt: skip
        if name.endswith("running_var") and smallest < 0:
            raise WeightsError(f"{source}: tensor {name!r} (a variance) is negative: corrupt weights")


# --- our own format ----------------------------------------------------------------------

_META_KEY = "mobilenets"
_CFG_KEY = "pretrained_cfg"
_DIGEST_KEY = "tensors_sha256"


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_weights(model: torch.nn.Module, path: str | os.PathLike, **changes: Any) -> Path:
    """Write ``model``'s state dict and its contract as safetensors, atomically.

    ``changes`` update fields of ``model.pretrained_cfg`` (e.g. ``labels=...``, ``source=...``);
    a digest of the tensor data is written beside it and checked by `read_weights`.
    """
    from safetensors.torch import save_file

    from ..utils import atomic_write

    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, PretrainedCfg):
        raise WeightsError(f"{type(model).__name__} has no pretrained_cfg to save with its weights")
    known = {k: v for k, v in changes.items() if k in PretrainedCfg.__dataclass_fields__}
    extra = {k: v for k, v in changes.items() if k not in known}
    cfg = cfg.replace(**known) if known else cfg
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {_CFG_KEY: cfg.to_json(), _DIGEST_KEY: tensors_digest(tensors),
              _META_KEY: json.dumps({"format_version": 2, **extra})}  # fmt: skip
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return path


def read_safetensors(path: Path) -> LoadedWeights:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise WeightsError(f"{path}: not a readable weights file ({first})") from None
    digest = header.get(_DIGEST_KEY)
    if digest is not None and digest != tensors_digest(state):
        raise WeightsError(f"{path}: tensor data does not match the digest in its header (corrupted file)")
    try:
        info = json.loads(header.get(_META_KEY, "{}"))
        if isinstance(info, dict) and digest is None and _CFG_KEY in header and int(info.get("format_version", 0)) >= 2:
            # save_weights has always written the digest with format 2: its absence means an edited file
            raise WeightsError(f"{path}: written by this package but its tensor digest is missing (edited file?)")
        cfg = PretrainedCfg.from_json(header[_CFG_KEY]) if _CFG_KEY in header else None
    except (ValueError, TypeError, ConfigError) as e:
        raise WeightsError(f"{path}: unreadable contract in the file's header ({e})") from None
    if not isinstance(info, dict):
        raise WeightsError(f"{path}: unreadable metadata in the file's header (not a JSON object)")
    if cfg is not None:
        check_cfg(cfg, path)
    if cfg is not None and cfg.arch != "mobilenet_v1":
        return LoadedWeights(state, float(cfg.arch_cfg.get("alpha", 1.0)), cfg.num_classes, cfg.resolution,
                             str(path), "safetensors", list(cfg.labels) if cfg.labels else None, info, cfg)  # fmt: skip
    if "features.Conv2d_13_pointwise.conv.weight" not in state:
        raise WeightsError(f"{path}: not MobileNet v1 weights (no features.Conv2d_13_pointwise tensors)")
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    alpha = infer_alpha(state, path)
    if cfg is not None:
        claimed = float(cfg.arch_cfg.get("alpha", alpha))
        if abs(claimed - alpha) > 1e-6 or cfg.num_classes != num_classes:
            raise WeightsError(f"{path}: header says alpha={claimed:g} with {cfg.num_classes} classes, but the "
                               f"tensors are alpha={alpha:g} with {num_classes} classes")  # fmt: skip
    labels = list(cfg.labels) if cfg is not None and cfg.labels else info.get("labels")
    resolution = cfg.resolution if cfg is not None else info.get("resolution")
    return LoadedWeights(state, alpha, num_classes, resolution, str(path), "safetensors", labels, info, cfg)


def check_cfg(cfg: PretrainedCfg, source: str | os.PathLike) -> None:
    """`WeightsError` unless a contract read from a file is usable: its header is not covered by the tensor digest."""
    import math

    from ..models.cfg import DECODERS, RESIZERS

    def bad(what: str) -> WeightsError:
        return WeightsError(f"{source}: the contract in the file's header is damaged ({what})")

    size = tuple(cfg.input_size) if isinstance(cfg.input_size, (list, tuple)) else ()
    if len(size) != 3 or not all(isinstance(v, int) and 0 < v <= 4096 for v in size):
        raise bad(f"input_size {cfg.input_size!r}")
    for name in ("mean", "std"):
        values = getattr(cfg, name)
        if not isinstance(values, (list, tuple)) or len(values) != size[0] or not all(
            isinstance(v, (int, float)) and math.isfinite(v) for v in values
        ):
            raise bad(f"{name} {values!r} for {size[0]} channels")
    if not all(v > 0 for v in cfg.std):
        raise bad(f"std {cfg.std!r}")
    if not isinstance(cfg.crop_fraction, (int, float)) or not 0 < cfg.crop_fraction <= 1:
        raise bad(f"crop_fraction {cfg.crop_fraction!r}")
    if cfg.decode not in DECODERS or cfg.resize not in RESIZERS:
        raise bad(f"decode {cfg.decode!r} / resize {cfg.resize!r}")
    if not isinstance(cfg.num_classes, int) or cfg.num_classes < 0:
        raise bad(f"num_classes {cfg.num_classes!r}")
    if not isinstance(cfg.label_offset, int) or not 0 <= cfg.label_offset <= max(cfg.num_classes, 1):
        raise bad(f"label_offset {cfg.label_offset!r}")
    if cfg.labels is not None and (len(cfg.labels) != cfg.num_classes or not all(isinstance(v, str) for v in cfg.labels)):
        raise bad(f"{len(cfg.labels)} labels for {cfg.num_classes} classes")
    if not isinstance(cfg.arch_cfg, dict):
        raise bad("arch_cfg")


# --- weights -> model ----------------------------------------------------------------------


def check_shapes(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """`WeightsError` naming the first tensor whose shape differs from the model's."""
    own = model.state_dict()
    for name, t in state.items():
        if name in own and tuple(own[name].shape) != tuple(t.shape):
            raise WeightsError(f"{source}: tensor {name!r} has shape {tuple(t.shape)}, the model needs "
                               f"{tuple(own[name].shape)}")  # fmt: skip


def build_model(w: LoadedWeights, resolution: int | None = None, num_classes: int | None = None, **kwargs):
    """A `MobileNetV1` holding ``w``, in eval mode; a different ``num_classes`` keeps the backbone and starts a fresh head."""
    from ..models.registry import mobilenet_v1

    cfg = w.cfg or contract_of(w)
    if cfg.arch != "mobilenet_v1":  # a detector or segmenter: `builder.model_from_weights` builds it
        raise WeightsError(f"{w.source}: not a MobileNet v1 classifier/backbone but a {cfg.arch} ({cfg.task}) model")
    res = resolution or w.resolution or cfg.resolution
    want = w.num_classes if num_classes is None else num_classes
    arch_kwargs = {k: v for k, v in cfg.arch_cfg.items() if k in ("min_depth", "padding")}
    model = mobilenet_v1(alpha=w.alpha, resolution=res, num_classes=want, **{**arch_kwargs, **kwargs})
    state = dict(w.state_dict)
    if want != w.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    check_shapes(model, state, w.source)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("classifier.") and want != w.num_classes)]
    if missing or unexpected:
        raise WeightsError(f"{w.source}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    same_head = want == w.num_classes
    model.pretrained_cfg = cfg.replace(
        input_size=(3, res, res), num_classes=want, task="classify" if want else "embed",
        arch_cfg={**cfg.arch_cfg, "alpha": w.alpha, **{k: v for k, v in kwargs.items() if k in ("output_stride", "padding")}},
        labels=cfg.labels if same_head else None, label_offset=cfg.label_offset if same_head else 0,
        metrics=cfg.metrics if same_head else {},
    )  # fmt: skip
    return model.eval()


def check_fits(w: LoadedWeights, name: str, alpha: float | None = None, resolution: int | None = None) -> int:
    """Check loaded weights against a registered config; returns the input resolution to use.

    The width must match; a resolution the file records must match the name's unless
    ``resolution`` is given explicitly (weights themselves work at any size).
    """
    from ..models.registry import get_spec

    spec = get_spec(name)
    want_alpha = spec.alpha if alpha is None else alpha
    if abs(w.alpha - want_alpha) > 1e-6:
        raise WeightsError(f"{w.source}: weights have alpha={w.alpha:g} but {name} has alpha={want_alpha:g}")
    if resolution is None and w.resolution is not None and w.resolution != spec.resolution:
        raise WeightsError(f"{w.source}: weights were built for {w.resolution}x{w.resolution} but {name} is "
                           f"{spec.resolution}; pass resolution={w.resolution} (or --resolution) to use them")  # fmt: skip
    return resolution or spec.resolution


def describe(w: LoadedWeights) -> dict[str, Any]:
    """A JSON-able summary of loaded weights (no tensors)."""
    # not asdict(w): that would deep-copy every tensor and the reader's parse only to drop them
    d = {f.name: getattr(w, f.name) for f in fields(w) if f.name not in ("state_dict", "file_info")}
    d["meta"] = dict(w.meta)
    d["labels"] = len(w.labels) if w.labels else None
    d["cfg"] = w.cfg.as_dict() if w.cfg else None
    if d["cfg"] and d["cfg"]["labels"]:
        d["cfg"]["labels"] = len(d["cfg"]["labels"])
    return d
