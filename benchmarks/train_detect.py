"""SSD detection fine-tuning on a generated ants/bees set: mAP50 on its held-out split, and the loss curve.

1. ``make_detection_set`` (seed 0; 1200 train / 150 val images): central crops of
   ../shared/data/hymenoptera photos pasted onto COCO8 / ImageNet-sample backgrounds; train
   objects and backgrounds from hymenoptera/train and half the backgrounds, val from
   hymenoptera/val and the other half.
2. ``train_detect`` from Google's ``coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite`` (`RECIPE`):
   the backbone frozen up to ``Conv2d_9``, ``Conv2d_10``..``Conv2d_13`` trained at lr x0.1, extra
   layers + box predictors kept and trained, new class predictors for ants, bees + background;
   AdamW, cosine schedule; flips only, so the frozen layers' maps of each image (and its
   mirror) are computed once (``cache_features``).
3. ``tasks.detect.evaluate_detection`` (pycocotools) of the saved ``last.safetensors`` on val,
   with the per-class NMS the weights carry (the OD API's eval post-processing).

    python benchmarks/train_detect.py            # writes train_detect.{json,md,png}
    python benchmarks/train_detect.py --set epochs=4 --set optimizer=sgd --threads 2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mobilenets.utils import machine_id

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MOBILENETS_SHARED", HERE.parents[1] / "shared" / "data"))
SSD = SHARED / "models" / "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"


# The recipe (any `DetectConfig` field; ``--set KEY=VALUE`` overrides one).
RECIPE = {"epochs": 16, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "resolution": 300, "random_crop": False,
          "cache_features": True, "backbone_lr_scale": 0.1, "backbone_train_from": "Conv2d_10_depthwise",
          "per_class_nms": True, "eval_every": 4}  # fmt: skip
TRAIN_IMAGES, VAL_IMAGES = 1200, 150


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a DetectConfig field")
    ap.add_argument("--train-images", type=int, default=TRAIN_IMAGES)
    ap.add_argument("--val-images", type=int, default=VAL_IMAGES)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", help="folder for the data set and the run (default: a temporary one)")
    ap.add_argument("--out", default=str(HERE / "train_detect"), help="prefix of the .json/.md/.png results")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from mobilenets.data.synthetic_detection import SyntheticDetectionSpec, make_detection_set
    from mobilenets.train.detect import (
        evaluate_detection_weights,
        make_detect_config,
        open_detection_split,
        parse_detect_setting,
        train_detect,
    )

    work = Path(args.work or tempfile.mkdtemp(prefix="train_detect_"))
    data, run = work / "data", work / "run"
    spec = SyntheticDetectionSpec(seed=0, train_images=args.train_images, val_images=args.val_images)
    t = time.perf_counter()
    manifest = make_detection_set(data, SHARED / "hymenoptera", spec=spec)
    make_seconds = time.perf_counter() - t
    settings = {**RECIPE, **dict(parse_detect_setting(t) for t in args.set)}
    cfg = make_detect_config(data, run, weights=str(SSD), log_every=1, progress=False, **settings)
    t, load_start = time.perf_counter(), os.getloadavg()[0]
    summary = train_detect(cfg)
    train_wall = time.perf_counter() - t
    final = evaluate_detection_weights(run / "last.safetensors", open_detection_split(data, "val"))
    with open(run / "steps.csv") as f:
        steps = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    with open(run / "log.csv") as f:
        epochs = [{k: float(v) if v not in ("", "nan") else None for k, v in r.items()} for r in csv.DictReader(f)]
    result = {
        "what": "SSD-MobileNet-v1 (Google's COCO quant weights) fine-tuned on a generated ants/bees detection set",
        "machine": {"cpu": machine_id(), "threads": args.threads,
                    "torch": torch.__version__, "python": sys.version.split()[0]},
        "dataset": {"spec": manifest["spec"], "counts": manifest["counts"], "seconds": round(make_seconds, 1)},
        "config": cfg.as_dict(),
        "train_wall_seconds": round(train_wall, 1),
        "loadavg": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},  # the run itself adds ~threads
        "loss_first": steps[0]["loss"], "loss_last": steps[-1]["loss"],
        "loss_last10_mean": sum(s["loss"] for s in steps[-10:]) / len(steps[-10:]),
        "final_val": {k: final[k] for k in ("map50", "map", "map75", "mar100", "per_class", "n", "boxes")},
        "summary": summary, "epochs": epochs, "steps": steps,
    }  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    _plot(steps, epochs, out.with_suffix(".png"))
    _markdown(result, out.with_suffix(".md"))
    print(json.dumps({k: result[k] for k in ("train_wall_seconds", "loss_first", "loss_last")} | {
        "map50": final["map50"], "map": final["map"]}))  # fmt: skip
    return 0


def _plot(steps: list[dict], epochs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    x = [s["step"] for s in steps]
    for key in ("loss", "cls_loss", "loc_loss"):
        a.plot(x, [s[key] for s in steps], label=key)
    a.set_xlabel("step")
    a.set_ylabel("loss (per match)")
    a.set_title("train loss")
    a.legend()
    ev = [e for e in epochs if e.get("val_map50") is not None]
    b.plot([e["epoch"] for e in ev], [e["val_map50"] for e in ev], "o-", label="val mAP50")
    b.plot([e["epoch"] for e in ev], [e["val_map"] for e in ev], "s-", label="val mAP")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.set_title("held-out split (pycocotools)")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _recipe(c: dict) -> str:
    """The config in words."""
    if c["backbone_lr_scale"] == 0:
        backbone = "backbone frozen"
    elif c["backbone_train_from"]:
        backbone = (f"backbone frozen up to `{c['backbone_train_from']}`, from there trained at lr "
                    f"x{c['backbone_lr_scale']:g}")  # fmt: skip
    else:
        backbone = f"backbone trained at lr x{c['backbone_lr_scale']:g}"
    if c["cache_features"]:
        backbone += " (the frozen layers' maps of every train image and its mirror computed once: `cache_features`)"
    aug = ", ".join(n for n, on in (("SSD random crop", c["random_crop"]), ("horizontal flip", c["flip"])) if on)
    loss = "sigmoid focal loss" if c["loss"] == "focal" else f"sigmoid loss, hard negatives {c['neg_per_pos']:g}:1"
    per_box = f"{c['classes_per_box']} classes" if c.get("classes_per_box") else "every class"
    nms = "per-class NMS (the OD API's eval)" if c["per_class_nms"] else f"fast NMS, {per_box} per box"
    return (f"{backbone}; extra layers and box predictors from the file, trained; new class predictors (ants, bees "
            f"+ background). {c['optimizer']} lr {c['lr']:g} (cosine, warmup {c['warmup_epochs']:g} epoch), "
            f"{c['epochs']} epochs, batch {c['batch_size']}, {loss}, augmentation: {aug or 'none'}; "
            f"{c['resolution']}x{c['resolution']}; evaluated with {nms}, {c['max_detections']} boxes per image")  # fmt: skip


def _markdown(r: dict, path: Path) -> None:
    f, c = r["final_val"], r["config"]
    secs = [e["epoch_seconds"] for e in r["epochs"]]
    lines = [
        "# SSD detection fine-tuning (generated ants/bees set)",
        "",
        (
            f"Google's `coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite` (alpha 0.75): {_recipe(c)}. "
            f"{r['machine']['threads']} CPU threads (`{r['machine']['cpu']}`, torch {r['machine']['torch']})."
        ),
        "",
        (
            f"Data: `make_detection_set(seed=0)`: {r['dataset']['counts']['train']['images']} train images "
            f"({r['dataset']['counts']['train']['boxes']} boxes), {r['dataset']['counts']['val']['images']} val images "
            f"({r['dataset']['counts']['val']['boxes']} boxes) from disjoint object photos and backgrounds."
        ),
        "",
        "| | value |",
        "|---|---|",
        f"| val mAP50 (pycocotools) | {f['map50']:.3f} |",
        f"| val mAP@[.5:.95] | {f['map']:.3f} |",
        f"| val mAP75 | {f['map75']:.3f} |",
        *(f"| AP@[.5:.95] {k} | {v:.3f} |" for k, v in f["per_class"].items()),
        f"| loss first step -> mean of last 10 | {r['loss_first']:.3f} -> {r['loss_last10_mean']:.3f} |",
        f"| training wall time (incl. val every {c['eval_every']} epochs) | {r['train_wall_seconds']:.0f} s |",
        f"| epoch time: median / slowest | {statistics.median(secs):.1f} s / {max(secs):.1f} s |",
        "",
        "![loss](train_detect.png)",
        "",
        (
            "Reproduce: `python benchmarks/train_detect.py`. "
            + (f"Load average {r['loadavg']['start']:.1f} at the start, {r['loadavg']['end']:.1f} at the end (the run "
               f"itself adds about {r['machine']['threads']}); " if "start" in r.get("loadavg", {}) else
               f"{r['loadavg']['note']}; " if "note" in r.get("loadavg", {}) else "")
            + "other jobs on the machine slow epochs down (the slowest epoch against the median shows it)."
        ),
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
