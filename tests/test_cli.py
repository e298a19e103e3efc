"""The command line: JSON contracts and one-line errors with exit code 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from .conftest import assert_one_line_error, run


def test_table_json():
    proc = run("table", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 16
    first = rows[0]
    assert {"name", "alpha", "resolution", "macs", "params", "params_table", "published"} <= set(first)
    assert set(first["published"]) >= {"macs_m", "params_m", "top1", "top5"}
    assert first["name"] == "mobilenet_v1_1.0_224" and first["macs"] == 568_741_376
    assert first["params_table"] == 4_243_945 and first["params"] == 4_233_001
    assert all(isinstance(r["macs"], int) and isinstance(r["params_table"], int) for r in rows)


def test_table_text_and_profile():
    proc = run("table")
    assert proc.returncode == 0 and "mobilenet_v1_0.25_128" in proc.stdout
    proc = run("profile", "--alpha", "0.6", "--resolution", "200", "--json")
    out = json.loads(proc.stdout)
    assert out["name"] == "mobilenet_v1_0.6_200" and out["macs"] > 0


@pytest.mark.parametrize(("args", "needle"),
                         [(["profile", "--alpha", "0"], "alpha"), (["profile", "--alpha", "-0.5"], "alpha"),
                          (["profile", "--resolution", "31"], "resolution"),
                          (["profile", "--model", "mobilenet_v1_1.0_225"], "unknown model"),
                          (["profile", "--model", "resnet50"], "unknown model")])  # fmt: skip
def test_bad_config_errors(args, needle):
    assert_one_line_error(run(*args), needle)


def test_preprocess_writes_reference_tensors(tmp_path):
    img = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 40, 3), dtype=np.uint8)).save(img)
    out = tmp_path / "x.npy"
    proc = run("preprocess", str(img), "--resolution", "64", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (1, 3, 64, 64)


def _bad_images(tmp_path):
    text = tmp_path / "text.jpg"
    text.write_text("not an image")
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:300])
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1)).save(one)
    return {"text": text, "trunc": trunc, "one": one, "missing": tmp_path / "missing.jpg"}


@pytest.mark.parametrize("kind", ["text", "trunc", "one", "missing"])
def test_bad_image_errors(tmp_path, kind):
    path = _bad_images(tmp_path)[kind]
    out = tmp_path / "out.npy"
    assert_one_line_error(run("preprocess", str(path), "-o", str(out)), str(path))
    assert not out.exists()
    assert not list(tmp_path.glob(".out.npy*"))  # no temp file left behind
