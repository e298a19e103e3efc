"""One `Predictor` over every backend: same preprocessing in, same probabilities/embeddings out.

``load_predictor(model=..., weights=..., backend=...)`` is what ``classify``, ``evaluate``
and ``embed`` use. A predictor takes preprocessed NCHW float32 batches (its ``transform``
makes them from images) and returns class probabilities or pooled embeddings as numpy
arrays, whatever runs underneath:

- ``torch``: the PyTorch module (any weights `weights.read_weights` reads);
- ``onnxruntime`` / ``openvino``: an ``.onnx`` from ``mobilenets export``;
- ``litert``: a ``.tflite`` from ``mobilenets export``, or one of Google's own files;
- ``auto``: times every backend that can run the weights on this machine and keeps the
  fastest. Given PyTorch weights it first exports float ``.onnx``/``.tflite`` copies
  (exact, cached); the choice is cached too (`cache_dir`), keyed by file, threads and CPU.

Artifacts carry their contract (`export.metadata`); the predictor lays the batch out
(NHWC for LiteRT) and quantizes it with the artifact's input scale and zero point when the
model takes int8/uint8.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data.transforms import EvalTransform
from .errors import MobilenetsError
from .utils import cache_dir

BACKENDS = ("torch", "onnxruntime", "litert", "openvino", "auto")
_INSTALL = {"onnxruntime": "pip install 'mobilenets[onnx]'", "litert": "pip install 'mobilenets[tflite]'",
            "openvino": "pip install openvino"}  # fmt: skip


@contextlib.contextmanager
def quiet_native(replay: bool = True) -> Iterator[None]:
    """Silence C++/absl/progress output written straight to fds 1 and 2; replay it if the block fails (``replay``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            if replay:
                log.seek(0)
                sys.stderr.write(log.read()[-4000:].decode("utf-8", "replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def backend_available(backend: str) -> bool:
    """Whether the package a backend needs is importable (torch always is)."""
    import importlib.util

    module = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai_edge_litert", "openvino": "openvino"}[backend]
    return importlib.util.find_spec(module) is not None


@dataclass
class Predictor:
    """Base class: subclasses implement `probabilities` (and `embed` where the model allows)."""

    backend: str
    name: str
    resolution: int
    num_classes: int
    labels: list[str] | None = None
    has_background: bool = False
    crop_fraction: float = 0.875
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def transform(self) -> EvalTransform:
        return EvalTransform(self.resolution, self.crop_fraction)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, N x num_classes."""
        raise NotImplementedError

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pooled pre-logits features, N x C."""
        raise MobilenetsError(f"the {self.backend} backend cannot produce embeddings for this artifact")

    def label(self, index: int) -> str:
        if self.labels and 0 <= index < len(self.labels):
            return self.labels[index]
        return str(index)


class TorchPredictor(Predictor):
    def __init__(self, model: torch.nn.Module, name: str, resolution: int, crop_fraction: float = 0.875,
                 threads: int | None = None) -> None:  # fmt: skip
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        super().__init__(
            backend="torch", name=name, resolution=resolution, num_classes=model.num_classes,
            labels=cfg.get("labels"), has_background=bool(cfg.get("has_background")),
            crop_fraction=crop_fraction, info={"source": cfg.get("source"), "format": cfg.get("format")},
        )  # fmt: skip
        if threads:
            torch.set_num_threads(threads)
        self.model = model.eval()

    @torch.inference_mode()
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        if self.num_classes == 0:
            raise MobilenetsError(f"{self.name} has no classifier (an embedding extractor); use embed")
        return self.model(torch.as_tensor(batch)).softmax(1).numpy()

    @torch.inference_mode()
    def embed(self, batch: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(batch)
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True).numpy()


class ArtifactPredictor(Predictor):
    """An exported model file run by some engine; subclasses implement `_run` -> {output name: array}."""

    def __init__(self, backend: str, path: Path, artifact, crop_fraction: float | None = None) -> None:
        super().__init__(
            backend=backend, name=artifact.name, resolution=artifact.resolution, num_classes=artifact.num_classes,
            labels=artifact.labels, has_background=artifact.has_background,
            crop_fraction=artifact.crop_fraction if crop_fraction is None else crop_fraction,
            info={"source": str(path), "format": artifact.format, "int8": artifact.int8,
                  "input_dtype": artifact.input_dtype},
        )  # fmt: skip
        self.path, self.artifact = path, artifact
        self._dequant: dict[str, tuple[float, int]] = {}

    @property
    def transform(self) -> EvalTransform:
        """The artifact's own preprocessing: its crop and its ``(x - mean) / std``."""
        return EvalTransform(self.resolution, self.crop_fraction, self.artifact.mean, self.artifact.std)

    def prepare(self, batch: np.ndarray) -> np.ndarray:
        """NCHW float32 from `transform` -> what the model's input tensor takes (layout, dtype)."""
        a = self.artifact
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4 or x.shape[1:] != (3, a.resolution, a.resolution):
            raise MobilenetsError(f"{self.path.name} takes N x 3 x {a.resolution} x {a.resolution} batches, got {x.shape}")
        if a.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if a.input_dtype != "float32":
            scale, zero = a.input_quantization
            info = np.iinfo(a.input_dtype)
            x = np.clip(np.rint(x / np.float32(scale)) + zero, info.min, info.max).astype(a.input_dtype)
        return np.ascontiguousarray(x)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _output(self, batch: np.ndarray, which: str) -> np.ndarray:
        name = self.artifact.outputs.get(which)
        if name is None:
            if which == "probabilities":
                raise MobilenetsError(f"{self.path.name} has no classifier output (an embedding extractor); use embed")
            raise MobilenetsError(f"{self.path.name} has no embedding output")
        y = self._run(self.prepare(batch))[name]
        if name in self._dequant:
            scale, zero = self._dequant[name]
            y = (y.astype(np.float32) - zero) * np.float32(scale)
        return y.reshape(len(batch), -1).astype(np.float32, copy=False)

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        return self._output(batch, "probabilities")

    def embed(self, batch: np.ndarray) -> np.ndarray:
        return self._output(batch, "embedding")


class OnnxRuntimePredictor(ArtifactPredictor):
    def __init__(self, path: Path, artifact, crop_fraction: float | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        super().__init__("onnxruntime", path, artifact, crop_fraction)
        ort.set_default_logger_severity(3)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0
        so.inter_op_num_threads = 1
        # Worker threads sleep between calls instead of spinning: on a shared machine (or beside
        # other predictors) spinning workers steal the cores the next call needs.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except (RuntimeError, ValueError) as e:  # onnxruntime's pybind errors (InvalidProtobuf, Fail) are RuntimeErrors
            raise_artifact_error(path, e)
        self.input_name = self.session.get_inputs()[0].name

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self.input_name: x})))


def import_openvino():
    """``import openvino`` without its telemetry.

    With the ``openvino-telemetry`` package installed (openvino depends on it), the import
    itself sends a usage event over the network from a forked process and writes
    ``~/intel/``; it is on unless opted out. Hiding the package from this process makes
    OpenVINO fall back to its own no-op stub. Only possible before openvino is first imported.
    """
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)  # None: `import openvino_telemetry` raises ImportError
    import openvino

    return openvino


class OpenVINOPredictor(ArtifactPredictor):
    def __init__(self, path: Path, artifact, crop_fraction: float | None = None, threads: int | None = None) -> None:
        ov = import_openvino()

        super().__init__("openvino", path, artifact, crop_fraction)
        # f32 asked for explicitly: on CPUs with native bf16 OpenVINO otherwise runs float models in
        # bf16 (measured with Google's 0.25_224 on real photos: probabilities off by up to 0.18 and a
        # top-1 flipped, against ~5e-6 in f32), a silent change of the maths
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            compiled = ov.Core().compile_model(str(path), "CPU", config)
        except RuntimeError as e:  # openvino's errors carry long C++ traces: keep the first line
            raise_artifact_error(path, e)
        self.request = compiled.create_infer_request()
        wanted = set(artifact.outputs.values())
        self.names = [next(iter(sorted(o.get_names() & wanted) or o.get_names())) for o in compiled.outputs]

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({0: x})
        return {name: np.asarray(result[i]) for i, name in enumerate(self.names)}


class LiteRTPredictor(ArtifactPredictor):
    def __init__(self, path: Path, artifact, crop_fraction: float | None = None, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        super().__init__("litert", path, artifact, crop_fraction)
        try:
            with quiet_native(replay=False):  # the interpreter announces its XNNPACK delegate on stderr
                self.interpreter = Interpreter(model_path=str(path), num_threads=threads or os.cpu_count() or 1)
                self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise_artifact_error(path, e)
        self.input = self.interpreter.get_input_details()[0]
        self.outputs = self.interpreter.get_output_details()
        for o in self.outputs:
            scale, zero = o["quantization"]
            if o["dtype"] != np.float32 and scale:
                self._dequant[o["name"]] = (scale, zero)

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # Exported graphs have batch 1 baked into their reshapes: run the images one by one.
        it, outs = self.interpreter, []
        for i in range(len(x)):
            it.set_tensor(self.input["index"], x[i : i + 1])
            it.invoke()
            outs.append({o["name"]: it.get_tensor(o["index"]) for o in self.outputs})
        return {o["name"]: np.concatenate([r[o["name"]] for r in outs]) for o in self.outputs}


def raise_artifact_error(path: Path, error: Exception) -> None:
    from .export.metadata import ArtifactError

    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    raise ArtifactError(f"{path}: cannot load the model ({first})") from None


# --- choosing and building ----------------------------------------------------------------------


def _torch_model(model: str | None, weights: str | os.PathLike | None, resolution: int | None):
    """(module, name, resolution) from a registered name and/or a weights file."""
    from .models.registry import create_model, get_spec
    from .weights import build_model, read_weights

    if weights is None and model is None:
        raise MobilenetsError("give --model NAME and/or --weights FILE")
    if model is not None:
        spec = get_spec(model)
        if weights is None:
            raise MobilenetsError(f"no weights given for {model}: pass --weights imagenet (download) or --weights FILE")
        kwargs = {"resolution": resolution} if resolution else {}
        return create_model(model, weights=weights, **kwargs), model, resolution or spec.resolution
    net = build_model(read_weights(weights), resolution=resolution)
    return net, net.name, net.default_resolution


def _artifact(weights: str | os.PathLike | None) -> tuple[str | None, Path | None]:
    """('tflite' | 'onnx' | None, path) for a weights argument."""
    from .export.metadata import artifact_format

    if weights is None or str(weights) == "imagenet":
        return None, None
    path = Path(weights)
    return artifact_format(path), path


def _check_resolution(artifact, resolution: int | None, path: Path) -> None:
    if resolution and resolution != artifact.resolution:
        raise MobilenetsError(f"{path.name} was exported for {artifact.resolution}x{artifact.resolution}; "
                              f"it cannot run at {resolution} (export again with --resolution {resolution})")  # fmt: skip


def _require(backend: str) -> None:
    if not backend_available(backend):
        raise MobilenetsError(f"the {backend} backend is not installed: {_INSTALL[backend]}")


def load_predictor(model: str | None = None, weights: str | os.PathLike | None = None, backend: str = "torch",
                   resolution: int | None = None, crop_fraction: float = 0.875,
                   threads: int | None = None) -> Predictor:  # fmt: skip
    """A predictor for a registered ``model`` name and/or a ``weights`` file or exported artifact.

    With only ``weights``, the config (alpha, classes, input size) is read from the file.
    Exported artifacts bring their own preprocessing contract; ``crop_fraction`` applies to
    PyTorch weights (an artifact keeps the crop it was exported with unless another is given).
    """
    if backend not in BACKENDS:
        raise MobilenetsError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend == "auto":
        return auto_predictor(model, weights, resolution, crop_fraction, threads)
    fmt, path = _artifact(weights)
    if backend == "torch":
        if fmt == "onnx":
            raise MobilenetsError(f"{path.name} is an ONNX model: run it with --backend onnxruntime, openvino or auto")
        net, name, res = _torch_model(model, weights, resolution)
        return TorchPredictor(net, name, res, crop_fraction, threads)
    wants = {"litert": "tflite", "onnxruntime": "onnx", "openvino": "onnx"}[backend]
    if fmt != wants:
        what = f"{path.name} is a .{fmt} model" if fmt else f"{weights or model} is not an exported .{wants} model"
        hint = {"tflite": "litert (or torch)", "onnx": "onnxruntime or openvino"}.get(fmt, "torch")
        raise MobilenetsError(f"the {backend} backend runs .{wants} files and {what}: use --backend {hint}, "
                              f"or make one with `mobilenets export --format {wants}`")  # fmt: skip
    _require(backend)
    from .export.metadata import read_artifact_info

    artifact = read_artifact_info(path)
    _check_resolution(artifact, resolution, path)
    cls = {"litert": LiteRTPredictor, "onnxruntime": OnnxRuntimePredictor, "openvino": OpenVINOPredictor}[backend]
    crop = None if crop_fraction == 0.875 else crop_fraction
    return cls(path, artifact, crop, threads)


# --- auto ---------------------------------------------------------------------------------------


def time_interleaved(preds: dict[str, Predictor], batch: np.ndarray, runs: int = 20, warmup: int = 5) -> dict[str, np.ndarray]:
    """Seconds per call of each predictor, measured round-robin so they share the machine's noise."""
    calls = {k: p.probabilities if p.num_classes else p.embed for k, p in preds.items()}
    for call in calls.values():
        for _ in range(warmup):
            call(batch)
    times: dict[str, list[float]] = {k: [] for k in preds}
    for _ in range(runs):
        for k, call in calls.items():
            t = time.perf_counter()
            call(batch)
            times[k].append(time.perf_counter() - t)
    return {k: np.asarray(v) for k, v in times.items()}


def _file_key(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


# instruction sets that change which backend is fastest and by how much (VNNI: int8 dot products;
# native bf16: what OpenVINO and autocast do)
MACHINE_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def machine_id() -> str:
    """CPU model, count and the instruction sets that matter: what latency measurements are only valid for.

    Cloud CPUs often report only a family name ("AMD EPYC"), shared by machines with and
    without AVX-512; the flags keep their measurements and `auto` choices apart.
    """
    cpu, flags = platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        cpu = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    except OSError:
        pass
    isa = [f for f in MACHINE_ISA if f in flags]
    return f"{cpu} x{os.cpu_count()}" + (f" ({','.join(isa)})" if isa else "")


def auto_candidates(model: str | None, weights: str | os.PathLike | None, resolution: int | None,
                    key: str) -> list[tuple[str, str | os.PathLike | None]]:  # fmt: skip
    """(backend, weights) pairs that compute the same model: the artifact's engines, or torch + cached float exports."""
    fmt, path = _artifact(weights)
    if fmt == "onnx":
        return [(b, path) for b in ("onnxruntime", "openvino") if backend_available(b)]
    if fmt == "tflite":
        from .export.metadata import read_artifact_info

        pairs = [("litert", path)] if backend_available("litert") else []
        if not read_artifact_info(path).int8:  # float weights: the PyTorch module is the same model
            pairs.append(("torch", path))
        return pairs
    pairs: list[tuple[str, str | os.PathLike | None]] = [("torch", weights)]
    net, _, res = _torch_model(model, weights, resolution)
    engines = {"onnx": ("onnxruntime", "openvino"), "tflite": ("litert",)}
    wanted = [f for f, names in engines.items() if any(backend_available(b) for b in names)]
    for fmt_, out in cached_float_exports(net, key, res, wanted).items():
        pairs += [(b, out) for b in engines[fmt_] if backend_available(b)]
    return pairs


def cached_float_exports(net: torch.nn.Module, key: str, resolution: int,
                         formats: list[str] | tuple[str, ...] = ("onnx", "tflite")) -> dict[str, Path]:  # fmt: skip
    """Float copies of ``net`` in ``formats`` under `cache_dir` (exported once per ``key``), where the exporter is installed."""
    import importlib.util

    out = {}
    for fmt, needs in (("onnx", "onnx"), ("tflite", "litert_torch")):
        if fmt not in formats or importlib.util.find_spec(needs) is None:
            continue
        path = cache_dir() / "exports" / f"{key}_{resolution}.{fmt}"
        if not path.exists():
            from .export import export_model

            print(f"mobilenets: exporting a float .{fmt} copy to {path} (once)", file=sys.stderr)
            export_model(net, fmt, path, resolution=resolution)
        out[fmt] = path
    return out


def auto_predictor(model: str | None, weights: str | os.PathLike | None, resolution: int | None,
                   crop_fraction: float, threads: int | None) -> Predictor:  # fmt: skip
    """The fastest backend for these weights on this machine (measured once, then cached)."""
    _, path = _artifact(weights)
    key = _file_key(path) if path is not None and path.is_file() else f"{model}-{weights}"
    slot = f"{key}|{resolution}|{threads}|{machine_id()}"
    record = cache_dir() / "auto.json"
    choices = json.loads(record.read_text()) if record.is_file() else {}
    chosen = choices.get(slot)
    if chosen is not None and (chosen["weights"] is None or Path(chosen["weights"]).exists()):
        return load_predictor(model, chosen["weights"], chosen["backend"], resolution, crop_fraction, threads)
    candidates = auto_candidates(model, weights, resolution, key)
    if not candidates:
        raise MobilenetsError(f"no installed backend can run {weights}")
    preds = {b: load_predictor(model if w is weights else None, w, b, resolution, crop_fraction, threads)
             for b, w in candidates}  # fmt: skip
    size = next(iter(preds.values())).resolution
    timings = {b: float(np.median(t)) for b, t in time_interleaved(preds, np.zeros((1, 3, size, size), np.float32)).items()}
    fastest = min(timings, key=timings.get)
    chosen_weights = dict(candidates)[fastest]
    choices[slot] = {"backend": fastest, "weights": None if chosen_weights is None else str(chosen_weights),
                     "ms": {b: round(t * 1e3, 3) for b, t in timings.items()}}  # fmt: skip
    from .utils import atomic_write

    with atomic_write(record) as tmp:
        tmp.write_text(json.dumps(choices, indent=1))
    preds[fastest].info["auto"] = choices[slot]["ms"]
    return preds[fastest]
