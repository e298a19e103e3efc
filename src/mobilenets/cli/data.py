"""``mobilenets preprocess``: the reference eval transform as a command (for debugging other runtimes)."""

from __future__ import annotations

import argparse

import numpy as np

from ..data.transforms import EvalTransform, PillowEvalTransform
from ..models.cfg import SLIM_EVAL_CROP
from ..utils import atomic_write
from ._common import check_output, crop_float, path_arg, resolution_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="apply the reference eval transform and save the tensors (.npy)")
    p.add_argument("images", nargs="+", type=path_arg, help="image files")
    p.add_argument("-o", "--output", required=True, type=path_arg, help="output .npy, shape N x 3 x R x R (float32)")
    p.add_argument("--resolution", type=resolution_int, default=224)
    p.add_argument("--crop", type=crop_float, default=SLIM_EVAL_CROP, help="central crop fraction in (0, 1] (1.0 = none)")
    p.add_argument("--method", choices=("tf", "pillow"), default="tf",
                   help="tf: exact TF1 inception eval (reference); pillow: fast approximation")  # fmt: skip
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    check_output(args.output, suffixes=(".npy",))
    cls = EvalTransform if args.method == "tf" else PillowEvalTransform
    transform = cls(args.resolution, args.crop)
    batch = np.stack([transform(path).numpy() for path in args.images])
    with atomic_write(args.output) as tmp, open(tmp, "wb") as f:
        np.save(f, batch)
    print(f"wrote {args.output}: {batch.shape[0]} x 3 x {args.resolution} x {args.resolution} float32")
    return 0
