"""SSD detection training: matcher, loss, augmentation, data checks, the generated set, and exact resume after kill -9."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data.coco import AnnotationError
from mobilenets.errors import ConfigError
from mobilenets.models.ssd import SSDMobileNetV1
from mobilenets.train.detect import (
    assign_targets,
    augment_sample,
    frozen_backbone_layers,
    make_detect_config,
    match_anchors,
    open_detection_split,
    parse_detect_setting,
    ssd_loss,
    train_detect,
)

from .conftest import shared_path

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # bit-equality needs one thread (the classification test's rule)


# --- matcher and loss ---------------------------------------------------------------------------


def test_argmax_matcher_threshold_and_force_match():
    anchors = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 0.45, 0.5], [0.5, 0.5, 1.0, 1.0], [0.6, 0.0, 0.7, 0.1]])
    gt = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.58, 0.0, 0.75, 0.12]])
    m = match_anchors(gt, anchors)
    # anchor 0: IoU 1; anchor 1: IoU 0.9 >= 0.5; anchor 2: none; anchor 3: IoU 0.49 < 0.5 but the best for box 1
    assert m.tolist() == [0, 0, -1, 1]
    assert match_anchors(gt, anchors, force_match=False).tolist() == [0, 0, -1, -1]
    assert match_anchors(torch.zeros(0, 4), anchors).tolist() == [-1] * 4


def test_loss_targets_mining_and_encoding():
    torch.manual_seed(0)
    model = SSDMobileNetV1(alpha=0.25, num_classes=3)
    anchors = model.anchors_for((96, 96))
    a = anchors.shape[0]
    boxes = [torch.tensor([[0.1, 0.1, 0.6, 0.5]]), torch.zeros(0, 4)]
    labels = [torch.tensor([2]), torch.zeros(0, dtype=torch.long)]
    cls_t, box_t = assign_targets(model, anchors, boxes, labels)
    pos = cls_t[0] > 0
    assert set(cls_t[0][pos].tolist()) == {2} and int(pos.sum()) >= 1 and not (cls_t[1] > 0).any()
    # the codes decode back to the box for every matched anchor
    dec = model.box_coder.decode(box_t[0][pos], anchors[pos])
    assert torch.allclose(dec, boxes[0].expand_as(dec), atol=1e-5)
    cfg = make_detect_config("d", "o")
    logits = torch.randn(2, a, 3, requires_grad=True)
    enc = torch.randn(2, a, 4, requires_grad=True)
    out = ssd_loss(enc, logits, cls_t, box_t, cfg)
    out["loss"].backward()
    # hard negative mining: 3 negatives per positive in image 0, none in image 1 (no positives, min_negatives 0)
    touched = logits.grad.abs().sum(-1) > 0
    assert int(touched[0].sum()) == 4 * int(pos.sum()) and int(touched[1].sum()) == 0
    assert int((enc.grad.abs().sum(-1) > 0).sum()) == int(pos.sum())  # box loss on matches only
    focal = ssd_loss(enc, logits, cls_t, box_t, make_detect_config("d", "o", loss="focal"))
    assert torch.isfinite(focal["loss"])


def test_augment_is_seeded_and_keeps_boxes_valid():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8))
    boxes = np.array([[0.1, 0.1, 0.5, 0.4], [0.5, 0.6, 0.9, 0.95]], np.float32)
    labels = np.array([1, 2])
    for seed in range(30):
        a = augment_sample(img, boxes, labels, np.random.default_rng([seed, 0, 1]))
        b = augment_sample(img, boxes, labels, np.random.default_rng([seed, 0, 1]))
        assert a[0].tobytes() == b[0].tobytes() and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
        bx = a[1]
        assert len(bx) == len(a[2]) and (bx >= 0).all() and (bx <= 1).all()
        assert ((bx[:, 2] > bx[:, 0]) & (bx[:, 3] > bx[:, 1])).all()


def test_parse_detect_setting():
    assert parse_detect_setting("backbone_lr_scale=0.1") == ("backbone_lr_scale", 0.1)
    assert parse_detect_setting("random-crop=false") == ("random_crop", False)
    with pytest.raises(ConfigError):
        parse_detect_setting("nonsense=1")
    with pytest.raises(ConfigError):
        make_detect_config("d", "o", loss="hinge")
    with pytest.raises(ConfigError):
        make_detect_config("d", "o", optimizer="lion")
    with pytest.raises(ConfigError, match="cache_features"):
        make_detect_config("d", "o", cache_features=True)  # random crop on: nothing to cache
    with pytest.raises(ConfigError, match="cache_features"):
        make_detect_config("d", "o", cache_features=True, random_crop=False, backbone_lr_scale=0.1)


def test_frozen_backbone_layers():
    model = SSDMobileNetV1(alpha=0.25, num_classes=3)
    names = [n for n, _ in model.backbone.features.named_children()]
    assert frozen_backbone_layers(model, make_detect_config("d", "o")) == names  # backbone_lr_scale 0
    assert frozen_backbone_layers(model, make_detect_config("d", "o", backbone_lr_scale=0.1)) == []
    part = make_detect_config("d", "o", backbone_lr_scale=0.1, backbone_train_from="Conv2d_12_depthwise")
    assert frozen_backbone_layers(model, part) == names[: names.index("Conv2d_12_depthwise")]
    with pytest.raises(ConfigError, match="not a backbone layer"):
        frozen_backbone_layers(model, make_detect_config("d", "o", backbone_lr_scale=0.1, backbone_train_from="x"))


# --- bad input ------------------------------------------------------------------------------------


def _yolo(root: Path, lines: dict[str, str], missing: tuple[str, ...] = ()) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for stem, text in lines.items():
            if stem not in missing:
                Image.new("RGB", (64, 48), (90, 120, 30)).save(root / "images" / split / f"{stem}.jpg")
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "classes.txt").write_text("ant\nbee\n")
    return root


def test_yolo_bad_boxes_are_clipped_or_dropped_and_counted(tmp_path):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2 0.2\n1 0.95 0.5 0.3 0.2\n", "b": "1 0.5 0.5 0 0.3\n", "c": ""})
    ds = open_detection_split(root, "train")
    assert ds.classes == ["ant", "bee"] and len(ds) == 3 and ds.boxes == 2
    assert ds.clipped_boxes == 1 and ds.dropped_boxes == 1  # partly outside: clipped; zero width: dropped
    assert ds.samples[0][1][1, 3] == pytest.approx(1.0) and ds.samples[0][2].tolist() == [1, 2]
    assert "1 empty boxes dropped" in ds.report()


def test_yolo_malformed_line_is_one_line_error(tmp_path):
    root = _yolo(tmp_path, {"a": "0 0.5 0.5 0.2\n"})
    with pytest.raises(AnnotationError, match=r"a\.txt:1: expected"):
        open_detection_split(root, "train")


def test_missing_images_are_counted_and_all_empty_is_an_error(tmp_path):
    root = _yolo(tmp_path / "y", {"a": "0 0.5 0.5 0.2 0.2\n"})
    coco = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "gone.jpg"}],
            "annotations": [{"image_id": 1, "category_id": 7, "bbox": [10, 5, 20, 20]},
                            {"image_id": 1, "category_id": 7, "bbox": [60, 5, 20, 20]},
                            {"image_id": 9, "category_id": 7, "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 7, "name": "ant"}]}  # fmt: skip
    (root / "annotations").mkdir()
    for split in ("train", "val"):
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    ds = open_detection_split(root, "train")
    assert ds.layout == "coco" and ds.classes == ["ant"] and len(ds) == 1 and ds.boxes == 2
    assert ds.clipped_boxes == 1  # x 60..80 on a 64-wide image
    reasons = [r for _, r in ds.skipped]
    assert "image listed but missing" in reasons and any("not listed" in r for r in reasons)
    (root / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(AnnotationError, match="not a readable COCO JSON"):
        open_detection_split(root, "train")
    empty = _yolo(tmp_path / "e", {"a": "", "b": ""})
    with pytest.raises(AnnotationError, match="no ground-truth box"):
        open_detection_split(empty, "train")


# --- the generated set ------------------------------------------------------------------------------


def _make_set(out: Path, seed: int = 0, train: int = 16, val: int = 8) -> Path:
    from mobilenets.data.synthetic_detection import SyntheticDetectionSpec, make_detection_set

    hym = shared_path("hymenoptera")
    make_detection_set(out, hym, spec=SyntheticDetectionSpec(seed=seed, train_images=train, val_images=val,
                                                             image_size=(160, 128)))  # fmt: skip
    return out


def test_detection_set_is_deterministic_and_readable(tmp_path):
    a, b = _make_set(tmp_path / "a", train=4, val=2), _make_set(tmp_path / "b", train=4, val=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    yolo, coco = open_detection_split(a, "val"), None
    (a / "annotations").rename(a / "ann")  # the YOLO reading, then the COCO one, give the same boxes
    yolo = open_detection_split(a, "val")
    (a / "ann").rename(a / "annotations")
    coco = open_detection_split(a, "val")
    assert yolo.layout == "yolo" and coco.layout == "coco" and yolo.classes == coco.classes == ["ants", "bees"]
    for (_, by, ly), (_, bc, lc) in zip(yolo.samples, coco.samples):
        assert np.allclose(by, bc, atol=1e-5) and ly.tolist() == lc.tolist()
    manifest = json.loads((a / "manifest.json").read_text())
    assert not set(manifest["backgrounds"]["train"]) & set(manifest["backgrounds"]["val"])


# --- runs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("train_from", ["", "Conv2d_12_depthwise"])
def test_cached_backbone_maps_train_like_the_full_forward(tmp_path, train_from):
    """``cache_features`` (frozen layers' maps computed once, mirrors included) changes the speed, not the run."""
    from mobilenets.weights import read_weights

    data = _make_set(tmp_path / "data", train=8, val=2)
    part = {"backbone_lr_scale": 0.1, "backbone_train_from": train_from} if train_from else {}
    settings = dict(alpha=0.25, resolution=96, epochs=2, batch_size=4, random_crop=False, optimizer="adamw",
                    lr=1e-3, progress=False, eval_every=0, **part)  # fmt: skip
    for name, cache in (("full", False), ("cached", True)):
        train_detect(make_detect_config(data, tmp_path / name, cache_features=cache, **settings), log=lambda s: None)
    a, b = (read_weights(tmp_path / n / "last.safetensors") for n in ("full", "cached"))
    assert set(a.state_dict) == set(b.state_dict)
    assert all(torch.allclose(a.state_dict[k], b.state_dict[k], atol=1e-6) for k in a.state_dict)
    post = b.cfg.arch_cfg["postprocess"]  # 100 boxes, each with both classes' scores (fast NMS: exportable)
    assert not post["use_regular_nms"] and post["max_detections"] == 100 and post["max_classes_per_detection"] == 2


# --- a run, killed and resumed --------------------------------------------------------------------


def _mobilenets(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=600,
                          env=ENV, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(run: Path) -> list[float]:
    with open(run / "steps.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


# the benchmark's kind of recipe: cached frozen layers (recomputed on resume), the top of the backbone, AdamW
CACHED_RECIPE = ("--set", "cache_features=true", "--set", "random_crop=false", "--set", "optimizer=adamw",
                 "--set", "backbone_train_from=Conv2d_12_depthwise", "--lr", "0.003")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [(), CACHED_RECIPE], ids=["bn-train", "cached-adamw"])
def test_kill_9_then_resume_equals_uninterrupted_and_loss_falls(tmp_path, recipe):
    """From scratch (alpha 0.25, 96 px, backbone at lr x0.1): 3 epochs x 4 steps."""
    from mobilenets.weights import read_weights

    data = _make_set(tmp_path / "data")
    plain = () if recipe else ("--set", "bn_mode=train", "--lr", "0.05")
    args = ["train", "--task", "detect", "--model", "ssd_mobilenet_v1_0.25", "--data", str(data), "--epochs", "3",
            "--batch-size", "4", "--workers", "0", "--checkpoint-every", "3", "--log-every", "1",
            "--set", "resolution=96", *plain, "--set", "backbone_lr_scale=0.1", *recipe,
            "--no-progress"]  # fmt: skip
    ref = tmp_path / "reference"
    summary = json.loads(_mobilenets(*args, "--output", str(ref), "--json").stdout.strip().splitlines()[-1])
    assert summary["steps"] == 12 and summary["epochs"] == 3
    losses = _losses(ref)
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])  # it learns

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", *args, "--output", str(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["step"] < 12 and state["batch_in_epoch"] > 0  # a mid-epoch checkpoint

    _mobilenets("train", "--output", str(killed), "--resume")  # the run directory says it is a detection run
    for name in ("last.safetensors", "best.safetensors"):
        a = read_weights(ref / name).state_dict
        b = read_weights(killed / name).state_dict
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert _losses(ref) == _losses(killed)
    w = read_weights(killed / "last.safetensors")
    assert w.cfg.task == "detect" and list(w.cfg.labels) == ["background", "ants", "bees"]


def test_summary_line_of_a_run_too_short_to_log_a_step(tmp_path):
    """1 epoch of 2 steps with --log-every 10: no step logged, the text summary still prints (no traceback)."""
    data = _make_set(tmp_path / "data")
    r = _mobilenets("train", "--task", "detect", "--model", "ssd_mobilenet_v1_0.25", "--data", str(data),
                    "--epochs", "1", "--batch-size", "8", "--workers", "0", "--set", "resolution=96",
                    "--no-progress", "--output", str(tmp_path / "run"))  # fmt: skip
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("1 epochs in ") and "loss n/a -> n/a" in last and "Traceback" not in r.stderr
