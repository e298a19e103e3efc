"""``mobilenets export | bench | pick``: artifacts, their latency here, and the config that fits a budget."""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError, MobilenetsError
from ._common import (
    batch_int,
    check_output,
    crop_float,
    flatten,
    format_table,
    int_in,
    list_of,
    path_arg,
    positive_float,
    print_json,
    resolution_int,
    threads_int,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export to .tflite (LiteRT) or .onnx, float or int8, with a parity report")
    p.add_argument("--model", help="registered name (default: read the config from --weights)")
    p.add_argument("--weights", required=True, type=path_arg, help="weights file (.safetensors, .tflite, ...) or 'imagenet'")
    p.add_argument("--format", required=True, choices=("tflite", "onnx"))
    p.add_argument("--resolution", type=resolution_int, help="input size of the artifact (default: the model's)")
    p.add_argument("--int8", action="store_true", help="full-integer int8, statically calibrated on --calibration")
    p.add_argument("--calibration", help="folder of images to calibrate on (yours, never the evaluation set)")
    p.add_argument("--calibration-size", type=int_in(1, 100_000, "calibration size"), default=200,
                   help="images drawn from --calibration")  # fmt: skip
    p.add_argument("--input-type", choices=("int8", "uint8"), default="uint8",
                   help="int8 .tflite input type (default uint8: what MediaPipe and the Task Library take)")
    p.add_argument("--images", help="folder of images for the parity report (default: the calibration images)")
    p.add_argument("--crop", type=crop_float, help="central crop fraction in (0, 1] recorded in the artifact "
                   "(default: the weights')")  # fmt: skip
    p.add_argument("-o", "--output", required=True, type=path_arg, help="artifact to write")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="latency per config and backend on this machine, joined with published top-1")
    p.add_argument("--models", "--model", nargs="+", type=list_of(str, "model names"), default=[["mobilenet_v1_1.0_224"]],
                   help="names, shell wildcards or 'all' (space- or comma-separated)")  # fmt: skip
    p.add_argument("--backend", "--backends", dest="backends", nargs="+", type=list_of(str, "backends"), default=None,
                   help="space- or comma-separated (default: every installed one, and auto)")  # fmt: skip
    p.add_argument("--int8", action="store_true", help="measure int8 artifacts too (float always)")
    p.add_argument("--threads", nargs="+", type=list_of(threads_int, "thread counts"), default=[[1]],
                   help="space- or comma-separated, e.g. 1 2 or 1,2")  # fmt: skip
    p.add_argument("--batch-size", "--batch", dest="batch", nargs="+", type=list_of(batch_int, "batch sizes"),
                   default=[[1]], help="images per call (space- or comma-separated)")  # fmt: skip
    p.add_argument("--runs", type=int_in(1, 100_000, "runs"), default=50, help="timed calls per predictor (interleaved)")
    p.add_argument("--calibration", help="int8 calibration images (default: synthetic; latency does not depend on them)")
    p.add_argument("--results", help="results JSON to merge into (default: $MOBILENETS_HOME/bench.json)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--plot", help="write the accuracy-vs-latency Pareto plot (PNG) of the stored results "
                   "at the smallest --threads and --batch")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("pick", help="the most accurate measured config that fits a latency budget")
    p.add_argument("--latency-ms", type=positive_float, required=True)
    p.add_argument("--backend", help="only this backend")
    p.add_argument("--int8", action="store_true", help="only int8 artifacts")
    p.add_argument("--threads", type=threads_int, help="only measurements at this thread count")
    p.add_argument("--any-machine", action="store_true",
                   help="use rows of every machine (default: this machine's, when it has any)")  # fmt: skip
    p.add_argument("--results", help="bench results JSON (default: $MOBILENETS_HOME/bench.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pick)


def cmd_export(args: argparse.Namespace) -> int:
    from ..auto import build_torch_model
    from ..data.transforms import EvalTransform
    from ..export import export_model
    from ..quantize import calibration_images, load_batch
    from ..utils import quiet_native

    check_output(args.output, suffixes=(f".{args.format}",))
    if args.int8 and not args.calibration:
        raise ConfigError("--int8 needs --calibration DIR (a folder of your images; never the evaluation set)")
    if args.calibration and not args.int8:
        raise ConfigError("--calibration is for --int8 exports (parity images go to --images)")
    _require_exporter(args.format)
    model = build_torch_model(args.model, args.weights, args.resolution)
    cfg = model.pretrained_cfg if args.crop is None else model.pretrained_cfg.replace(crop_fraction=args.crop)
    transform = EvalTransform.from_cfg(cfg)
    calibration = None
    if args.int8:
        calibration = calibration_images(args.calibration, transform, args.calibration_size)
    images, source = None, "images"
    if args.images:
        from ..quantize import image_files

        images = load_batch(image_files(args.images, size=None, purpose="check parity on"), transform)
        source = f"images from {args.images}"
    print(f"mobilenets: exporting {model.name} to {args.output} ({args.format}, {'int8' if args.int8 else 'float'})...",
          file=sys.stderr)  # fmt: skip
    with quiet_native():  # the converters log on fds 1/2
        result = export_model(model, args.format, args.output, calibration=calibration, input_dtype=args.input_type,
                              parity_images=images, parity_source=source, crop_fraction=args.crop)  # fmt: skip
    if args.json:
        print_json(result.as_dict())
    else:
        size = result.path.stat().st_size
        print(f"wrote {result.path} ({size / 1e6:.2f} MB, {result.info.format}, "
              f"{'int8, ' + result.info.input_dtype + ' input' if result.info.int8 else 'float32'})")  # fmt: skip
        print(result.parity)
    return 0


def _require_exporter(fmt: str) -> None:
    if fmt == "tflite":
        from ..export.litert import require_litert_torch

        require_litert_torch()
    else:
        from ..export.onnx import require_onnx

        require_onnx()


def _models(patterns: list[str]) -> list[str]:
    from ..models.registry import list_models

    names = []
    for pat in patterns:
        found = list_models("*" if pat == "all" else pat)
        if not found:
            raise ConfigError(f"unknown model {pat!r} (see `mobilenets models`)")
        names += [n for n in found if n not in names]
    return names


def _rows_table(rows) -> str:
    body = [[r.model.replace("mobilenet_v1_", ""), "int8" if r.int8 else "fp32", r.backend + (f" ({r.engine})" if r.backend == "auto" else ""),
             r.threads, r.batch, f"{r.median_ms:.2f}", f"{r.p90_ms:.2f}", "-" if r.top1 is None else f"{r.top1:.1f}"]
            for r in rows]  # fmt: skip
    return format_table(["config", "precision", "backend", "threads", "batch", "median ms", "p90 ms", "top-1"], body,
                        "lllrrrrr")  # fmt: skip


def cmd_bench(args: argparse.Namespace) -> int:
    from ..bench import load_results, pareto_plot, run_bench, save_results
    from ..runtime import backend_available

    args.threads, args.batch = flatten(args.threads), flatten(args.batch)
    backends = flatten(args.backends) or [b for b in ("torch", "onnxruntime", "litert", "openvino")
                                          if backend_available(b)] + ["auto"]  # fmt: skip
    models = _models(flatten(args.models))
    if args.results:
        check_output(args.results, "--results", suffixes=(".json",))
    if args.plot:
        check_output(args.plot, "--plot", suffixes=(".png",))
    calibration = None
    if args.calibration:
        from ..quantize import calibration_images

        if len({_res(m) for m in models}) > 1:
            raise ConfigError("--calibration with several resolutions: bench one resolution at a time")
        from ..data.transforms import EvalTransform

        calibration = calibration_images(args.calibration, EvalTransform(_res(models[0])), size=32)
    rows = []
    for batch in args.batch:
        rows += run_bench(models, backends, [False, True] if args.int8 else [False], args.threads, batch, args.runs,
                          calibration=calibration)  # fmt: skip
    path = save_results(rows, args.results)
    if args.json:
        from dataclasses import asdict

        print_json([asdict(r) for r in rows])
    else:
        print(_rows_table(sorted(rows, key=lambda r: (r.model, r.int8, r.threads, r.median_ms))))
        print(f"\nmedian/p90 of {args.runs} interleaved calls each; top-1: published (int8: Google's _quant release). "
              f"Stored in {path}.")  # fmt: skip
    if args.plot:
        out = pareto_plot(load_results(path), args.plot, threads=min(args.threads), batch=min(args.batch))
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _res(name: str) -> int:
    from ..models.registry import get_spec

    return get_spec(name).resolution


def cmd_pick(args: argparse.Namespace) -> int:
    from ..bench import load_results, pick

    rows = load_results(args.results)
    choice = pick(rows, args.latency_ms, args.backend, True if args.int8 else None, args.threads,
                  any_machine=args.any_machine)  # fmt: skip
    from ..utils import machine_id

    if not args.any_machine and machine_id() not in choice.machines:
        print(f"mobilenets: warning: nothing was measured on this machine ({machine_id()}); answering from "
              f"{', '.join(choice.machines)} (run `mobilenets bench` here for numbers that hold here)",
              file=sys.stderr)  # fmt: skip
    if args.json:
        print_json({"best": _d(choice.best), "faster": _d(choice.faster), "slower": _d(choice.slower)})
        return 0
    if choice.best is None:
        fastest = choice.slower
        raise MobilenetsError(f"nothing measured fits {args.latency_ms:g} ms; the fastest is "
                              f"{_line(fastest)}" if fastest else f"nothing measured fits {args.latency_ms:g} ms")  # fmt: skip
    print(f"pick:        {_line(choice.best)}")
    print(f"runner-up:   {_line(choice.faster) if choice.faster else '(none faster)'}  [faster, less accurate]")
    print(f"over budget: {_line(choice.slower) if choice.slower else '(none more accurate)'}  [more accurate, too slow]")
    return 0


def _d(row) -> dict | None:
    from dataclasses import asdict

    return None if row is None else asdict(row)


def _line(r) -> str:
    precision = "int8" if r.int8 else "fp32"
    engine = f"{r.backend} ({r.engine})" if r.backend == "auto" else r.backend
    return (f"{r.model} {precision} on {engine}, {r.threads} thread(s): {r.median_ms:.2f} ms median "
            f"(p90 {r.p90_ms:.2f}), published top-1 {r.top1:.1f}%")
