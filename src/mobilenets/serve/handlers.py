"""Per-task request handling for the ``/v1/<task>`` routes: query parameters in, JSON out.

Each `TaskHandler` names the task module function it runs; the function is looked up once
when the app is made, so a task module written later plugs in with no change here:

- classify: `tasks.classify.classify_batch(predictor, batch, k, show_background)`;
- embed: ``predictor.embed(batch)``;
- detect: ``tasks.detect.detect_batch(predictor, batch, sizes, score_threshold, max_detections)``
  -> per image a list of detections (dicts or objects with ``as_dict()``: label,
  category_id, score, box in pixels);
- segment: ``tasks.segment.segment_batch(predictor, batch, sizes)`` -> per image a
  ``Segmentation`` (``class_fractions()``, ``mask_image()``, ``as_dict()``), or, while that
  does not exist, `tasks.segment.logits_to_mask` on the ``logits`` output.

``sizes`` are the decoded images' ``(height, width)``. The ``predictor`` a handler gets is a
`batching.BatchedPredictor`: its ``run`` is micro-batched with every other request.
A task whose module or function is missing answers 501 with the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .protocol import ProtocolError


def _int_param(params: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ProtocolError(f"{name} must be an integer, got {text[:20]!r}") from None
    if not lo <= value <= hi:
        raise ProtocolError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def _float_param(params: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    text = params.get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ProtocolError(f"{name} must be a number, got {text[:20]!r}") from None
    if not lo <= value <= hi:
        raise ProtocolError(f"{name} must be in [{lo}, {hi}], got {text[:20]}")
    return value


def _bool_param(params: dict[str, str], name: str) -> bool:
    text = params.get(name, "0").lower()
    if text not in ("0", "1", "true", "false", "yes", "no", ""):
        raise ProtocolError(f"{name} must be true or false, got {text[:20]!r}")
    return text in ("1", "true", "yes")


def _as_dict(item: Any) -> Any:
    if hasattr(item, "as_dict"):
        return item.as_dict()
    return item


@dataclass
class Answer:
    """One image's JSON answer, and (segment) the mask PNG for ``Accept: image/png``."""

    json: dict[str, Any]
    png: Callable[[], bytes] | None = None


@dataclass
class TaskHandler:
    task: str
    module: str
    function: str | None  # looked up in ``module``; None: needs only the module
    outputs: tuple[str, ...]  # what the model must declare
    run: Callable[..., list[Answer]]  # (fn, predictor, batch, sizes, params) -> answers
    requires: tuple[str, ...] = ()  # names the module must have when ``function`` is None
    fn: Callable | None = None
    missing: str | None = None  # why the task cannot run here (501)

    def resolve(self) -> TaskHandler:
        try:
            mod = importlib.import_module(self.module)
        except ImportError as e:
            self.missing = f"/v1/{self.task} is not available: {self.module} cannot be imported ({e})"
            return self
        if self.function is not None:
            self.fn = getattr(mod, self.function, None)
            if self.fn is None:
                self.missing = f"/v1/{self.task} is not available: {self.module}.{self.function} does not exist yet"
        else:
            absent = [] if hasattr(mod, "segment_batch") else [n for n in self.requires if not hasattr(mod, n)]
            if absent:
                self.missing = f"/v1/{self.task} is not available: {self.module} has no {', '.join(absent)}"
            self.fn = mod  # type: ignore[assignment]
        return self


def _classify(fn: Callable, predictor: Any, batch: np.ndarray, sizes: list, params: dict) -> list[Answer]:
    k = _int_param(params, "top_k", 5, 1, max(1, predictor.num_classes))
    preds = fn(predictor, batch, k, _bool_param(params, "show_background"))
    return [Answer({"predictions": [p.as_dict() for p in row]}) for row in preds]


def _embed(fn: Callable, predictor: Any, batch: np.ndarray, sizes: list, params: dict) -> list[Answer]:
    emb = predictor.embed(batch).astype(np.float32)
    if _bool_param(params, "l2"):
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return [Answer({"embedding": row.tolist(), "dim": int(row.shape[0])}) for row in emb]


def _detect(fn: Callable, predictor: Any, batch: np.ndarray, sizes: list, params: dict) -> list[Answer]:
    threshold = _float_param(params, "score_threshold", 0.5, 0.0, 1.0)
    limit = _int_param(params, "max_detections", 100, 1, 10000)
    wh = [(w, h) for h, w in sizes]  # tasks.detect takes (width, height)
    return [Answer({"detections": _detections(r)}) for r in fn(predictor, batch, wh, threshold, limit)]


def _detections(result: Any) -> list:
    """One image's detections: a list, or an object whose ``as_dict()`` has ``detections``."""
    if isinstance(result, (list, tuple)):
        return [_as_dict(d) for d in result]
    doc = _as_dict(result)
    if isinstance(doc, dict) and "detections" in doc:
        return [_as_dict(d) for d in doc["detections"]]
    return doc


def _png(image: Any) -> Callable[[], bytes]:
    def encode() -> bytes:
        import io

        buf = io.BytesIO()
        image().save(buf, format="PNG")
        return buf.getvalue()

    return encode


def _segment(mod: Any, predictor: Any, batch: np.ndarray, sizes: list, params: dict) -> list[Answer]:
    want_mask = _bool_param(params, "mask")
    segment_batch = getattr(mod, "segment_batch", None)
    if segment_batch is not None:
        segs = segment_batch(predictor, batch, sizes)
    else:
        logits = predictor.run(batch, ("logits",))["logits"]
        labels = mod.labels_of(predictor)
        segs = [mod.Segmentation("image", mod.logits_to_mask(lg, size), labels) for lg, size in zip(logits, sizes)]
    out = []
    for seg in segs:
        doc = {"width": seg.width, "height": seg.height, "classes": seg.class_fractions()}
        png = _png(seg.mask_image)
        if want_mask:  # the page asks for the mask inline
            import base64

            doc["mask_png"] = base64.b64encode(png()).decode()
        out.append(Answer(doc, png))
    return out


_SEGMENT_NEEDS = ("labels_of", "Segmentation", "logits_to_mask")  # unless it has segment_batch


def task_handlers() -> dict[str, TaskHandler]:
    """Every ``/v1`` task with its function resolved now (missing modules give 501 later)."""
    handlers = [
        TaskHandler("classify", "mobilenets.tasks.classify", "classify_batch", ("probabilities",), _classify),
        TaskHandler("embed", "mobilenets.tasks.embed", None, ("embedding",), _embed),
        TaskHandler("detect", "mobilenets.tasks.detect", "detect_batch", ("boxes", "classes", "scores", "count"),
                    _detect),
        TaskHandler("segment", "mobilenets.tasks.segment", None, ("logits",), _segment,
                    requires=_SEGMENT_NEEDS),
    ]
    return {h.task: h.resolve() for h in handlers}
