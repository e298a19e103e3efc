"""``mobilenets preprocess``: the reference eval transform as a command (for debugging other runtimes)."""

from __future__ import annotations

import argparse

import numpy as np

from ..data.transforms import EvalTransform, PillowEvalTransform
from ..utils import atomic_write
from ._common import resolution_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("preprocess", help="apply the reference eval transform and save the tensors (.npy)")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("-o", "--output", required=True, help="output .npy, shape N x 3 x R x R (float32)")
    p.add_argument("--resolution", type=resolution_int, default=224)
    p.add_argument("--crop", type=float, default=0.875, help="central crop fraction (1.0 = none)")
    p.add_argument("--method", choices=("tf", "pillow"), default="tf",
                   help="tf: exact TF1 inception eval (reference); pillow: fast approximation")  # fmt: skip
    p.set_defaults(func=cmd_preprocess)


def cmd_preprocess(args: argparse.Namespace) -> int:
    if not 0 < args.crop <= 1:
        from ..errors import ConfigError

        raise ConfigError(f"--crop must be in (0, 1], got {args.crop}")
    cls = EvalTransform if args.method == "tf" else PillowEvalTransform
    transform = cls(args.resolution, args.crop)
    batch = np.stack([transform(path).numpy() for path in args.images])
    with atomic_write(args.output) as tmp, open(tmp, "wb") as f:
        np.save(f, batch)
    print(f"wrote {args.output}: {batch.shape[0]} x 3 x {args.resolution} x {args.resolution} float32")
    return 0
