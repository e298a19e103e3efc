"""``mobilenets classify | evaluate | embed | similar``."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ..auto import CHOICES, load_predictor
from ..runtime import Predictor
from ..utils import atomic_write, quiet_native
from ._common import (
    batch_int,
    check_output,
    crop_float,
    path_arg,
    positive_int,
    print_json,
    resolution_int,
    threads_int,
    workers_int,
)

DEFAULT_MODEL = "mobilenet_v1_1.0_224"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"registered name (default {DEFAULT_MODEL}, or read from --weights)")
    g.add_argument("--weights", type=path_arg, help="'imagenet' (official, downloaded once) or a file: .safetensors, .tflite, "
                   ".ckpt, .h5, .tgz, or an exported artifact")  # fmt: skip
    g.add_argument("--backend", choices=CHOICES, help="default: follows the file (.tflite: litert, .onnx: "
                   "onnxruntime, weights: auto, the fastest installed)")  # fmt: skip
    g.add_argument("--resolution", type=resolution_int, help="input size, 32..2048 (default: the model's)")
    g.add_argument("--crop", type=crop_float, help="central crop fraction in (0, 1] before resizing (default: the "
                   "weights' own; 1.0 = whole image)")  # fmt: skip
    g.add_argument("--threads", type=threads_int, help="CPU threads for inference (default: the engine's)")


def predictor_from_args(args: argparse.Namespace) -> Predictor:
    model, weights = args.model, args.weights
    if weights is None:
        model, weights = model or DEFAULT_MODEL, "imagenet"
    elif weights in ("imagenet", "imagenet_quant") and model is None:
        model = DEFAULT_MODEL  # `--weights imagenet` alone: the default config
    with quiet_native():  # runtimes and exporters announce themselves on fds 1/2
        p = load_predictor(model=model, weights=weights, backend=args.backend, resolution=args.resolution,
                           crop_fraction=args.crop, threads=args.threads)  # fmt: skip
    if weights not in ("imagenet", "imagenet_quant"):
        p.info["source"] = str(weights)  # errors and --json name the user's file, not one its header recorded
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="top-k ImageNet (or fine-tuned) labels for images")
    p.add_argument("images", nargs="+", type=path_arg, help="image files or folders of images")
    p.add_argument("-k", "--top-k", type=positive_int, default=5, help="predictions per image")
    p.add_argument("--show-background", action="store_true", help="allow index 0 ('background') in predictions")
    p.add_argument("--json", action="store_true", help='one JSON object per image: {"image", "predictions"}')
    _add_model_args(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="accuracy on labelled data: top-1/top-5, COCO mAP or mIoU (by --task)")
    p.add_argument("--task", choices=("classify", "detect", "segment"),
                   help="default: the task the weights were made for")  # fmt: skip
    p.add_argument("--data", required=True, type=path_arg, help="classify: ImageNet val layout, WNID_*.JPEG files or class folders; "
                   "detect: a folder of images (+ --annotations, or YOLO labels beside them); "
                   "segment: VOC layout or N_image.png/N_target.png pairs")  # fmt: skip
    p.add_argument("--annotations", help="detect: COCO instances JSON for the images in --data")
    p.add_argument("--labels", help="classify: labels file, 'relative/path label' per line")
    p.add_argument("--limit", type=positive_int, help="evaluate only the first N images")
    p.add_argument("--batch-size", "--batch", type=batch_int, default=32, help="images per inference call")
    p.add_argument("--workers", type=workers_int, default=2, help="DataLoader worker processes (0: in this process)")
    p.add_argument("--json", action="store_true", help='print {"top1", "top5", "n", "images_per_s"}')
    _add_model_args(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("embed", help="pooled feature vectors of images (or folders of images) to .npy")
    p.add_argument("images", nargs="+", type=path_arg, help="image files or folders of images (unreadable ones are skipped)")
    p.add_argument("-o", "--output", required=True, type=path_arg, help="output .npy (N x C float32), rows in input order; the "
                   "files, one per row, are listed in OUTPUT.txt beside it")  # fmt: skip
    p.add_argument("--l2", action="store_true", help="L2-normalise each embedding")
    _add_model_args(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("similar", help="cosine nearest neighbours of an image in a gallery folder")
    p.add_argument("query", type=path_arg, help="the image to find neighbours of")
    p.add_argument("--gallery", required=True, type=path_arg, help="folder of images (embeddings cached beside it)")
    p.add_argument("-k", "--top-k", dest="k", type=positive_int, default=5, help="neighbours to show")
    p.add_argument("--json", action="store_true")
    _add_model_args(p)
    p.set_defaults(func=cmd_similar)


def _check_k(k: int, flag: str) -> None:
    from ..errors import ConfigError

    if k < 1:
        raise ConfigError(f"{flag} must be >= 1, got {k}")


def cmd_classify(args: argparse.Namespace) -> int:
    from ..tasks import Skipped, check_task, expand_images, preprocess_batches
    from ..tasks.classify import classify_batch

    _check_k(args.top_k, "--top-k")
    paths = expand_images(args.images)
    predictor = predictor_from_args(args)
    check_task(predictor, "classify")
    skipped = Skipped([])
    for batch_paths, batch in preprocess_batches(paths, predictor.transform, 8, strict=len(paths) == 1, skipped=skipped):
        for path, preds in zip(batch_paths, classify_batch(predictor, batch, args.top_k, args.show_background)):
            if args.json:
                print_json({"image": str(path), "predictions": [p.as_dict() for p in preds], **predictor.describe()})
            else:
                print(path)
                for p in preds:
                    print(f"  {p.score:7.4f}  {p.label}  [{p.index}]")
    return report_skipped(skipped, len(paths))


def report_skipped(skipped, total: int) -> int:
    """Warn about unreadable images (one line); exit 2 when none could be read."""
    import sys

    if not skipped.count:
        return 0
    reason = skipped.errors[0][1]
    print(f"mobilenets: warning: skipped {skipped.count} of {total} image(s) that could not be read; first: {reason}",
          file=sys.stderr)  # fmt: skip
    return 2 if skipped.count == total else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..tasks import check_task

    predictor = predictor_from_args(args)
    task = args.task or predictor.task
    check_task(predictor, task)
    if task != "classify":  # each task's evaluation returns a result with as_dict() and summary()
        if task == "detect":
            from ..tasks.detect import evaluate_detection

            res = evaluate_detection(predictor, args.data, annotations=args.annotations, limit=args.limit)
        else:
            from ..tasks.segment import evaluate_segmentation

            res = evaluate_segmentation(predictor, args.data, limit=args.limit)
        print_json({**res.as_dict(), **predictor.describe()}) if args.json else print(res.summary())
        return 0
    from ..tasks.classify import evaluate

    res = evaluate(predictor, args.data, args.labels, args.limit, args.batch_size, args.workers)
    if args.json:
        print_json({**res.as_dict(), **predictor.describe()})
    else:
        skipped = f", {res.skipped} unreadable skipped" if res.skipped else ""
        top5 = f"  top-5 {res.top5:.4f}" if predictor.num_classes > 5 else ""  # always 1.0 with <= 5 classes
        print(f"{predictor.name} ({predictor.backend}) on {args.data}: top-1 {res.top1:.4f}{top5}  "
              f"n={res.n}{skipped}  {res.images_per_s:.1f} images/s")  # fmt: skip
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from ..tasks import Skipped, expand_images
    from ..tasks.embed import embed_images, rows_file

    out = check_output(args.output, suffixes=(".npy",))
    paths = expand_images(args.images)
    predictor = predictor_from_args(args)
    skipped = Skipped([])
    emb, kept = embed_images(predictor, paths, l2=args.l2, strict=len(paths) == 1, skipped=skipped)
    if not kept:
        return report_skipped(skipped, len(paths))
    rows = rows_file(out)
    with atomic_write(out) as tmp, open(tmp, "wb") as f:
        np.save(f, emb)
    with atomic_write(rows) as tmp:
        tmp.write_text("".join(f"{p}\n" for p in kept))
    print(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]} float32 ({predictor.name}, "
          f"{'L2-normalised' if args.l2 else 'raw'}); row i is line i of {rows}")  # fmt: skip
    return report_skipped(skipped, len(paths))


def cmd_similar(args: argparse.Namespace) -> int:
    from ..data.images import load_image
    from ..tasks import Skipped
    from ..tasks.embed import embed_images, gallery_embeddings, nearest

    load_image(args.query)
    predictor = predictor_from_args(args)
    skipped = Skipped([])
    paths, gallery = gallery_embeddings(predictor, args.gallery, skipped=skipped)
    query = embed_images(predictor, [Path(args.query)], l2=True, progress=False, strict=True)[0][0]
    hits = nearest(query, gallery, args.k)
    if args.json:
        print_json({"query": args.query, "neighbours": [{"image": str(paths[i]), "cosine": s} for i, s in hits],
                    **predictor.describe()})  # fmt: skip
    else:
        for i, s in hits:
            print(f"{s:7.4f}  {paths[i]}")
    report_skipped(skipped, len(paths) + skipped.count)
    return 0
