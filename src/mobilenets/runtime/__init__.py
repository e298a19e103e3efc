"""One `Predictor` over every backend: a preprocessed batch in, the model's named outputs out.

``predictor.run(batch) -> {output name: array}`` is the same on every backend for the same
model: a classifier gives ``probabilities`` and ``embedding``, an SSD ``boxes``/``classes``/
``scores``/``count``, a DeepLab ``logits``. ``predictor.outputs`` declares them
(`OutputSpec`), ``predictor.cfg`` is the weights' contract (`PretrainedCfg`) and
``predictor.transform`` the eval preprocessing it implies. Backends:

- ``torch``: the PyTorch module, run as its fused inference graph (`models.deploy`: BN
  folded, padding static, channels-last, inference mode);
- ``onnxruntime`` / ``openvino``: an ``.onnx`` from ``mobilenets export``;
- ``litert``: a ``.tflite`` from ``mobilenets export``, or one of Google's own files.

Every predictor is thread-safe: one instance may serve many threads at once. PyTorch and
ONNX Runtime sessions are re-entrant; LiteRT interpreters and OpenVINO infer requests are
not, so those predictors keep a pool and give each concurrent call its own.

`open_backend` builds one concrete backend; `mobilenets.auto.load_predictor` is the
public entry point (it also picks a backend when none is named).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.transforms import EvalTransform
from ..errors import MobilenetsError
from ..models.cfg import OutputSpec, PretrainedCfg
from ..utils import all_finite, x86_without_vnni
from .artifact import ArtifactError, ArtifactInfo, artifact_format, read_artifact_info

BACKENDS = ("torch", "onnxruntime", "litert", "openvino")
_MODULES = {"torch": "torch", "onnxruntime": "onnxruntime", "litert": "ai_edge_litert", "openvino": "openvino"}
_INSTALL = {"onnxruntime": "pip install 'mobilenets[onnx]'", "litert": "pip install 'mobilenets[tflite]'",
            "openvino": "pip install 'mobilenets[openvino]'"}  # fmt: skip

__all__ = ["BACKENDS", "ArtifactError", "ArtifactInfo", "Predictor", "artifact_format", "backend_available",
           "open_backend", "read_artifact_info"]  # fmt: skip


def backend_available(backend: str) -> bool:
    """Whether the package a backend needs is importable (torch always is)."""
    return importlib.util.find_spec(_MODULES[backend]) is not None


def require_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise MobilenetsError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}, auto")
    if not backend_available(backend):
        raise MobilenetsError(f"the {backend} backend is not installed: {_INSTALL[backend]}")


class Predictor:
    """Named outputs of one model from preprocessed N x 3 x H x W float32 batches (thread-safe)."""

    def __init__(self, backend: str, name: str, cfg: PretrainedCfg, outputs: Iterable[OutputSpec],
                 info: dict[str, Any] | None = None) -> None:  # fmt: skip
        self.backend, self.name, self.cfg = backend, name, cfg
        self.outputs: tuple[OutputSpec, ...] = tuple(outputs)
        self.info: dict[str, Any] = dict(info or {})

    # --- the contract, read from the cfg ---------------------------------------------------

    @property
    def task(self) -> str:
        return self.cfg.task

    @property
    def resolution(self) -> int:
        return self.cfg.resolution

    @property
    def num_classes(self) -> int:
        return self.cfg.num_classes

    @property
    def labels(self) -> list[str] | None:
        return list(self.cfg.labels) if self.cfg.labels else None

    @property
    def has_background(self) -> bool:
        return self.cfg.has_background

    @property
    def crop_fraction(self) -> float:
        return self.cfg.crop_fraction

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    @property
    def transform(self) -> EvalTransform:
        """The eval preprocessing of these weights (decode, crop, resize, normalisation)."""
        return EvalTransform.from_cfg(self.cfg)

    def label(self, index: int) -> str:
        labels = self.cfg.labels
        if labels and 0 <= index < len(labels):
            return labels[index]
        return str(index)

    def describe(self) -> dict[str, Any]:
        """What ran: for ``--json`` outputs and logs."""
        return {"model": self.name, "backend": self.backend, "weights": self.info.get("source") or self.cfg.source,
                **({"engine": self.info["engine"]} if "engine" in self.info else {})}  # fmt: skip

    # --- inference ----------------------------------------------------------------------

    def check_batch(self, batch: np.ndarray) -> np.ndarray:
        x = np.asarray(batch)
        c, h, w = self.cfg.input_size
        if x.ndim != 4 or x.shape[1:] != (c, h, w) or x.shape[0] < 1:
            raise MobilenetsError(f"{self.name} takes N x {c} x {h} x {w} batches, got {tuple(x.shape)}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not all_finite(x):
            raise MobilenetsError(f"{self.name}: the input batch holds NaN or Inf")
        return x

    def run(self, batch: np.ndarray, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """``{name: array}`` for ``outputs`` (default: all declared), batch dimension first."""
        wanted = self.output_names if outputs is None else tuple(outputs)
        unknown = [n for n in wanted if n not in self.output_names]
        if unknown:
            raise MobilenetsError(f"{self.name} has no output {unknown[0]!r} (it has {', '.join(self.output_names)})")
        result = self._run(self.check_batch(batch))
        out = {n: result[n] for n in wanted}
        for n, y in out.items():
            if y.dtype.kind == "f" and not all_finite(y):
                raise MobilenetsError(f"{self.name}: output {n!r} is not finite (NaN/Inf): the weights are broken")
        return out

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Softmax probabilities, N x num_classes (classifiers)."""
        if "probabilities" not in self.output_names:
            raise MobilenetsError(f"{self.name} has no classifier output (it gives {', '.join(self.output_names)})")
        return self.run(batch, ("probabilities",))["probabilities"]

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """Pooled pre-logits features, N x C."""
        if "embedding" not in self.output_names:
            raise MobilenetsError(f"{self.name} has no embedding output (it gives {', '.join(self.output_names)})")
        return self.run(batch, ("embedding",))["embedding"]


class _Pool:
    """Objects that serve one call at a time (interpreters, infer requests), one per concurrent caller."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self._make, self._free = make, queue.SimpleQueue()
        self._free.put(make())  # the first is made eagerly: load errors surface at load time

    def run(self, fn: Callable[[Any], Any]) -> Any:
        try:
            item = self._free.get_nowait()
        except queue.Empty:
            item = self._make()
        try:
            return fn(item)
        finally:
            self._free.put(item)


# --- torch ------------------------------------------------------------------------------------


class TorchPredictor(Predictor):
    """Any model with ``outputs`` and ``predict`` (MobileNet v1, SSD, DeepLab), run as its fused inference graph."""

    def __init__(self, model: torch.nn.Module, name: str | None = None, threads: int | None = None,
                 cfg: PretrainedCfg | None = None) -> None:  # fmt: skip
        from ..models.deploy import DeployModule

        cfg = cfg or getattr(model, "pretrained_cfg", None)
        if not isinstance(cfg, PretrainedCfg):
            raise MobilenetsError(f"{type(model).__name__} has no pretrained_cfg")
        name = name or getattr(model, "name", None) or cfg.arch
        super().__init__("torch", name, cfg, model.outputs, {"source": cfg.source})
        if threads:
            torch.set_num_threads(threads)  # process-wide in PyTorch: only when asked for
        self.module = DeployModule(model, cfg.input_size).to(memory_format=torch.channels_last).eval()

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            if x.flags.writeable:
                t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            else:  # a read-only view (a request body): numpy makes the channels-last copy torch would
                t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, 1, -1))).permute(0, 3, 1, 2)
            ys = self.module(t)
        return {n: y.contiguous().numpy() for n, y in zip(self.module.names, ys)}


# --- exported artifacts -----------------------------------------------------------------------


class ArtifactPredictor(Predictor):
    """An exported model file run by some engine; subclasses implement `_raw` -> {tensor name: array}."""

    def __init__(self, backend: str, path: Path, artifact: ArtifactInfo, cfg: PretrainedCfg | None = None) -> None:
        super().__init__(backend, artifact.name, cfg or artifact.cfg, artifact.outputs,
                         {"source": str(path), "format": artifact.format, "int8": artifact.int8,
                          "input_dtype": artifact.input_dtype})  # fmt: skip
        self.path, self.artifact = path, artifact
        self._dequant: dict[str, tuple[float, int]] = {}

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> what the model's input tensor takes (layout, dtype, quantization)."""
        a = self.artifact
        if a.layout == "NHWC":
            x = x.transpose(0, 2, 3, 1)
        if a.input_dtype != "float32":
            scale, zero = a.input_quantization
            info = np.iinfo(a.input_dtype)
            x = np.clip(np.rint(x / np.float32(scale)) + zero, info.min, info.max).astype(a.input_dtype)
        return np.ascontiguousarray(x)

    def _raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raw = self._raw(self.prepare(x))
        out = {}
        for spec in self.outputs:
            tensor = self.artifact.tensors[spec.name]
            y = raw[tensor]
            if tensor in self._dequant:
                scale, zero = self._dequant[tensor]
                y = (y.astype(np.float32) - zero) * np.float32(scale)
            if spec.name in self.artifact.transpose:
                y = y.transpose(self.artifact.transpose[spec.name])
            if all(d > 0 for d in spec.shape[1:]):  # e.g. an extractor's 1 x 1 x 1 x C -> N x C
                y = y.reshape((len(x), *spec.shape[1:]))
            out[spec.name] = np.ascontiguousarray(y, dtype=np.float32)
        return out


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else type(error).__name__


def raise_artifact_error(path: Path, error: Exception) -> None:
    raise ArtifactError(f"{path}: cannot load the model ({_first_line(error)})") from None


class OnnxRuntimePredictor(ArtifactPredictor):
    def __init__(self, path: Path, artifact: ArtifactInfo, cfg: PretrainedCfg | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        import onnxruntime as ort

        super().__init__("onnxruntime", path, artifact, cfg)
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
        self.names = [o.name for o in self.session.get_outputs()]
        q = artifact.quantization or {}
        if q.get("weight_bits") == 8 and x86_without_vnni():
            warnings.warn(f"{path.name}: int8 .onnx with 8-bit weights on an x86 CPU without VNNI, where ONNX Runtime's "
                          "int16 sums can saturate and lose accuracy; export it on this machine (7-bit weights) or "
                          "run the int8 .tflite", stacklevel=2)  # fmt: skip

    def _raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(self.names, {self.input_name: x})))  # re-entrant


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
    def __init__(self, path: Path, artifact: ArtifactInfo, cfg: PretrainedCfg | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        ov = import_openvino()

        super().__init__("openvino", path, artifact, cfg)
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
        wanted = set(artifact.tensors.values())
        self.names = [next(iter(sorted(o.get_names() & wanted) or o.get_names())) for o in compiled.outputs]
        # An infer request holds its input/output buffers: one per concurrent call.
        self._requests = _Pool(compiled.create_infer_request)

    def _raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        def infer(request) -> dict[str, np.ndarray]:
            result = request.infer({0: x})
            return {name: np.array(result[i]) for i, name in enumerate(self.names)}  # copied before release

        return self._requests.run(infer)


class LiteRTPredictor(ArtifactPredictor):
    def __init__(self, path: Path, artifact: ArtifactInfo, cfg: PretrainedCfg | None = None,
                 threads: int | None = None) -> None:  # fmt: skip
        from ai_edge_litert.interpreter import Interpreter

        super().__init__("litert", path, artifact, cfg)
        model_bytes = path.read_bytes()

        def make():
            it = Interpreter(model_content=model_bytes, num_threads=threads or os.cpu_count() or 1)
            it.allocate_tensors()
            return it

        try:
            self._interpreters = _Pool(make)
        except (ValueError, RuntimeError) as e:
            raise_artifact_error(path, e)
        first = self._interpreters.run(lambda it: it)
        self.input = first.get_input_details()[0]
        self.output_details = first.get_output_details()
        for o in self.output_details:
            scale, zero = o["quantization"]
            if o["dtype"] != np.float32 and scale:
                self._dequant[o["name"]] = (scale, zero)

    def _raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        # Exported graphs have batch 1 baked into their reshapes: run the images one by one.
        def invoke(it) -> list[dict[str, np.ndarray]]:
            outs = []
            for i in range(len(x)):
                it.set_tensor(self.input["index"], x[i : i + 1])
                it.invoke()
                outs.append({o["name"]: it.get_tensor(o["index"]).copy() for o in self.output_details})
            return outs

        outs = self._interpreters.run(invoke)
        return {o["name"]: np.concatenate([r[o["name"]] for r in outs]) for o in self.output_details}


# --- building one backend ---------------------------------------------------------------------

_ENGINES: dict[str, type[ArtifactPredictor]] = {"litert": LiteRTPredictor, "onnxruntime": OnnxRuntimePredictor,
                                                "openvino": OpenVINOPredictor}  # fmt: skip
_FORMAT_OF = {"litert": "tflite", "onnxruntime": "onnx", "openvino": "onnx"}


def open_backend(backend: str, weights: str | os.PathLike | None = None, model: torch.nn.Module | None = None,
                 crop_fraction: float | None = None, threads: int | None = None) -> Predictor:  # fmt: skip
    """A predictor on ``backend``: a built ``model`` for torch, an exported file for the others.

    ``crop_fraction`` overrides the weights' own central crop (1.0 = the whole image).
    """
    require_backend(backend)
    if backend == "torch":
        if model is None:
            raise MobilenetsError("the torch backend needs a model (build one from weights first)")
        cfg = model.pretrained_cfg
        if crop_fraction is not None:
            cfg = cfg.replace(crop_fraction=crop_fraction)
        return TorchPredictor(model, threads=threads, cfg=cfg)
    path = Path(weights) if weights is not None else None
    fmt = artifact_format(path) if path is not None else None
    wants = _FORMAT_OF[backend]
    if fmt != wants:
        what = f"{path.name} is a .{fmt} model" if fmt else f"{weights} is not an exported .{wants} model"
        hint = {"tflite": "litert (or torch)", "onnx": "onnxruntime or openvino"}.get(fmt, "torch")
        raise MobilenetsError(f"the {backend} backend runs .{wants} files and {what}: use --backend {hint}, "
                              f"or make one with `mobilenets export --format {wants}`")  # fmt: skip
    artifact = read_artifact_info(path)
    cfg = artifact.cfg if crop_fraction is None else artifact.cfg.replace(crop_fraction=crop_fraction)
    return _ENGINES[backend](path, artifact, cfg, threads)
