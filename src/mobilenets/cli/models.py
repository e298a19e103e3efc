"""``mobilenets models | table | profile``: the registry and its measured costs."""

from __future__ import annotations

import argparse

from ..builder import create_model
from ..models.registry import get_spec, list_models, mobilenet_v1
from ..profile import profile_model
from ._common import MAX_ALPHA, MAX_RESOLUTION, alpha_float, format_table, int_in, print_json, resolution_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered model names")
    p.add_argument("pattern", nargs="?", default="*", help="shell wildcard, e.g. '*_224'")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("table", help="the 16 official configs: measured MACs/params beside the published table")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_table)

    p = sub.add_parser("profile", help="MACs and params of any config, measured on the module")
    p.add_argument("--model", help="a registered name (default: built from --alpha/--resolution)")
    p.add_argument("--alpha", type=alpha_float, help=f"width multiplier in (0, {MAX_ALPHA:g}] (default: the model's, else 1.0)")
    p.add_argument("--resolution", type=resolution_int, help=f"input side, 32..{MAX_RESOLUTION} (default: the model's, else 224)")
    p.add_argument("--classes", type=int_in(0, 100_000, "classes"), default=1001, help="classifier outputs (0: backbone only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_profile)


def cmd_models(args: argparse.Namespace) -> int:
    for name in list_models(args.pattern):
        print(name)
    return 0


def table_rows() -> list[dict]:
    """One dict per registered config: measured counts and the 2017 published figures."""
    rows = []
    for name in list_models():
        spec = get_spec(name)
        prof = profile_model(create_model(name), spec.resolution)
        pub = spec.paper
        rows.append(
            {
                "name": name,
                "alpha": spec.alpha,
                "resolution": spec.resolution,
                "macs": prof.macs,
                "params": prof.params,
                "params_table": prof.params_table,
                "published": pub.as_dict(),
                # "match" means equal to the precision the table prints (1M MACs, 0.01M params)
                "macs_match": round(prof.macs / 1e6) == pub.macs_m,
                "params_match": round(prof.params_table / 1e6, 2) == pub.params_m,
            }
        )
    return rows


def cmd_table(args: argparse.Namespace) -> int:
    rows = table_rows()
    if args.json:
        print_json(rows)
        return 0
    headers = ["model", "MACs (M)", "published", "params_table (M)", "published", "params (M)", "top-1", "top-5", "match"]
    body = []
    for r in rows:
        pub = r["published"]
        match = "MACs+params" if r["macs_match"] and r["params_match"] else ("params only" if r["params_match"] else "MACs only" if r["macs_match"] else "neither")
        body.append(
            [r["name"], f"{r['macs'] / 1e6:.1f}", pub["macs_m"], f"{r['params_table'] / 1e6:.3f}", f"{pub['params_m']:.2f}",
             f"{r['params'] / 1e6:.3f}", pub["top1"], pub["top5"], match]
        )  # fmt: skip
    print(format_table(headers, body))
    print("\nMeasured by running each module (hooks on every conv); published = 2017 release table.")
    print("MACs: stem, depthwise, pointwise and logits convs; params_table: conv weights + beta,")
    print("moving mean/variance + logits (the table's convention); params: trainable tensors (adds BN gamma).")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.model:
        spec = get_spec(args.model)
        alpha = args.alpha or spec.alpha
        resolution = args.resolution or spec.resolution
    else:
        alpha = args.alpha or 1.0
        resolution = args.resolution or 224
    model = mobilenet_v1(alpha=alpha, resolution=resolution, num_classes=args.classes)
    prof = profile_model(model, resolution)
    out = {"name": model.name, "alpha": alpha, "resolution": resolution, "num_classes": args.classes,
           "macs": prof.macs, "params": prof.params, "params_table": prof.params_table}  # fmt: skip
    if args.json:
        print_json(out)
    else:
        print(f"{out['name']} ({args.classes} classes): {prof.macs / 1e6:.1f}M MACs, "
              f"{prof.params / 1e6:.3f}M params ({prof.params_table / 1e6:.3f}M in the table's convention)")  # fmt: skip
    return 0
