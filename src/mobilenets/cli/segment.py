"""``mobilenets segment``: a class per pixel, as palette PNGs, overlays and per-image JSON."""

from __future__ import annotations

import argparse

from ..auto import CHOICES
from ._common import print_json, threads_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="per-pixel classes (PASCAL VOC for DeepLab v3) for images or folders")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--weights", required=True, help="segmentation weights: Google's deeplabv3.tflite, our "
                   "export (.tflite/.onnx) or trained .safetensors")  # fmt: skip
    p.add_argument("--model", help="registered name (default: read from --weights)")
    p.add_argument("--backend", choices=CHOICES, help="default: follows the file (.tflite: litert, .onnx: "
                   "onnxruntime, weights: auto)")  # fmt: skip
    p.add_argument("--threads", type=threads_int, help="CPU threads for inference")
    p.add_argument("--save-dir", help="write <stem>.png (palette PNG at the image's size, pixel = class index) and "
                   "<stem>_overlay.jpg (mask on the photo, with a legend)")  # fmt: skip
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"image", "width", "height", '
                   '"classes": {label: pixel fraction}, ...}')  # fmt: skip
    p.set_defaults(func=cmd_segment, resolution=None, crop=None)


def cmd_segment(args: argparse.Namespace) -> int:
    from ..errors import ImageError
    from ..tasks import Skipped, check_task, expand_images
    from ..tasks.segment import save_outputs, segment_image
    from .tasks import predictor_from_args, report_skipped

    paths = expand_images(args.images)
    predictor = predictor_from_args(args)
    check_task(predictor, "segment")
    skipped = Skipped([])
    for path in paths:
        try:
            seg = segment_image(predictor, path)
        except ImageError as e:
            if len(paths) == 1:
                raise
            skipped.errors.append((path, str(e)))
            continue
        saved = save_outputs(seg, args.save_dir) if args.save_dir else None
        if args.json:
            extra = {"mask": str(saved[0]), "overlay": str(saved[1])} if saved else {}
            print_json({**seg.as_dict(), **extra, **predictor.describe()})
        else:
            shares = ", ".join(f"{label} {100 * f:.1f}%" for label, f in seg.class_fractions().items())
            print(f"{path} ({seg.width}x{seg.height}): {shares}" + (f" -> {saved[0]}" if saved else ""))
    return report_skipped(skipped, len(paths))
