"""``mobilenets import``: each source becomes our safetensors with its contract; bad input is one line, exit 2."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from mobilenets.cli import main
from mobilenets.weights import read_weights

from .conftest import (
    CKPT,
    FIXTURES,
    SLIM,
    closed_port_url,
    keras_file,
    logits,
    make_tgz,
    register,
    shared_path,
    slim_members,
)

FLOAT_TFLITE = "mobilenet_v1_0.25_224_1_default_1.tflite"


def contract(path: Path) -> dict:
    """The file's header as one flat dict: its PretrainedCfg, plus alpha/resolution and how it was read."""
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    cfg = json.loads(header["pretrained_cfg"])
    return {**cfg, **json.loads(header["mobilenets"]), "alpha": cfg["arch_cfg"]["alpha"], "resolution": cfg["input_size"][1]}


def run_import(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["import", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_tflite_to_safetensors(tmp_path, capsys):
    src = shared_path("models", FLOAT_TFLITE)
    out = tmp_path / "w.safetensors"
    rc, stdout, _ = run_import(capsys, str(src), "-o", str(out), "--model", "mobilenet_v1_0.25_224")
    assert rc == 0 and stdout.startswith(f"wrote {out}: MobileNet v1 alpha=0.25, 1001 classes, resolution 224")
    meta = contract(out)
    assert (meta["alpha"], meta["num_classes"], meta["resolution"], meta["format"]) == (0.25, 1001, 224, "tflite-float")
    assert meta["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest() and meta["source"] == str(src)
    assert len(meta["labels"]) == 1001 and meta["labels"][0] == "background"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left beside it


@pytest.mark.parametrize("kind", ["ckpt", "tgz", "h5"])
def test_other_sources(tmp_path, capsys, kind):
    if kind == "ckpt":
        src, fmt, alpha = FIXTURES / CKPT, "slim-ckpt", 0.0625
    elif kind == "tgz":
        src, fmt, alpha = make_tgz(tmp_path / "mobilenet_v1_0.0625_64.tgz", slim_members()), "slim-ckpt", 0.0625
    else:
        src, fmt, alpha = keras_file(tmp_path, "keras2_weights.h5"), "keras-h5", 0.25
    out = tmp_path / "out" / "w.safetensors"
    rc, _, err = run_import(capsys, str(src), "-o", str(out))
    assert rc == 0, err
    meta = contract(out)
    assert (meta["format"], meta["alpha"], meta["num_classes"]) == (fmt, alpha, 10)
    digest_of = src.with_name(src.name + ".index") if kind == "ckpt" else src
    assert meta["sha256"] == hashlib.sha256(digest_of.read_bytes()).hexdigest()
    if kind == "tgz":
        assert meta["resolution"] == 64 and meta["source"] == f"{src}:mobilenet_v1_0.0625_64.ckpt.index"


def test_safetensors_round_trip_keeps_the_original_contract(tmp_path, capsys):
    first, second = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert run_import(capsys, str(FIXTURES / CKPT), "-o", str(first))[0] == 0
    assert run_import(capsys, str(first), "-o", str(second), "--resolution", "96")[0] == 0
    a, b = contract(first), contract(second)
    assert (b["format"], b["source"], b["sha256"], b["ema"]) == (a["format"], a["source"], a["sha256"], True)
    assert b["resolution"] == 96
    np.testing.assert_allclose(logits(read_weights(second), SLIM["x"]), SLIM["logits_ema"], atol=1e-5)


def test_official_name_goes_through_the_cache(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    src = make_tgz(tmp_path / "m.tgz", slim_members())
    register(monkeypatch, [src.as_uri()])
    out = tmp_path / "w.safetensors"
    rc, _, err = run_import(capsys, "mobilenet_v1_test", "-o", str(out))
    assert rc == 0, err
    meta = contract(out)
    assert meta["source"] == src.as_uri() and meta["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


def _bad_source(tmp_path: Path, monkeypatch, kind: str) -> tuple[list[str], str]:
    """(arguments after ``import``, text the error line must contain)."""
    if kind == "truncated-tflite":
        src = tmp_path / "trunc.tflite"
        src.write_bytes(shared_path("models", FLOAT_TFLITE).read_bytes()[:300_000])
        return [str(src)], "trunc.tflite"
    if kind in ("ssd", "deeplab"):
        name = {"ssd": "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite", "deeplab": "deeplabv3.tflite"}[kind]
        return [str(shared_path("models", name))], "not a MobileNet v1 classifier/backbone"
    if kind == "alpha-mismatch":
        return [
            str(FIXTURES / CKPT),
            "--model",
            "mobilenet_v1_0.25_128",
        ], "alpha=0.0625 but mobilenet_v1_0.25_128 has alpha=0.25"
    if kind == "resolution-mismatch":
        src = keras_file(tmp_path, "keras3_model.h5")  # a full-model save records its 64x64 input
        return [str(src), "--model", "mobilenet_v1_0.25_224"], "built for 64x64 but mobilenet_v1_0.25_224 is 224"
    if kind == "corrupt-tgz":
        src = make_tgz(tmp_path / "m.tgz", slim_members())
        src.write_bytes(src.read_bytes()[:20_000])
        return [str(src)], "corrupt, truncated or unreadable archive"
    if kind == "dotdot-tgz":
        src = make_tgz(tmp_path / "m.tgz", {**slim_members(), "../escape.txt": b"x"})
        return [str(src)], "unsafe archive member '../escape.txt'"
    if kind == "missing":
        return [str(tmp_path / "nope.tflite")], "nope.tflite: no such file"
    if kind == "unknown-model":
        return [str(FIXTURES / CKPT), "--model", "resnet50"], "unknown model 'resnet50'"
    assert kind == "offline"
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    url = closed_port_url()
    register(monkeypatch, [url])
    return ["mobilenet_v1_test"], f"cannot get weights mobilenet_v1_test: {url}"


BAD = ["truncated-tflite", "ssd", "deeplab", "alpha-mismatch", "resolution-mismatch", "corrupt-tgz", "dotdot-tgz",
       "missing", "unknown-model", "offline"]  # fmt: skip


@pytest.mark.parametrize("kind", BAD)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, monkeypatch, kind):
    args, needle = _bad_source(tmp_path, monkeypatch, kind)
    before = sorted(tmp_path.rglob("*"))
    out = tmp_path / "out" / "w.safetensors"
    rc, stdout, err = run_import(capsys, *args, "-o", str(out))
    assert rc == 2 and stdout == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("mobilenets: error: ") and needle in err, err
    assert sorted(tmp_path.rglob("*")) == before  # no output, no temp file, no cache entry
    assert not (tmp_path.parent / "escape.txt").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=300, check=False
    )


def test_the_installed_command(tmp_path):
    """The real entry point: success and a one-line error, in a fresh interpreter."""
    out = tmp_path / "w.safetensors"
    ok = run_cli("import", str(FIXTURES / CKPT), "-o", str(out))
    assert ok.returncode == 0 and ok.stdout.count("\n") == 1, ok.stderr
    bad_src = tmp_path / "bad.tgz"
    bad_src.write_bytes(b"\x1f\x8b" + b"\0" * 100)
    bad = run_cli("import", str(bad_src), "-o", str(tmp_path / "x.safetensors"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "bad.tgz" in bad.stderr
    assert not (tmp_path / "x.safetensors").exists()
