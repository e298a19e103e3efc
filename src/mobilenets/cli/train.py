"""``mobilenets train | finetune | recipes``: training from scratch, fine-tuning, and the recipes as data.

Under ``torchrun --nproc-per-node M -m mobilenets train ...`` every process runs the same
command and rank 0 alone prints and writes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from ..errors import ConfigError
from ._common import float_in, format_table, int_at_least, int_in, print_json, resolution_int
from ._train_detect import cmd_detect, wants_detect
from ._train_segment import cmd_segment, wants_segment

_BOOLEAN_FLAGS = ("compile", "channels_last", "sync_bn", "progress", "heap_reuse")


_positive_int, _nonnegative_int = int_at_least(1), int_at_least(0)
TASK_CHOICES = ("classify", "segment", "detect")  # --task of train / finetune


def _run_options(p: argparse.ArgumentParser, default_recipe: str) -> None:
    """Options shared by train and finetune; None means 'not given' (recipe or saved run decides)."""
    p.add_argument("--task", choices=TASK_CHOICES, default="classify",
                   help="classify (class folders) or segment (DeepLab v3 on VOC-layout data)")  # fmt: skip
    p.add_argument("--data", help="folder with train/<class>/* and val/<class>/* images")
    p.add_argument("--output", "-o", required=True, help="run directory (checkpoints, weights, logs)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output from its last checkpoint")
    p.add_argument("--recipe", help=f"recipe name (default {default_recipe}; see `mobilenets recipes`)")
    p.add_argument("--epochs", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, help="global batch (split over processes)")
    p.add_argument(
        "--lr", type=float_in(0.0, 100.0, "learning rate"), help="peak learning rate at this batch size (default: recipe's, scaled linearly)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any recipe field")
    p.add_argument("--seed", type=int_in(0, 2**63 - 1, "seed"))
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
    p.add_argument("--heap-reuse", action=argparse.BooleanOptionalAction, default=None,
                   help="CPU: glibc keeps freed memory for reuse, faster steps (default on)")  # fmt: skip
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


def _settings(args: argparse.Namespace, given: dict[str, Any], default_recipe: str) -> tuple[str, dict[str, Any]]:
    """(recipe name, settings for `make_config`): ``--lr`` is the peak rate at the batch size given."""
    settings = {k: v for k, v in given.items() if k not in ("name", "data")}
    if args.lr is not None:
        batch = settings.get("batch_size")
        if batch is None:
            from ..train import get_recipe

            batch = get_recipe(given.get("name", default_recipe)).batch_size
        settings["lr"], settings["lr_batch"] = args.lr, batch
    return given.get("name", default_recipe), settings


def _resume_given(args: argparse.Namespace, given: dict[str, Any], **model: Any) -> dict[str, Any]:
    given = {**given, **{k: v for k, v in model.items() if v is not None}}
    if args.lr is not None:
        given["lr"] = args.lr
    return given


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


_SUMMARY_KEYS = ("val_top1", "best_top1", "best_epoch", "epochs", "seconds", "weights")


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if not _is_main():
        return
    final = summary.get("final")
    if as_json:
        print_json({k: summary[k] for k in _SUMMARY_KEYS})
        return
    if final is not None:
        print(f"final: val top-1 {100 * final['top1']:.2f}% on {final['count']} images of {final['data']}/val")
    top1 = summary["val_top1"]
    print(f"{summary['epochs']} epochs in {summary['seconds']:.0f}s; val top-1 "
          f"{'n/a' if top1 is None else f'{100 * top1:.2f}%'} (best {100 * summary['best_top1']:.2f}% at epoch "
          f"{summary['best_epoch']}); weights {summary['weights']}")  # fmt: skip


def cmd_train(args: argparse.Namespace) -> int:
    if wants_segment(args):  # --task segment, or --resume of a segmentation run
        return cmd_segment(args, finetune=False)
    if wants_detect(args):  # --task detect, or --resume of a detection run
        return cmd_detect(args, finetune=False)
    from ..models.registry import parse_model_name
    from ..train import make_config, resume, train

    given = _given(args)
    if args.resume:
        alpha, res = parse_model_name(args.model) if args.model else (None, None)
        summary = resume(args.output, **_resume_given(args, given, alpha=alpha, resolution=res))
    else:
        if not args.data or not args.model:
            raise ConfigError("train needs --data DIR and --model NAME (or --resume with an existing --output)")
        alpha, res = parse_model_name(args.model)
        recipe, settings = _settings(args, given, "slim")
        summary = train(make_config(args.data, args.output, alpha, res, recipe=recipe, **settings))
    _report(summary, args.json)
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    if wants_segment(args):  # --task segment, or --resume of a segmentation run
        return cmd_segment(args, finetune=True)
    if wants_detect(args):  # --task detect, or --resume of a detection run
        return cmd_detect(args, finetune=True)
    from ..train import finetune, resume

    given = _given(args)
    if args.resume:
        summary = resume(args.output, final_eval=True, **_resume_given(args, given, weights=args.weights))
    else:
        if not args.data or not args.weights:
            raise ConfigError("finetune needs --data DIR and --weights FILE (or --resume with an existing --output)")
        recipe, settings = _settings(args, given, "finetune")
        summary = finetune(args.data, args.weights, args.output, model=args.model, resolution=args.resolution,
                           recipe=recipe, **settings)  # fmt: skip
    _report(summary, args.json)
    return 0


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
