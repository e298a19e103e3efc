"""Training end to end on a tiny synthetic image set: run files, weights contract, exact resume, bad input."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.cli import main
from mobilenets.data.transforms import EvalTransform
from mobilenets.models.registry import mobilenet_v1
from mobilenets.train import TrainConfig, engine, evaluate_weights, get_recipe, train
from mobilenets.train.distributed import DistInfo
from mobilenets.train.engine import open_split, source_mapped_head
from mobilenets.weights import build_model, read_weights

from .conftest import shared_path

MODEL = "mobilenet_v1_0.25_64"


def make_image_folders(root: Path, per_class: int = 8) -> Path:
    """train/{ants,bees} with ``per_class`` small PNGs each (colour tells the class), val/ with half as many."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", max(2, per_class // 2))):
        for name, colour in (("ants", (200, 60, 30)), ("bees", (30, 90, 210))):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                arr = np.clip(rng.normal(colour, 60, size=(40 + i % 5, 48, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folders(tmp_path_factory.mktemp("images"))


def tiny_config(data: Path, out: Path, **recipe) -> TrainConfig:
    r = get_recipe("slim").with_overrides(**{"epochs": 2, "batch_size": 4, **recipe})
    return TrainConfig(data=str(data), output=str(out), recipe=r, alpha=0.25, resolution=64, workers=0,
                       checkpoint_every=3, log_every=1, progress=False)  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_train_writes_run_files_and_loadable_weights(data, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_config(data, out))
    assert summary["epochs"] == 2 and summary["steps"] == 8 and summary["skipped_images"] == 0
    assert {p.name for p in out.iterdir()} >= {"run.json", "last.pt", "last.safetensors", "best.safetensors",
                                                "log.csv", "steps.csv"}  # fmt: skip
    assert not list(out.glob(".*.tmp"))
    epochs, steps = read_csv(out / "log.csv"), read_csv(out / "steps.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2] and [int(r["step"]) for r in steps] == list(range(1, 9))
    assert all(np.isfinite(float(r["loss"])) for r in steps)

    w = read_weights(out / "last.safetensors")
    assert w.labels == ["ants", "bees"] and w.num_classes == 2 and w.alpha == 0.25 and w.resolution == 64
    assert w.meta["recipe"] == "slim" and w.meta["epoch"] == 2
    model = build_model(w)
    assert model.pretrained_cfg["labels"] == ["ants", "bees"] and not model.pretrained_cfg["has_background"]
    result = evaluate_weights(out / "last.safetensors", data, workers=0)
    assert result["count"] == 8 and result["top1"] == pytest.approx(float(epochs[-1]["val_top1"]))

    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and state["batch_in_epoch"] == 0 and state["step"] == 8
    assert {"model", "optimizer", "scheduler", "ema", "scaler", "config", "classes", "logs"} <= set(state)


def test_source_mapped_head_is_softmax_weighted_source_rows(data):
    source = mobilenet_v1(alpha=0.25, resolution=64, num_classes=5).eval()
    train_data = open_split(data, "train")
    weight, bias = source_mapped_head(source, train_data, 64, DistInfo())
    t = EvalTransform(64)
    with torch.no_grad():
        probs = torch.cat([source(t(path)[None]).softmax(1) for path, _ in train_data.samples]).double()
    labels = torch.tensor([label for _, label in train_data.samples])
    mean = torch.stack([probs[labels == k].mean(0) for k in range(2)])
    torch.testing.assert_close(weight, (mean @ source.classifier.weight.flatten(1).double()).float())
    torch.testing.assert_close(bias, (mean @ source.classifier.bias.double()).float())


def test_resume_after_a_crash_is_bit_exact(data, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(tiny_config(data, reference, ema_decay=0.9, dropout=0.2))

    crashed = tmp_path / "crashed"
    real_step, calls = engine.train_step, []

    def crash_at_step_6(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # mid-epoch 2; the last checkpoint is after step 3 (mid-epoch 1)
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, crashed, ema_decay=0.9, dropout=0.2))
    state = torch.load(crashed / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"], state["step"]) == (1, 0, 4)
    monkeypatch.setattr(engine, "train_step", real_step)
    train(tiny_config(data, crashed, ema_decay=0.9, dropout=0.2), resume=True)

    for name in ("last.safetensors", "best.safetensors"):
        a, b = read_weights(reference / name).state_dict, read_weights(crashed / name).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = (torch.load(d / "last.pt", weights_only=True) for d in (reference, crashed))
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert all(torch.equal(sa["ema"][k], sb["ema"][k]) for k in sa["ema"])
    assert [r["loss"] for r in sa["logs"]["steps"]] == [r["loss"] for r in sb["logs"]["steps"]]


def test_resume_mid_epoch_checkpoint(data, tmp_path, monkeypatch):
    reference, crashed = tmp_path / "reference", tmp_path / "crashed"
    train(tiny_config(data, reference))
    real_step, calls = engine.train_step, []

    def crash_at_step_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(engine, "train_step", crash_at_step_4)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(data, crashed))
    state = torch.load(crashed / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)  # checkpoint_every=3: mid-epoch 1
    monkeypatch.setattr(engine, "train_step", real_step)
    train(tiny_config(data, crashed), resume=True)
    a, b = (
        read_weights(reference / "last.safetensors").state_dict,
        read_weights(crashed / "last.safetensors").state_dict,
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_csv(reference / "log.csv"), read_csv(crashed / "log.csv")
    assert [r["train_loss"] for r in ra] == [r["train_loss"] for r in rb]


def test_resume_extends_a_finished_run(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", MODEL, "--output", str(out), "--epochs", "1", "--batch-size", "4",
            "--workers", "0", "--json"]  # fmt: skip
    rc, stdout, _ = run_cli(capsys, *args)
    assert rc == 0 and json.loads(stdout.splitlines()[-1])["epochs"] == 1
    rc, stdout, _ = run_cli(capsys, "train", "--output", str(out), "--resume", "--epochs", "2", "--json")
    assert rc == 0 and json.loads(stdout.splitlines()[-1])["epochs"] == 2
    assert len(read_csv(out / "log.csv")) == 2
    rc, _, err = run_cli(capsys, "train", "--output", str(out), "--resume", "--batch-size", "8")
    assert rc == 2 and "batch_size differ" in err


def test_finetune_from_tflite_cli(data, tmp_path, capsys):
    src = shared_path("models", "mobilenet_v1_0.25_128_quant.tflite")
    out = tmp_path / "ft"
    rc, stdout, err = run_cli(capsys, "finetune", "--data", str(data), "--weights", str(src), "--resolution", "64",
                              "--output", str(out), "--epochs", "1", "--batch-size", "8", "--workers", "0", "--json")  # fmt: skip
    assert rc == 0, err
    summary = json.loads(stdout.splitlines()[-1])
    assert set(summary) == {"val_top1", "epochs", "seconds", "weights"}
    assert summary["epochs"] == 1 and 0 <= summary["val_top1"] <= 1 and Path(summary["weights"]).is_file()
    w = read_weights(summary["weights"])
    assert w.labels == ["ants", "bees"] and w.alpha == 0.25 and w.num_classes == 2
    assert json.loads((out / "run.json").read_text())["config"]["recipe"]["name"] == "finetune"


# --- bad input: one line on stderr, exit code 2, the existing run untouched -----------------------------


def test_missing_and_empty_data(tmp_path, capsys):
    rc, _, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "none"), "--model", MODEL, "--output", str(tmp_path / "o")
    )
    assert rc == 2 and "no such folder" in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir()
    rc, _, err = run_cli(capsys, "train", "--data", str(empty), "--model", MODEL, "--output", str(tmp_path / "o"))
    assert rc == 2 and "no images found" in err
    (empty / "train" / "ants").mkdir()
    (empty / "train" / "bees").mkdir()
    Image.new("RGB", (32, 32)).save(empty / "train" / "ants" / "a.png")
    rc, _, err = run_cli(capsys, "train", "--data", str(empty), "--model", MODEL, "--output", str(tmp_path / "o"))
    assert rc == 2 and "bees contain no images" in err
    assert not (tmp_path / "o").exists()


def test_output_holding_a_run_and_resume_without_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))
    before = (out / "last.pt").read_bytes()
    rc, _, err = run_cli(capsys, "train", "--data", str(data), "--model", MODEL, "--output", str(out))
    assert rc == 2 and "holds another run" in err and "--resume" in err
    assert (out / "last.pt").read_bytes() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    rc, _, err = run_cli(capsys, "train", "--data", str(data), "--model", MODEL, "--output", str(other))
    assert rc == 2 and "is not empty" in err
    rc, _, err = run_cli(capsys, "train", "--output", str(tmp_path / "fresh"), "--resume")
    assert rc == 2 and "no checkpoint to resume" in err
    (other / "last.pt").write_bytes(b"not a checkpoint")
    rc, _, err = run_cli(capsys, "train", "--output", str(other), "--resume")
    assert rc == 2 and "not a readable checkpoint" in err and len(err.strip().splitlines()) == 1


def test_batch_larger_than_data_and_bad_override(data, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "train", "--data", str(data), "--model", MODEL, "--output", str(tmp_path / "a"),
                         "--batch-size", "64")  # fmt: skip
    assert rc == 2 and "fewer than the batch size" in err
    rc, _, err = run_cli(capsys, "train", "--data", str(data), "--model", MODEL, "--output", str(tmp_path / "b"),
                         "--set", "warp=9")  # fmt: skip
    assert rc == 2 and "recipe field" in err


def test_corrupt_image_is_skipped_counted_and_warned_once(data, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(data, bad)
    (bad / "train" / "ants" / "07.png").unlink()
    (bad / "train" / "ants" / "03x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)  # 16 images, batch 4
    (bad / "val" / "bees" / "01x.png").write_bytes(b"nope")
    rc, _, err = run_cli(capsys, "train", "--data", str(bad), "--model", MODEL, "--output", str(tmp_path / "r"),
                           "--epochs", "2", "--batch-size", "4", "--workers", "0")  # fmt: skip
    assert rc == 0, err
    assert err.count("warning: skipping unreadable image") == 1 and "03x.png" in err
    rows = read_csv(tmp_path / "r" / "log.csv")
    assert [int(r["skipped"]) for r in rows] == [1, 1]  # every epoch uses all 16 train images


def test_real_process_error_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mobilenets", "finetune", "--data", str(tmp_path), "--weights",
                           str(tmp_path / "missing.tflite"), "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"mobilenets: error: {tmp_path / 'missing.tflite'}: no such file"]


def test_recipes_command(capsys):
    rc, out, _ = run_cli(capsys, "recipes", "--json")
    recipes = {r["name"]: r for r in json.loads(out)}
    assert set(recipes) == {"slim", "modern", "finetune"} and recipes["slim"]["eps"] == 1.0
    rc, out, _ = run_cli(capsys, "recipes", "slim")
    assert rc == 0 and "rmsprop_tf" in out and "0.94" in out


def test_short_run_warns_about_slow_bn_statistics(data, tmp_path, capsys):
    args = ("train", "--data", str(data), "--model", MODEL, "--batch-size", "4", "--workers", "0")
    rc, _, err = run_cli(capsys, *args, "--epochs", "1", "--output", str(tmp_path / "slim"))
    assert rc == 0 and "warning: BN decay 0.9997 over 4 steps keeps 100%" in err and "bn_decay=0.47 " in err
    rc, _, err = run_cli(capsys, *args, "--epochs", "8", "--recipe", "modern", "--output", str(tmp_path / "modern"))
    assert rc == 0 and "BN decay" not in err  # 0.9 ** 32 steps < 5%


def test_tensorboard_log(data, tmp_path):
    """With the [train] extra, a run writes TensorBoard events: per-step loss and lr, per-epoch metrics."""
    pytest.importorskip("tensorboard", reason="needs the [train] extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/val_top1", "epoch/train_loss"} <= tags
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
