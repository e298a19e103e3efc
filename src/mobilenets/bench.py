"""Latency of MobileNet v1 configs across backends, joined with published accuracy.

`run_bench` measures every (config, backend, precision, threads) it is asked for on this
machine: weights are random (latency does not depend on their values; accuracy comes
from the published tables), exports are cached, and all predictors of one thread count
are timed *interleaved* (one call each, round after round) so that load from other
processes hits them alike. Each row keeps the median and p90 of those calls.

Results are stored as JSON (`results_path`: ``$MOBILENETS_HOME/bench.json`` unless a file
is given) and merged by key, so `pick` answers from what was measured here.
`pareto_plot` draws top-1 against latency with the Pareto front.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .auto import CHOICES, cached_float_export, load_predictor, time_interleaved
from .errors import MobilenetsError
from .runtime import Predictor, backend_available
from .utils import atomic_write, cache_dir, file_key, machine_id


@dataclass
class BenchRow:
    """One measured configuration."""

    model: str
    alpha: float
    resolution: int
    backend: str  # as asked; for auto, `engine` says what it chose
    engine: str
    int8: bool
    threads: int
    batch: int
    median_ms: float
    p90_ms: float
    runs: int
    top1: float | None  # published ImageNet top-1 (float: 2018 release; int8: Google's QAT _quant release)
    machine: str

    @property
    def key(self) -> tuple:
        return self.machine, self.model, self.backend, self.int8, self.threads, self.batch


def published_top1(model: str, int8: bool) -> float | None:
    from .models.registry import CATALOG

    entry = CATALOG.get(f"{model}_quant" if int8 else model)
    return entry.cfg.metrics.get("top1") if entry is not None else None


def results_path(path: str | os.PathLike | None = None) -> Path:
    return Path(path) if path else cache_dir() / "bench.json"


def load_results(path: str | os.PathLike | None = None) -> list[BenchRow]:
    p = results_path(path)
    if not p.is_file():
        raise MobilenetsError(f"no measurements in {p}: run `mobilenets bench` first (or pass --results FILE)")
    try:
        names = {f.name for f in fields(BenchRow)}
        return [BenchRow(**{k: v for k, v in r.items() if k in names}) for r in json.loads(p.read_text())]
    except (ValueError, TypeError) as e:
        raise MobilenetsError(f"{p}: not a bench results file ({e})") from None


def save_results(rows: list[BenchRow], path: str | os.PathLike | None = None) -> Path:
    """Merge ``rows`` into the results file (a newer measurement replaces the same key)."""
    p = results_path(path)
    old = load_results(p) if p.is_file() else []
    merged = {r.key: r for r in old}
    merged.update({r.key: r for r in rows})
    with atomic_write(p) as tmp:
        tmp.write_text(json.dumps([asdict(r) for r in merged.values()], indent=1))
    return p


def _artifacts(name: str, int8: bool, workdir: Path, calibration: np.ndarray | None,
               formats: set[str]) -> tuple[Path, dict[str, Path]]:  # fmt: skip
    """A seeded random-init model saved as safetensors, plus its exports in ``formats``."""
    from .builder import create_model
    from .export import export_model
    from .models.registry import get_spec
    from .weights import save_weights

    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    weights = workdir / f"{name}.safetensors"
    if not weights.exists():
        save_weights(model, weights)
    if not int8:  # the same float copy `auto` uses, and a float .tflite
        key = file_key(weights)
        out = {fmt: cached_float_export(model, key, fmt, progress=False) for fmt in sorted(formats)}
        return weights, {k: v for k, v in out.items() if v is not None}
    out = {}
    for fmt in sorted(formats):
        path = workdir / f"{name}{'_int8' if int8 else ''}.{fmt}"
        if not path.exists():
            calib = calibration if calibration is not None else _synthetic_calibration(spec.resolution)
            export_model(model, fmt, path, calibration=calib)
        out[fmt] = path
    return weights, out


def _synthetic_calibration(resolution: int) -> np.ndarray:
    from .export import synthetic_images

    return synthetic_images((3, resolution, resolution), count=16)


def _predictors(name: str, backends: list[str], int8: bool, threads: int, workdir: Path,
                calibration: np.ndarray | None) -> dict[str, Predictor]:  # fmt: skip
    formats = set()
    for b in backends:
        if b in ("onnxruntime", "openvino") or (b == "auto" and int8):
            formats.add("onnx")
        if b == "litert":
            formats.add("tflite")
    if "auto" in backends and not int8:  # auto weighs every installed engine: give it every float copy now
        formats |= {"onnx", "tflite"}
    weights, arts = _artifacts(name, int8, workdir, calibration, formats)
    preds = {}
    for b in backends:
        if b == "torch":
            if int8:
                continue  # PyTorch runs the float module only
            preds[b] = load_predictor(weights=weights, backend="torch", threads=threads)
        elif b == "auto":
            preds[b] = load_predictor(weights=arts["onnx"] if int8 else weights, backend="auto", threads=threads)
        else:
            preds[b] = load_predictor(weights=arts["onnx" if b != "litert" else "tflite"], backend=b, threads=threads)
    return preds


def run_bench(models: list[str], backends: list[str], int8_modes: list[bool], threads: list[int], batch: int = 1,
              runs: int = 50, workdir: str | os.PathLike | None = None,
              calibration: np.ndarray | None = None) -> list[BenchRow]:  # fmt: skip
    """Measure every (model, backend, precision, threads); see the module docstring."""
    from .models.registry import get_spec

    unknown = [b for b in backends if b not in CHOICES]
    if unknown:
        raise MobilenetsError(f"unknown backend(s) {unknown}; available: {', '.join(CHOICES)}")
    missing = [b for b in backends if b != "auto" and not backend_available(b)]
    if missing:
        raise MobilenetsError(f"backend(s) not installed: {', '.join(missing)}")
    import importlib.util

    if "litert" in backends and importlib.util.find_spec("litert_torch") is None:
        raise MobilenetsError("benchmarking litert exports .tflite files: pip install 'mobilenets[litert]'")
    work = Path(workdir) if workdir else cache_dir() / "bench"
    work.mkdir(parents=True, exist_ok=True)
    rows, machine = [], machine_id()
    jobs = [(m, q, t) for m in models for q in int8_modes for t in threads]
    for name, int8, nthreads in tqdm(jobs, desc="bench", unit="config", file=sys.stderr, disable=None):
        spec = get_spec(name)
        preds = _predictors(name, backends, int8, nthreads, work, calibration)
        x = np.random.default_rng(0).uniform(-1, 1, (batch, 3, spec.resolution, spec.resolution)).astype(np.float32)
        for backend, t in time_interleaved(preds, x, runs).items():
            rows.append(BenchRow(
                model=name, alpha=spec.alpha, resolution=spec.resolution, backend=backend,
                engine=preds[backend].backend, int8=int8, threads=nthreads, batch=batch,
                median_ms=round(float(np.median(t)) * 1e3, 3), p90_ms=round(float(np.percentile(t, 90)) * 1e3, 3),
                runs=len(t), top1=published_top1(name, int8), machine=machine,
            ))  # fmt: skip
    return rows


# --- pick ------------------------------------------------------------------------------------------


@dataclass
class Pick:
    best: BenchRow | None  # the most accurate config that fits
    faster: BenchRow | None  # the runner-up below it: next most accurate that fits
    slower: BenchRow | None  # the runner-up above it: the next more accurate one, which does not fit
    machines: tuple[str, ...] = ()  # whose measurements these are (`machine_id`)


def pick(rows: list[BenchRow], latency_ms: float, backend: str | None = None, int8: bool | None = None,
         threads: int | None = None, any_machine: bool = False) -> Pick:  # fmt: skip
    """The most accurate measured config with median latency <= ``latency_ms`` (each config at its fastest backend).

    Only rows measured on this machine (`machine_id`) count, unless there are none (then all
    rows do) or ``any_machine``; ``Pick.machines`` says whose rows answered, so a caller can
    say so when they are another machine's.
    """
    here = machine_id()
    if not any_machine and any(r.machine == here for r in rows):  # a results file may hold other machines' rows
        rows = [r for r in rows if r.machine == here]
    keep = [r for r in rows if r.top1 is not None and (backend is None or r.backend == backend)
            and (int8 is None or r.int8 == int8) and (threads is None or r.threads == threads)]  # fmt: skip
    if not keep:
        raise MobilenetsError("no measured configs match (check --backend/--int8/--threads, or run `mobilenets bench`)")
    fastest: dict[tuple, BenchRow] = {}
    for r in keep:
        k = (r.model, r.int8)
        if k not in fastest or r.median_ms < fastest[k].median_ms:
            fastest[k] = r
    ranked = sorted(fastest.values(), key=lambda r: (-r.top1, r.median_ms))
    fits = [r for r in ranked if r.median_ms <= latency_ms]
    best = fits[0] if fits else None
    faster = fits[1] if len(fits) > 1 else None
    above = [r for r in ranked if r.median_ms > latency_ms and (best is None or r.top1 > best.top1)]
    slower = min(above, key=lambda r: r.top1) if above else None
    return Pick(best, faster, slower, tuple(sorted({r.machine for r in keep})))


# --- plot ------------------------------------------------------------------------------------------


def pareto_front(rows: list[BenchRow]) -> list[BenchRow]:
    """Rows no other row beats on both latency and top-1, fastest first."""
    ranked = sorted((r for r in rows if r.top1 is not None), key=lambda r: (r.median_ms, -r.top1))
    front, best = [], -1.0
    for r in ranked:
        if r.top1 > best:
            front.append(r)
            best = r.top1
    return front


def pareto_plot(rows: list[BenchRow], out: str | os.PathLike, threads: int | None = None, batch: int | None = None) -> Path:
    """Top-1 vs median latency at one thread count and batch (default: the smallest measured), one marker per
    backend (hollow = int8), the Pareto front drawn and labelled."""
    try:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MobilenetsError("--plot needs matplotlib: pip install 'mobilenets[plot]'") from None
    rows = [r for r in rows if r.top1 is not None]
    if not rows:
        raise MobilenetsError("nothing to plot: no measured row has a published top-1")
    threads = threads or min(r.threads for r in rows)
    batch = batch or min(r.batch for r in rows)
    rows = [r for r in rows if r.threads == threads and r.batch == batch]
    if not rows:
        raise MobilenetsError(f"nothing measured at {threads} thread(s), batch {batch}")
    fig, ax = plt.subplots(figsize=(9, 6), dpi=120)
    markers = {"torch": "o", "onnxruntime": "s", "litert": "^", "openvino": "D", "auto": "*"}
    colors = {"torch": "tab:purple", "onnxruntime": "tab:green", "litert": "tab:orange", "openvino": "tab:red",
              "auto": "tab:blue"}  # fmt: skip
    for backend in sorted({r.backend for r in rows}):
        for int8 in (False, True):
            sel = [r for r in rows if r.backend == backend and r.int8 == int8]
            if not sel:
                continue
            color = colors.get(backend, "tab:gray")
            ax.scatter([r.median_ms for r in sel], [r.top1 for r in sel], marker=markers.get(backend, "x"), alpha=0.75,
                       s=90 if backend == "auto" else 40, edgecolors=color, linewidths=1.2,
                       facecolors="none" if int8 else color, label=f"{backend} {'int8' if int8 else 'fp32'}")  # fmt: skip
    front = pareto_front(rows)
    ax.plot([r.median_ms for r in front], [r.top1 for r in front], "k--", lw=1, label="Pareto front")
    for i, r in enumerate(front):  # labels alternate right-below / left-above so neighbours do not collide
        short = r.model.replace("mobilenet_v1_", "") + (" int8" if r.int8 else "")
        offset, align = ((8, -12), "left") if i % 2 == 0 else ((-8, 6), "right")
        ax.annotate(f"{short} ({r.engine})", (r.median_ms, r.top1), textcoords="offset points", xytext=offset,
                    fontsize=7, ha=align, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("median latency per image, ms (log scale)")
    ax.set_ylabel("published ImageNet top-1, %")
    ax.set_title(f"MobileNet v1 on this machine: published top-1 vs measured latency\n"
                 f"batch {batch}, {threads} thread(s), {rows[0].machine}; filled = fp32, hollow = int8", fontsize=10)  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(out)
    with atomic_write(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out
