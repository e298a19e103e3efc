"""``mobilenets train | finetune | recipes``: training from scratch, fine-tuning, and the recipes as data.

Under ``torchrun --nproc-per-node M -m mobilenets train ...`` every process runs the same
command and rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from ..errors import ConfigError, MobilenetsError
from ._common import format_table, int_at_least, print_json, resolution_int

_BOOLEAN_FLAGS = ("compile", "channels_last", "sync_bn", "progress")


_positive_int, _nonnegative_int = int_at_least(1), int_at_least(0)


def _run_options(p: argparse.ArgumentParser, default_recipe: str) -> None:
    """Options shared by train and finetune; None means 'not given' (recipe or saved run decides)."""
    p.add_argument("--data", help="folder with train/<class>/* and val/<class>/* images")
    p.add_argument("--output", "-o", required=True, help="run directory (checkpoints, weights, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--recipe", help=f"recipe name (default {default_recipe}; see `mobilenets recipes`)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, help="global batch (split over processes)")
    p.add_argument(
        "--lr", type=float, help="peak learning rate at this batch size (default: recipe's, scaled linearly)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe field")
    p.add_argument("--seed", type=int)
    p.add_argument("--workers", type=_nonnegative_int, help="DataLoader worker processes (default 2)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    p.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"),
                   help="autocast (auto: bf16 on CUDA and on CPUs with native bf16, else off)")  # fmt: skip
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="torch.compile the model")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory format (default on)")  # fmt: skip
    p.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="BatchNorm statistics over all processes (DDP)")  # fmt: skip
    p.add_argument(
        "--checkpoint-every", type=_nonnegative_int, help="steps between checkpoints (default 50; 0 = epoch ends)"
    )
    p.add_argument("--log-every", type=_positive_int, help="steps between loss log rows (default 10)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars (on a TTY)")
    p.add_argument("--json", action="store_true", help="last stdout line is a JSON summary")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a MobileNet v1 on DIR/train, evaluating on DIR/val each epoch")
    p.add_argument("--model", help="registered name, e.g. mobilenet_v1_0.25_128 (or any mobilenet_v1_<alpha>_<res>)")
    _run_options(p, "slim")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune pretrained weights on class folders (new head)")
    p.add_argument("--weights", help="source weights: .tflite, .safetensors, ... (see mobilenets.weights)")
    p.add_argument("--model", help="registered name whose resolution to use (alpha must match the weights)")
    p.add_argument("--resolution", type=resolution_int, help="input side (default: the weights' or the model's)")
    p.add_argument("--freeze-backbone", action=argparse.BooleanOptionalAction, default=None,
                   help="train the classifier only (the finetune preset does; --no-freeze-backbone trains all)")  # fmt: skip
    _run_options(p, "finetune")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("recipes", help="print the training recipes (plain data)")
    p.add_argument("names", nargs="*", help="recipe names (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The options passed explicitly, as TrainConfig / Recipe field names."""
    from ..train.recipes import parse_override

    given: dict[str, Any] = {}
    for key in ("data", "seed", "workers", "device", "amp", "checkpoint_every", "log_every", *_BOOLEAN_FLAGS):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    if args.recipe is not None:
        given["name"] = args.recipe
    for key in ("epochs", "batch_size", "freeze_backbone"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    given.update(parse_override(text) for text in args.set)
    return given


def _config(args: argparse.Namespace, default_recipe: str, alpha: float, resolution: int, weights: str | None,
            given: dict[str, Any]):  # fmt: skip
    from ..train import TrainConfig, get_recipe
    from ..train.recipes import Recipe

    recipe = get_recipe(given.get("name", default_recipe))
    recipe_fields = set(Recipe.__dataclass_fields__) - {"name"}
    changes = {k: v for k, v in given.items() if k in recipe_fields}
    if args.lr is not None:
        changes["lr"], changes["lr_batch"] = args.lr, changes.get("batch_size", recipe.batch_size)
    recipe = recipe.with_overrides(**changes)
    run = {k: v for k, v in given.items() if k in TrainConfig.__dataclass_fields__}
    return TrainConfig(output=args.output, recipe=recipe, alpha=alpha, resolution=resolution, weights=weights, **run)


def _resume_given(args: argparse.Namespace, given: dict[str, Any], **model: Any) -> dict[str, Any]:
    given = {**given, **{k: v for k, v in model.items() if v is not None}}
    if args.lr is not None:
        given["lr"] = args.lr
    return given


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _report(summary: dict[str, Any], as_json: bool, keys: tuple[str, ...]) -> None:
    if not _is_main():
        return
    if as_json:
        print_json({k: summary[k] for k in keys})
        return
    top1 = summary["val_top1"]
    print(f"{summary['epochs']} epochs in {summary['seconds']:.0f}s; val top-1 "
          f"{'n/a' if top1 is None else f'{100 * top1:.2f}%'}; weights {summary['weights']}")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    from ..models.registry import parse_model_name
    from ..train import train

    given = _given(args)
    if args.resume:
        alpha, res = parse_model_name(args.model) if args.model else (None, None)
        summary = train(_placeholder(args), resume=True, given=_resume_given(args, given, alpha=alpha, resolution=res))
    else:
        if not args.data or not args.model:
            raise ConfigError("train needs --data DIR and --model NAME (or --resume with an existing --output)")
        alpha, res = parse_model_name(args.model)
        summary = train(_config(args, "slim", alpha, res, None, given))
    _report(summary, args.json, ("val_top1", "best_top1", "epochs", "seconds", "weights"))
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..train import evaluate_weights, train

    given = _given(args)
    if args.resume:
        summary = train(_placeholder(args), resume=True, given=_resume_given(args, given, weights=args.weights))
    else:
        if not args.data or not args.weights:
            raise ConfigError("finetune needs --data DIR and --weights FILE (or --resume with an existing --output)")
        alpha, res = _finetune_model(args)
        given.setdefault("name", "finetune")
        summary = train(_config(args, "finetune", alpha, res, str(args.weights), given))
    if not _is_main():
        return 0
    data = args.data or _saved_data(args.output)
    start = time.perf_counter()
    final = evaluate_weights(summary["weights"], data, workers=args.workers if args.workers is not None else 2)
    summary["val_top1"] = final["top1"]
    summary["seconds"] = round(
        summary["seconds"] + time.perf_counter() - start, 1
    )  # training (all sessions) + this check
    if not args.json:
        print(f"final: val top-1 {100 * final['top1']:.2f}% on {final['count']} images of {data}/val")
    _report(summary, args.json, ("val_top1", "epochs", "seconds", "weights"))
    return 0


def _finetune_model(args: argparse.Namespace) -> tuple[float, int]:
    """(alpha, resolution) for fine-tuning: alpha from the weights, resolution from --resolution/--model/weights."""
    from ..models.registry import get_spec
    from ..weights import read_weights

    w = read_weights(args.weights)
    resolution = args.resolution or w.resolution or 224
    if args.model:
        spec = get_spec(args.model)
        if abs(spec.alpha - w.alpha) > 1e-6:
            raise ConfigError(
                f"{args.weights}: weights have alpha={w.alpha:g} but {args.model} has alpha={spec.alpha:g}"
            )
        resolution = args.resolution or spec.resolution
    return w.alpha, resolution


def _placeholder(args: argparse.Namespace):
    """A config that only names the run directory; `train(resume=True)` replaces it with the saved one."""
    from ..train import TrainConfig, get_recipe

    return TrainConfig(data="", output=args.output, recipe=get_recipe("slim"), alpha=1.0, resolution=224,
                       device=args.device)  # fmt: skip


def _saved_data(output: str) -> str:
    import json
    from pathlib import Path

    try:
        return json.loads((Path(output) / "run.json").read_text())["config"]["data"]
    except (OSError, ValueError, KeyError):
        raise MobilenetsError(f"{output}: run.json is missing or damaged; pass --data") from None


def cmd_recipes(args: argparse.Namespace) -> int:
    from ..train.recipes import RECIPES, get_recipe

    recipes = [get_recipe(n) for n in args.names] if args.names else list(RECIPES.values())
    if args.json:
        print_json([r.as_dict() for r in recipes])
        return 0
    keys = [k for k in recipes[0].as_dict() if k not in ("name", "description")]

    def show(v: Any) -> str:
        if isinstance(v, tuple):
            return ",".join(f"{x:.4g}" for x in v)
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    rows = [[k, *(show(r.as_dict()[k]) for r in recipes)] for k in keys]
    print(format_table(["field", *(r.name for r in recipes)], rows, align="l" * (len(recipes) + 1)))
    for r in recipes:
        print(f"\n{r.name}: {r.description}")
    print("\nlr is the peak rate at lr_batch images per step, scaled linearly with --batch-size; "
          "override any field with --set KEY=VALUE.")  # fmt: skip
    return 0
