"""Weights enter through one door: any supported file -> `LoadedWeights` -> a ready model.

Supported sources (format detected from the content, not trusted from the name):
- ``.safetensors`` written by this package (state dict + contract in the header);
- ``.tflite`` float or uint8/int8 (`tflite.read_tflite`);
- TF-Slim checkpoints ``.ckpt.index`` / ``.ckpt.data-*`` (`slim_ckpt.read_slim_checkpoint`);
- Keras Applications ``.h5`` (`keras_h5.read_keras_h5`);
- the official release ``.tgz`` (`archive.read_release_archive`).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import WeightsError


@dataclass
class LoadedWeights:
    """A state dict in our naming plus what the source says about it."""

    state_dict: dict[str, torch.Tensor]
    alpha: float
    num_classes: int  # 0 = backbone only (no logits)
    resolution: int | None  # the input size the source was built for, when it records one
    source: str
    format: str  # safetensors | tflite-float | tflite-quant | slim-ckpt | keras-h5
    labels: list[str] | None = None  # class names, when the file carries them
    meta: dict[str, Any] = field(default_factory=dict)


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
    """Read any supported weights file; `WeightsError` names the problem otherwise."""
    path = Path(path)
    is_ckpt = path.name.endswith((".ckpt", ".index")) or _DATA_SHARD.search(path.name)
    if is_ckpt or (not path.exists() and Path(f"{path}.index").is_file()):  # also model.ckpt-1234
        from .slim_ckpt import read_slim_checkpoint

        return read_slim_checkpoint(path)
    if not path.exists():
        raise WeightsError(f"{path}: no such file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory; give the weights file inside it")
    with open(path, "rb") as f:
        head = f.read(16)
    if head[4:8] == b"TFL3":
        from .tflite import read_tflite

        return read_tflite(path)
    if head[:8] == b"\x89HDF\r\n\x1a\n":
        from .keras_h5 import read_keras_h5

        return read_keras_h5(path)
    if head[:2] == b"\x1f\x8b" or path.suffix in (".tgz", ".gz", ".tar"):
        from .archive import read_release_archive

        return read_release_archive(path)
    if path.suffix == ".safetensors" or len(head) >= 8:
        return read_safetensors(path)
    raise WeightsError(f"{path}: unrecognised weights format")


# --- our own format ----------------------------------------------------------------------

_META_KEY = "mobilenets"


def save_weights(model: torch.nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write ``model``'s state dict and its contract (alpha, classes, labels, ...) as safetensors, atomically."""
    from safetensors.torch import save_file

    from ..utils import atomic_write

    info = {"alpha": getattr(model, "alpha", None), "num_classes": getattr(model, "num_classes", None),
            "resolution": getattr(model, "default_resolution", None), **meta}  # fmt: skip
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(info)})
    return path


def read_safetensors(path: Path) -> LoadedWeights:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path}: not a readable weights file ({e})") from None
    info = json.loads(header.get(_META_KEY, "{}"))
    if "features.Conv2d_13_pointwise.conv.weight" not in state:
        raise WeightsError(f"{path}: not MobileNet v1 weights (no features.Conv2d_13_pointwise tensors)")
    final = state["features.Conv2d_13_pointwise.conv.weight"].shape[0]
    num_classes = int(state["classifier.weight"].shape[0]) if "classifier.weight" in state else 0
    return LoadedWeights(
        state_dict=state,
        alpha=float(info.get("alpha") or final / 1024),
        num_classes=num_classes,
        resolution=info.get("resolution"),
        source=info.get("source", str(path)),
        format="safetensors",
        labels=info.get("labels"),
        meta=info,
    )


# --- weights -> model ----------------------------------------------------------------------


def build_model(w: LoadedWeights, resolution: int | None = None, num_classes: int | None = None, **kwargs):
    """A `MobileNetV1` holding ``w``; a different ``num_classes`` keeps the backbone and starts a fresh head."""
    from ..models.registry import mobilenet_v1

    res = resolution or w.resolution or 224
    want = w.num_classes if num_classes is None else num_classes
    model = mobilenet_v1(alpha=w.alpha, resolution=res, num_classes=want, **kwargs)
    state = dict(w.state_dict)
    if want != w.num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("classifier.") and want != w.num_classes)]
    if missing or unexpected:
        raise WeightsError(f"{w.source}: weights do not fit the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    labels = w.labels if want == w.num_classes else None
    if labels is None and want in (1000, 1001) and want == w.num_classes:
        from ..data.labels import imagenet_labels

        labels = imagenet_labels(want)
    model.pretrained_cfg = {
        "source": w.source, "format": w.format, "labels": labels, "resolution": res,
        "has_background": bool(labels) and labels[0].strip().lower() == "background",
        **{k: v for k, v in w.meta.items() if k in ("sha256", "input_quantization", "preprocessing", "crop_fraction")},
    }  # fmt: skip
    return model


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


def load_pretrained(name: str, weights: str | os.PathLike, alpha: float | None = None,
                    resolution: int | None = None, **overrides):  # fmt: skip
    """``create_model(name, weights=...)``: check the file against the named config, then build."""
    if str(weights) == "imagenet":
        from .cache import fetch_official

        weights = fetch_official(name)
    w = read_weights(weights)
    return build_model(w, resolution=check_fits(w, name, alpha, resolution), **overrides)


def describe(w: LoadedWeights) -> dict[str, Any]:
    """A JSON-able summary of loaded weights (no tensors)."""
    d = asdict(w)
    d.pop("state_dict")
    d["labels"] = len(w.labels) if w.labels else None
    return d
