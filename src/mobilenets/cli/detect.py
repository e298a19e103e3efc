"""``mobilenets detect``: labelled boxes per image, as text, JSON or images with the boxes drawn."""

from __future__ import annotations

import argparse

from ..auto import CHOICES
from ._common import int_at_least, print_json, threads_int


def score(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("detect", help="labelled boxes (COCO for SSD-MobileNet) for images or folders")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--weights", required=True, help="detection weights: Google's coco_ssd_mobilenet_v1 .tflite, "
                   "our export (.tflite/.onnx) or trained .safetensors")  # fmt: skip
    p.add_argument("--model", help="registered name (default: read from --weights)")
    p.add_argument("--backend", choices=CHOICES, help="default: follows the file (.tflite: litert, .onnx: "
                   "onnxruntime, weights: auto)")  # fmt: skip
    p.add_argument("--threads", type=threads_int, help="CPU threads for inference")
    p.add_argument("--score-threshold", type=score, default=0.5, help="keep detections scoring at least this "
                   "(default 0.5)")  # fmt: skip
    p.add_argument("--max-detections", type=int_at_least(1), help="keep at most N per image (best first)")
    p.add_argument("--save-dir", help="write <stem>.jpg: each image with its boxes and labels drawn")
    p.add_argument("--json", action="store_true", help='a JSON list, one object per image: {"image", "width", '
                   '"height", "detections": [{"label", "category_id", "score", "box": [x0, y0, x1, y1]}], ...}')  # fmt: skip
    p.set_defaults(func=cmd_detect, resolution=None, crop=None)


def cmd_detect(args: argparse.Namespace) -> int:
    from ..tasks import Skipped, check_task, expand_images
    from ..tasks.detect import detect_images, save_drawn
    from .tasks import predictor_from_args, report_skipped

    paths = expand_images(args.images)
    predictor = predictor_from_args(args)
    check_task(predictor, "detect")
    skipped = Skipped([])
    results = detect_images(predictor, paths, args.score_threshold, args.max_detections, strict=len(paths) == 1,
                            skipped=skipped, keep_photos=bool(args.save_dir))  # fmt: skip
    rows = []
    for r in results:
        saved = save_drawn(r, args.save_dir) if args.save_dir else None
        r.photo = None
        if args.json:
            rows.append({**r.as_dict(), **({"drawn": str(saved)} if saved else {}), **predictor.describe()})
        else:
            print(
                f"{r.image} ({r.width}x{r.height}): {len(r.detections)} detection(s)"
                + (f" -> {saved}" if saved else "")
            )
            for d in r.detections:
                x0, y0, x1, y1 = d.box
                print(f"  {d.score:6.3f}  {d.label:<16} [{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}]")
    if args.json:
        print_json(rows)
    return report_skipped(skipped, len(paths))
