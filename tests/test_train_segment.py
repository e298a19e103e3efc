"""Segmentation training (slow): DeepLab v3 / MobileNet v1 0.25 from Google's ImageNet float weights on 4 VOC pairs.

One small run through the CLI (65 x 65 crops, batch 2, 20 epochs of 2 steps, Adam 3e-4 poly): the loss falls
and mIoU rises; a run killed with -9 and resumed ends on the same weights; the saved
safetensors rebuild as DeepLab, export to ONNX and run through the Predictor with the
mIoU the run measured. The numbers of a longer run are in benchmarks/train_segment.md.
"""

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

from .conftest import shared_path

pytestmark = pytest.mark.slow
# one thread: a float sum's order (and so the last bits) depends on the thread count
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
EPOCHS, STEPS_PER_EPOCH = 20, 2


def mobilenets(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=600,
                          env=ENV, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_args(output: Path) -> list[str]:
    data = shared_path("voc2012_seg_samples")
    weights = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    return ["finetune", "--task", "segment", "--data", str(data), "--weights", str(weights), "--output", str(output),
            "--epochs", str(EPOCHS), "--batch-size", "2", "--resolution", "65", "--set", "limit=4",
            "--set", "threads=1", "--checkpoint-every", "1", "--log-every", "1", "--workers", "0"]  # fmt: skip


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("seg") / "reference"
    summary = json.loads(mobilenets(*run_args(out), "--json").stdout.strip().splitlines()[-1])
    return out, summary


def test_loss_falls_and_miou_rises(reference):
    out, s = reference
    assert s["epochs"] == EPOCHS and s["steps"] == EPOCHS * STEPS_PER_EPOCH
    epochs = rows(out / "log.csv")
    losses = [float(r["train_loss"]) for r in epochs]
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; mIoU {s['start_miou']:.3f} -> {s['val_miou']:.3f}")
    assert np.mean(losses[-2:]) < 0.7 * np.mean(losses[:2])
    assert s["val_miou"] > s["start_miou"] + 0.05
    run = json.loads((out / "run.json").read_text())
    assert run["task"] == "segment" and run["config"]["backbone"] == "mobilenet_v1" and run["config"]["alpha"] == 0.25


def test_kill_9_then_resume_equals_uninterrupted(reference, tmp_path):
    ref, _ = reference
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mobilenets", *run_args(killed)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    state = torch.load(killed / "last.pt", weights_only=True)
    assert state["step"] < EPOCHS * STEPS_PER_EPOCH
    mobilenets("finetune", "--task", "segment", "--output", str(killed), "--resume")
    from mobilenets.weights import read_weights

    for name in ("last.safetensors", "best.safetensors"):
        a, b = read_weights(ref / name).state_dict, read_weights(killed / name).state_dict
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a), name
    assert rows(ref / "steps.csv") == rows(killed / "steps.csv")


def test_saved_weights_export_and_predict(reference, tmp_path):
    pytest.importorskip("onnxruntime")
    from mobilenets.auto import load_predictor
    from mobilenets.builder import model_from_weights
    from mobilenets.export import export_model
    from mobilenets.models.deeplab import DeepLabV3
    from mobilenets.tasks.segment import evaluate_segmentation
    from mobilenets.weights import read_weights

    out, s = reference
    weights = out / "last.safetensors"
    w = read_weights(weights)
    assert w.cfg.task == "segment" and w.cfg.arch == "deeplabv3_mobilenet_v1" and w.cfg.input_size == (3, 65, 65)
    model = model_from_weights(w)
    assert isinstance(model, DeepLabV3) and model.backbone_name == "mobilenet_v1"
    data = shared_path("voc2012_seg_samples")
    torch_pred = load_predictor(weights=weights, backend="torch")
    assert torch_pred.task == "segment" and torch_pred.label(15) == "person"
    r = evaluate_segmentation(torch_pred, data, limit=4)
    assert abs(r.miou - s["val_miou"]) < 1e-3  # the run's own epoch-end number (BN folded here: float rounding)
    res = export_model(model, "onnx", tmp_path / "seg.onnx", parity_images=np.stack(
        [torch_pred.transform(p).numpy() for p, _ in _pairs(data)]))  # fmt: skip
    assert res.parity.agreement["pixels"] >= 0.999
    onnx_pred = load_predictor(weights=res.path)
    assert onnx_pred.backend == "onnxruntime"
    r_onnx = evaluate_segmentation(onnx_pred, data, limit=4)
    assert abs(r_onnx.miou - r.miou) < 5e-3


def _pairs(data: Path) -> list[tuple[Path, Path]]:
    from mobilenets.data.voc import find_segmentation_data

    return find_segmentation_data(data).pairs[:4]
