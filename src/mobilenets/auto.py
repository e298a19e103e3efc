"""`load_predictor`: the one door to inference, with the backend following the file or chosen by speed.

    from mobilenets import load_predictor
    p = load_predictor(weights="model.tflite")           # an exported .tflite runs on LiteRT
    p = load_predictor(weights="model.onnx")             # an .onnx on ONNX Runtime
    p = load_predictor(weights="w.safetensors")          # weights: the fastest installed backend
    p = load_predictor(model="mobilenet_v1_1.0_224", weights="imagenet", backend="openvino")
    outputs = p.run(p.transform("cat.jpg")[None].numpy())   # {"probabilities": ..., "embedding": ...}

Which backend runs, unless ``backend`` names one (`default_backend`):
- ``.onnx`` -> onnxruntime; any ``.tflite`` (ours or Google's) -> litert;
- a weights file or tag -> ``auto``: the model is exported once to a float ``.onnx``
  (cached under `cache_dir` by the content hash of the weights), then torch, ONNX Runtime
  and OpenVINO are timed interleaved on this machine and the fastest is kept; the choice is
  cached too, keyed by weights hash, thread count and `machine_id`. A float ``.tflite``
  export is not among the candidates: it costs ~20 s to make and LiteRT ran within 2% of
  ONNX Runtime on float MobileNet v1 in ``benchmarks/deploy_bench.json``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import MobilenetsError
from .runtime import BACKENDS, Predictor, artifact_format, backend_available, open_backend, read_artifact_info
from .utils import atomic_write, cache_dir, file_key, machine_id

CHOICES = (*BACKENDS, "auto")


def build_torch_model(model: str | None, weights: str | os.PathLike | None,
                      resolution: int | None = None) -> torch.nn.Module:  # fmt: skip
    """The PyTorch module (eval mode) for a registered name and/or a weights file or tag."""
    from .builder import create_model, model_from_weights
    from .weights import read_weights

    if weights is None and model is None:
        raise MobilenetsError("give --model NAME and/or --weights FILE")
    if model is not None:
        if weights is None:
            raise MobilenetsError(f"no weights given for {model}: pass --weights imagenet (download) or --weights FILE")
        kwargs = {"resolution": resolution} if resolution else {}
        return create_model(model, weights=weights, **kwargs)
    if str(weights) in ("imagenet", "imagenet_quant"):
        raise MobilenetsError(f"--weights {weights} needs --model NAME (which of the 16 official configs?)")
    return model_from_weights(read_weights(weights), resolution)


def default_backend(weights: str | os.PathLike | None) -> str:
    """The backend a file implies: litert for .tflite, onnxruntime for .onnx, else auto."""
    fmt = artifact_format(weights) if weights is not None and str(weights) not in ("imagenet", "imagenet_quant") else None
    if fmt == "onnx":
        return "onnxruntime"
    if fmt == "tflite" and backend_available("litert"):
        return "litert"
    return "auto"


def load_predictor(model: str | None = None, weights: str | os.PathLike | None = None, backend: str | None = None,
                   resolution: int | None = None, crop_fraction: float | None = None,
                   threads: int | None = None, progress: bool = True) -> Predictor:  # fmt: skip
    """A predictor for a registered ``model`` name and/or a ``weights`` file, tag or exported artifact.

    Args:
        backend: torch | onnxruntime | litert | openvino | auto; None follows the file (`default_backend`).
        resolution: input side for weights (an exported artifact has its own, fixed).
        crop_fraction: overrides the weights' own central crop (1.0 = the whole image).
        threads: CPU threads for inference (default: the engine's).
        progress: say on stderr when a one-off export for ``auto`` runs.
    """
    backend = backend or default_backend(weights)
    if backend not in CHOICES:
        raise MobilenetsError(f"unknown backend {backend!r}; available: {', '.join(CHOICES)}")
    fmt = artifact_format(weights) if weights is not None else None
    if model is not None and fmt is not None:
        check_artifact_fits(model, weights)
    if backend == "auto":
        return auto_predictor(model, weights, resolution, crop_fraction, threads, progress)
    if backend == "torch":
        if fmt == "onnx":
            raise MobilenetsError(f"{Path(weights).name} is an ONNX model: run it with --backend onnxruntime, "
                                  "openvino or auto")  # fmt: skip
        if fmt == "tflite" and read_artifact_info(weights).cfg.quantization and model is None and _is_ours(weights):
            raise MobilenetsError(f"{Path(weights).name} is an int8 export: run it with --backend litert")
        return open_backend("torch", model=build_torch_model(model, weights, resolution), crop_fraction=crop_fraction,
                            threads=threads)  # fmt: skip
    if resolution and fmt:
        size = read_artifact_info(weights).resolution
        if resolution != size:
            raise MobilenetsError(f"{Path(weights).name} was exported for {size}x{size}; it cannot run at {resolution} "
                                  f"(export again with --resolution {resolution})")  # fmt: skip
    return open_backend(backend, weights, crop_fraction=crop_fraction, threads=threads)


def check_artifact_fits(model: str, path: str | os.PathLike) -> None:
    """`MobilenetsError` when an artifact's width does not match registered model ``model``."""
    from .models.registry import get_spec

    spec = get_spec(model)
    alpha = read_artifact_info(path).cfg.arch_cfg.get("alpha")
    if alpha is None and artifact_format(path) == "tflite":  # a Google file: its tensors say
        from .weights import read_weights

        alpha = read_weights(path).alpha
    if alpha is not None and abs(float(alpha) - spec.alpha) > 1e-6:
        raise MobilenetsError(f"{path}: weights have alpha={float(alpha):g} but {model} has alpha={spec.alpha:g}")


def _is_ours(path: str | os.PathLike) -> bool:
    from .weights.tflite import TFLiteGraph

    return "mobilenets" in TFLiteGraph(Path(path)).metadata()


# --- auto -------------------------------------------------------------------------------------


def time_interleaved(preds: dict[str, Predictor], batch: np.ndarray, runs: int = 20,
                     warmup: int = 5) -> dict[str, np.ndarray]:  # fmt: skip
    """Seconds per call of each predictor, measured round-robin so they share the machine's noise."""
    for p in preds.values():
        for _ in range(warmup):
            p.run(batch)
    times: dict[str, list[float]] = {k: [] for k in preds}
    for _ in range(runs):
        for k, p in preds.items():
            t = time.perf_counter()
            p.run(batch)
            times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def cached_float_export(net: torch.nn.Module, key: str, fmt: str = "onnx", progress: bool = True) -> Path | None:
    """A float copy of ``net`` in ``fmt`` under `cache_dir` (exported once per ``key``); None without the exporter."""
    import importlib.util

    needs = {"onnx": "onnx", "tflite": "litert_torch"}[fmt]
    if importlib.util.find_spec(needs) is None:
        return None
    path = cache_dir() / "exports" / f"{key}_{net.pretrained_cfg.resolution}.{fmt}"
    if path.is_file():
        try:
            read_artifact_info(path)  # validated on read: a damaged cache entry is made again
            return path
        except MobilenetsError:
            path.unlink(missing_ok=True)
    from .export import export_model

    if progress:
        print(f"mobilenets: exporting a float .{fmt} copy to {path} (once, for --backend auto)", file=sys.stderr)
    export_model(net, fmt, path, parity=False)
    return path


def _weights_key(model: str | None, weights: str | os.PathLike | None, resolution: int | None) -> str:
    path = Path(weights) if weights is not None else None
    ident = file_key(path) if path is not None and path.is_file() else f"{model}-{weights}"
    return f"{ident}-r{resolution}" if resolution else ident


def auto_predictor(model: str | None, weights: str | os.PathLike | None, resolution: int | None,
                   crop_fraction: float | None, threads: int | None, progress: bool = True) -> Predictor:  # fmt: skip
    """The fastest backend for these weights on this machine (measured once, then cached)."""
    fmt = artifact_format(weights) if weights is not None else None
    key = _weights_key(model, weights, resolution)
    slot = f"{key}|{threads}|{machine_id()}"
    record = cache_dir() / "auto.json"
    try:
        choices = json.loads(record.read_text()) if record.is_file() else {}
        if not isinstance(choices, dict):
            choices = {}
    except (OSError, ValueError):
        choices = {}  # an unreadable record is rebuilt
    candidates: dict[str, str | os.PathLike | None]
    net = None
    if fmt == "onnx":
        candidates = {b: weights for b in ("onnxruntime", "openvino") if backend_available(b)}
    elif fmt == "tflite" and _is_ours(weights) and read_artifact_info(weights).int8:
        candidates = {"litert": weights}
    else:
        net = build_torch_model(model, weights, resolution)
        candidates = {"torch": None}
        if any(backend_available(b) for b in ("onnxruntime", "openvino")):
            onnx = cached_float_export(net, key, "onnx", progress)
            if onnx is not None:
                candidates.update({b: onnx for b in ("onnxruntime", "openvino") if backend_available(b)})
        if fmt == "tflite" and backend_available("litert"):
            candidates["litert"] = weights

    def make(backend: str) -> Predictor:
        if backend == "torch":
            return open_backend("torch", model=net, crop_fraction=crop_fraction, threads=threads)
        return open_backend(backend, candidates[backend], crop_fraction=crop_fraction, threads=threads)

    chosen = choices.get(slot)
    if isinstance(chosen, dict) and chosen.get("backend") in candidates:
        p = make(chosen["backend"])
        p.info.update(engine=chosen["backend"], auto=chosen.get("ms"))
        return _named(p, weights)
    if not candidates:
        raise MobilenetsError(f"no installed backend can run {weights}")
    preds = {b: make(b) for b in candidates}
    if len(preds) == 1:
        fastest, ms = next(iter(preds)), {}
    else:
        size = next(iter(preds.values())).cfg.input_size
        timings = {b: float(np.median(t)) for b, t in time_interleaved(preds, np.zeros((1, *size), np.float32)).items()}
        fastest = min(timings, key=timings.get)
        ms = {b: round(t * 1e3, 3) for b, t in timings.items()}
        choices[slot] = {"backend": fastest, "ms": ms}
        try:
            with atomic_write(record) as tmp:
                tmp.write_text(json.dumps(choices, indent=1))
        except OSError:
            pass  # a read-only cache only costs the measurement next time
    p = preds[fastest]
    p.info.update(engine=fastest, auto=ms)
    return _named(p, weights)


def _named(p: Predictor, weights: str | os.PathLike | None) -> Predictor:
    """Report the user's weights (not the cached export) as what ran."""
    if weights is not None:
        p.info["source"] = str(weights)
    return p
