"""``mobilenets make-detection-set``: a small real-photo detection set with known boxes (`data.synthetic_detection`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._common import int_in, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("make-detection-set",
                       help="paste central crops of class photos onto backgrounds: a YOLO + COCO detection set")  # fmt: skip
    p.add_argument("--objects", required=True, help="folder with train/<class>/* and val/<class>/* photos")
    p.add_argument("--output", "-o", required=True, help="new folder for the set")
    p.add_argument(
        "--backgrounds", nargs="*", help="background photos (default: COCO8 + ImageNet samples beside --objects)"
    )
    p.add_argument("--seed", type=int_in(0, 2**63 - 1, "seed"), default=0)
    p.add_argument("--train-images", type=int_in(1, 100_000, "train images"), default=160)
    p.add_argument("--val-images", type=int_in(1, 100_000, "val images"), default=60)
    p.add_argument("--size", type=int_in(32, 4096, "size"), nargs=2, default=(320, 320), metavar=("W", "H"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_make_detection_set)


def cmd_make_detection_set(args: argparse.Namespace) -> int:
    from ..data.synthetic_detection import SyntheticDetectionSpec, make_detection_set

    spec = SyntheticDetectionSpec(seed=args.seed, train_images=args.train_images, val_images=args.val_images,
                                  image_size=tuple(args.size))  # fmt: skip
    manifest = make_detection_set(Path(args.output), Path(args.objects), args.backgrounds, spec)
    if args.json:
        print_json(manifest["counts"])
    else:
        c = manifest["counts"]
        print(
            f"wrote {args.output}: train {c['train']['images']} images / {c['train']['boxes']} boxes, "
            f"val {c['val']['images']} images / {c['val']['boxes']} boxes; classes {', '.join(manifest['classes'])}"
        )
    return 0
