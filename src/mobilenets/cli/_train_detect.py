"""``mobilenets train|finetune --task detect``: SSD training (`mobilenets.train.detect`) from the shared options.

    mobilenets make-detection-set --objects hymenoptera --output antbee      # (or any YOLO / COCO set)
    mobilenets finetune --task detect --data antbee --weights coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite \\
        --output runs/det --epochs 8 --batch-size 16
    mobilenets train --task detect --model ssd_mobilenet_v1_0.25 --data antbee --output runs/scratch
    mobilenets finetune --task detect --output runs/det --resume      # after a kill

``--resolution`` is the input side; ``--set KEY=VALUE`` sets any `DetectConfig` field
(``backbone_lr_scale``, ``backbone_train_from``, ``cache_features``, ``optimizer``, ``bn_mode``, ``loss``,
``eval_every``, ...).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ConfigError
from ._common import print_json

_CLASSIFY_ONLY = ("recipe", "amp", "compile", "channels_last", "sync_bn", "freeze_backbone")
_MODEL = re.compile(r"^(?:ssd_)?mobilenet_v1_([0-9.]+)(?:_\d+)?$")


def detect_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options given explicitly, as `DetectConfig` field names."""
    from ..train.detect import parse_detect_setting

    bad = [f"--{k.replace('_', '-')}" for k in _CLASSIFY_ONLY if getattr(args, k, None) not in (None, False)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: classification options; --task detect takes --set KEY=VALUE "
                          "(see mobilenets.train.detect.DetectConfig)")  # fmt: skip
    given: dict[str, Any] = {}
    for key in ("seed", "workers", "device", "checkpoint_every", "log_every", "progress", "heap_reuse", "epochs",
                "batch_size", "lr", "resolution"):  # fmt: skip
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    model = getattr(args, "model", None)
    if model:
        m = _MODEL.match(model)
        if not m:
            raise ConfigError(f"--model {model!r}: --task detect expects ssd_mobilenet_v1_<alpha>")
        given["alpha"] = float(m.group(1))
    given.update(parse_detect_setting(text) for text in args.set)
    return given


def cmd_detect(args: argparse.Namespace, finetune: bool) -> int:
    from ..train.detect import make_detect_config, resume_detect, train_detect

    given = detect_settings(args)
    if args.resume:
        if args.data is not None:
            given["data"] = args.data
        if finetune and args.weights is not None:
            given["weights"] = str(args.weights)
        summary = resume_detect(args.output, **given)
    else:
        if not args.data:
            raise ConfigError("--task detect needs --data DIR (YOLO images/ + labels/, or COCO annotations/)")
        if finetune:
            if not args.weights:
                raise ConfigError("finetune --task detect needs --weights FILE (Google's SSD or a MobileNet v1)")
            given["weights"] = str(args.weights)
        summary = train_detect(make_detect_config(args.data, args.output, **given))
    if args.json:
        print_json(summary)
    else:
        def num(key: str, fmt: str, scale: float = 1.0) -> str:  # a run too short to log a step has None
            v = summary.get(key)
            return "n/a" if v is None else format(scale * v, fmt)

        print(f"{summary['epochs']} epochs in {num('seconds', '.0f')}s; loss {num('first_loss', '.3f')} -> "
              f"{num('last_loss', '.3f')}; val mAP50 {num('val_map50', '.2f', 100)}% (best "
              f"{num('best_map50', '.2f', 100)}% at epoch {summary.get('best_epoch')}); weights {summary['weights']}")  # fmt: skip
    return 0


def wants_detect(args: argparse.Namespace) -> bool:
    """``--task detect``, or ``--resume`` of a run directory that holds a detection run."""
    if getattr(args, "task", "classify") == "detect":
        return True
    if args.resume:
        from ..train.detect import is_detect_run

        return is_detect_run(args.output)
    return False
