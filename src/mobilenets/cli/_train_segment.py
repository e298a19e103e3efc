"""``mobilenets train|finetune --task segment``: DeepLab v3 training (`mobilenets.train.segment`) from the shared options.

    mobilenets finetune --task segment --data voc2012_seg_samples --weights mobilenet_v1_0.25_224_1_default_1.tflite \\
        --output runs/seg --epochs 40 --batch-size 4 --resolution 193 --set limit=10
    mobilenets train --task segment --model deeplabv3_mobilenet_v1_0.25 --data VOCdevkit --output runs/scratch
    mobilenets finetune --task segment --output runs/seg --resume      # after a kill

``--resolution`` is the train crop (and the saved contract's input side unless
``--set eval_size=N``); ``--set KEY=VALUE`` sets any `SegmentConfig` field (``limit``,
``output_stride``, ``bn_mode``, ``threads``, ``val_data``, ...).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from ..errors import ConfigError
from ._common import print_json

# classification-only options of the shared parser: refused with --task segment
_CLASSIFY_ONLY = ("recipe", "amp", "compile", "channels_last", "sync_bn", "heap_reuse", "freeze_backbone")
_MODEL = re.compile(r"^(?:deeplabv3_)?(mobilenet_v[12])_([0-9.]+)(?:_\d+)?$")


def segment_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The options given explicitly, as `SegmentConfig` field names."""
    from ..train.segment import parse_setting

    bad = [f"--{k.replace('_', '-')}" for k in _CLASSIFY_ONLY if getattr(args, k, None) not in (None, False)]
    if bad:
        raise ConfigError(f"{', '.join(bad)}: classification options; --task segment takes --set KEY=VALUE "
                          "(see mobilenets.train.segment.SegmentConfig)")  # fmt: skip
    given: dict[str, Any] = {}
    for key in ("seed", "workers", "device", "checkpoint_every", "log_every", "progress", "epochs", "batch_size", "lr"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    if getattr(args, "resolution", None) is not None:
        given["crop_size"] = args.resolution
    model = getattr(args, "model", None)
    if model:
        m = _MODEL.match(model)
        if not m:
            raise ConfigError(f"--model {model!r}: --task segment expects deeplabv3_mobilenet_v1_<alpha> "
                              "(or mobilenet_v2_<alpha>)")  # fmt: skip
        given.update(backbone=m.group(1), alpha=float(m.group(2)))
    given.update(parse_setting(text) for text in args.set)
    return given


def cmd_segment(args: argparse.Namespace, finetune: bool) -> int:
    from ..train.segment import resume_segmentation, segment_config, train_segmentation

    given = segment_settings(args)
    if args.resume:
        if args.data is not None:
            given["data"] = args.data
        if finetune and args.weights is not None:
            given["weights"] = str(args.weights)
        summary = resume_segmentation(args.output, **given)
    else:
        if not args.data:
            raise ConfigError("--task segment needs --data DIR (a VOC layout or N_image/N_target pairs)")
        if finetune:
            if not args.weights:
                raise ConfigError("finetune --task segment needs --weights FILE (MobileNet v1 or DeepLab weights)")
            given["weights"] = args.weights
        elif "backbone" not in given:
            raise ConfigError(
                "train --task segment needs --model deeplabv3_mobilenet_v1_<alpha> (or finetune --weights)"
            )
        summary = train_segmentation(segment_config(args.data, args.output, **given))
    if args.json:
        print_json(summary)
    else:
        print(f"{summary['epochs']} epochs in {summary['seconds']:.0f}s; val mIoU {100 * summary['start_miou']:.2f} "
              f"-> {100 * (summary['val_miou'] or 0):.2f} (best {100 * summary['best_miou']:.2f} at epoch "
              f"{summary['best_epoch']}); weights {summary['weights']}")  # fmt: skip
    return 0


def wants_segment(args: argparse.Namespace) -> bool:
    """``--task segment``, or ``--resume`` of a run directory that holds a segmentation run."""
    if getattr(args, "task", "classify") == "segment":
        return True
    if args.resume:
        from ..train.segment import is_segment_run

        return is_segment_run(args.output)
    return False
