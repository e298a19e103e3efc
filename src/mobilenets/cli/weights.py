"""``mobilenets import``: any supported weights, or an official name, to our safetensors with its contract."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import WeightsError
from ..models.registry import CATALOG
from ..utils import sha256_file
from ..weights import build_model, check_fits, read_weights, save_weights
from ..weights.cache import fetch_official
from ._common import check_output, path_arg, resolution_int

# Keys of a source's metadata that describe how it was read; carried into the new file's header.
_CARRIED = ("input_quantization", "ema", "archive_member", "format")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import",
        help="convert weights (.tflite, TF-Slim checkpoint, Keras .h5, release .tgz, .safetensors, "
        "or an official name) to .safetensors",
    )
    p.add_argument(
        "source",
        type=path_arg,
        help="a weights file, a checkpoint prefix (X.ckpt), or an official name, "
        "e.g. mobilenet_v1_1.0_224 or mobilenet_v1_0.5_160_quant (downloaded once)",
    )
    p.add_argument("-o", "--output", required=True, type=path_arg, help="the .safetensors to write")
    p.add_argument("--model", help="a registered name the weights must fit (same alpha and resolution)")
    p.add_argument(
        "--resolution",
        type=resolution_int,
        help="input side to record (default: the source's, else the model's, else 224)",
    )
    p.set_defaults(func=cmd_import)


def _source_path(source: str) -> Path:
    """The file to read: the path itself, or the cached download of an official name."""
    path = Path(source)
    if source in CATALOG and not (path.exists() or path.with_name(path.name + ".index").exists()):
        return fetch_official(source)
    return path


def cmd_import(args: argparse.Namespace) -> int:
    check_output(args.output, suffixes=(".safetensors",))
    path = _source_path(args.source)
    w = read_weights(path)
    arch = w.cfg.arch if w.cfg is not None else "mobilenet_v1"
    if arch != "mobilenet_v1":
        raise WeightsError(f"{path}: not a MobileNet v1 classifier/backbone but a {arch} model; run it as it is "
                           "(--weights FILE)")  # fmt: skip
    resolution = check_fits(w, args.model, resolution=args.resolution) if args.model else args.resolution
    model = build_model(w, resolution=resolution)
    cfg = model.pretrained_cfg
    # For a checkpoint prefix the digest is its .index, which pins every tensor by CRC32C.
    digest_of = path if path.is_file() else path.with_name(path.name + ".index")
    sha256 = cfg.sha256 or sha256_file(digest_of)
    fmt = w.meta.get("format", w.format) if w.format == "safetensors" else w.format
    meta = {k: w.meta[k] for k in _CARRIED if w.meta.get(k) is not None}
    save_weights(model, args.output, **{**meta, "format": fmt}, source=cfg.source or w.source, sha256=sha256)
    print(
        f"wrote {args.output}: MobileNet v1 alpha={w.alpha:g}, {w.num_classes} classes, "
        f"resolution {cfg.resolution}, from {fmt} {w.source} (sha256 {sha256[:12]})"
    )
    return 0
