"""DeepLab v3 / MobileNet v1 0.25 fine-tuned from Google's ImageNet float weights on 10 VOC pairs.

What the segmentation-training issue accepts: from ``mobilenet_v1_0.25_224_1_default_1.tflite``
(backbone into ``DeepLabV3("mobilenet_v1", 0.25, 21, output_stride=16)``, head random), a few
minutes on 2 cores on 10 of the 14 ``voc2012_seg_samples`` pairs: the loss falls and the mIoU
on those 10 images rises from the start. Then the saved ``last.safetensors`` runs through the
Predictor (torch, and an ONNX export through onnxruntime) with `tasks.segment.evaluate_segmentation`
on the same 10 images, and on the 4 held-out pairs (10 images teach little: reported, not claimed).

    python benchmarks/train_segment.py                    # writes train_segment.{json,png}
    python benchmarks/train_segment.py --epochs 20 --crop 129 --out /tmp/x   # a quick variant
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from mobilenets.utils import machine_id

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOBILENETS_SHARED", HERE.parents[1] / "shared" / "data"))
DATA = SHARED / "voc2012_seg_samples"
SOURCE = SHARED / "models" / "mobilenet_v1_0.25_224_1_default_1.tflite"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def held_out_folder(pairs, root: Path) -> Path:
    """The held-out pairs as their own N_image/N_target folder (symlinks), for evaluate_segmentation."""
    root.mkdir(parents=True, exist_ok=True)
    for img, mask in pairs:
        (root / img.name).symlink_to(img)
        (root / mask.name).symlink_to(mask)
    return root


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--crop", type=int, default=193)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--bn-mode", default="head")
    p.add_argument("--pairs", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any SegmentConfig field")
    p.add_argument("--out", type=Path, default=HERE / "train_segment", help="writes OUT.json and OUT.png")
    args = p.parse_args()

    import torch

    from mobilenets.auto import load_predictor
    from mobilenets.builder import model_from_weights
    from mobilenets.data.voc import find_segmentation_data
    from mobilenets.export import export_model
    from mobilenets.tasks.segment import evaluate_segmentation
    from mobilenets.train.segment import finetune_segmentation, parse_setting
    from mobilenets.weights import read_weights

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="train_segment_"))
    run = work / "run"
    extra = dict(parse_setting(s) for s in args.set)
    settings = dict(epochs=args.epochs, crop_size=args.crop, batch_size=args.batch, lr=args.lr, bn_mode=args.bn_mode,
                    limit=args.pairs, eval_every=args.eval_every, threads=args.threads, progress=False, log_every=1,
                    **extra)  # fmt: skip
    start = time.perf_counter()
    summary = finetune_segmentation(DATA, SOURCE, run, **settings)
    wall = time.perf_counter() - start
    logs = {name: read_csv(run / name) for name in ("log.csv", "steps.csv")}

    weights = run / "last.safetensors"
    model = model_from_weights(read_weights(weights))
    pred = load_predictor(weights=weights, backend="torch", threads=args.threads)
    train_eval = evaluate_segmentation(pred, DATA, limit=args.pairs)
    pairs = find_segmentation_data(DATA).pairs
    held = held_out_folder(pairs[args.pairs :], work / "held_out") if len(pairs) > args.pairs else None
    held_eval = evaluate_segmentation(pred, held) if held else None
    onnx = export_model(model, "onnx", work / "seg.onnx", parity_images=torch.stack(
        [pred.transform(img) for img, _ in pairs[: args.pairs]]).numpy())  # fmt: skip
    onnx_eval = evaluate_segmentation(load_predictor(weights=onnx.path, threads=args.threads), DATA, limit=args.pairs)

    result = {
        "machine": f"{machine_id()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "source": SOURCE.name, "data": f"{DATA.name}: first {args.pairs} pairs", "settings": settings,
        "summary": summary, "wall_seconds": round(wall, 1),
        "start_miou": summary["start_miou"], "end_miou": summary["val_miou"],
        "first_epoch_loss": summary["first_loss"], "last_epoch_loss": summary["last_loss"],
        "predictor_torch_miou_train_pairs": train_eval.miou, "predictor_onnx_miou_train_pairs": onnx_eval.miou,
        "onnx_parity": {"max_abs_diff": onnx.parity.max_abs_diff, "agreement": onnx.parity.agreement},
        "held_out_miou": held_eval.miou if held_eval else None,
        "held_out_pixel_acc": held_eval.pixel_acc if held_eval else None,
        "per_class_iou_train_pairs": train_eval.as_dict()["per_class_iou"],
        "epochs": logs["log.csv"], "steps": logs["steps.csv"],
    }  # fmt: skip
    out = args.out
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    plot(result, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("epochs", "steps", "per_class_iou_train_pairs")},
                     indent=1))  # fmt: skip
    return 0


def plot(result: dict, path: Path) -> None:
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [int(r["step"]) for r in result["steps"]]
    ax.plot(steps, [float(r["loss"]) for r in result["steps"]], color="tab:blue", alpha=0.35, label="step loss")
    ep = result["epochs"]
    ax.plot([int(r["step"]) for r in ep], [float(r["train_loss"]) for r in ep], color="tab:blue", label="epoch loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train cross-entropy")
    ax2 = ax.twinx()
    pts = [(0, result["start_miou"])] + [(int(r["step"]), float(r["val_miou"])) for r in ep
                                         if not math.isnan(float(r["val_miou"]))]  # fmt: skip
    ax2.plot(*zip(*pts), "o-", color="tab:red", label="mIoU (10 train pairs)")
    ax2.set_ylabel("mIoU")
    ax2.set_ylim(0, 1)
    fig.legend(loc="center right", bbox_to_anchor=(0.86, 0.42), fontsize=8)
    ax.set_title(f"DeepLab v3 / MobileNet v1 0.25 from ImageNet, {result['data']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
