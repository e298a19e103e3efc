"""classify / evaluate / embed / similar from the command line, on Google's files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from .conftest import assert_one_line_error, run, shared_path

FLOAT = ("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
QUANT_224 = ("models", "mobilenet_v1_0.25_224_quant.tflite")
EMBED = ("models", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")


def test_classify_json_reference_images():
    w = shared_path(*FLOAT)
    hopper, parrot = shared_path("images", "grace_hopper.bmp"), shared_path("images", "parrot.jpg")
    proc = run("classify", str(hopper), str(parrot), "--weights", str(w), "--json", "--top-k", "3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["image"] for r in rows] == [str(hopper), str(parrot)]
    assert len(rows[0]["predictions"]) == 3 and set(rows[0]["predictions"][0]) == {"index", "label", "score"}
    top = rows[0]["predictions"][0]
    # LiteRT reference on this file: bow tie 0.38 on grace_hopper, macaw 0.96 on parrot
    assert top["label"].startswith("bow tie") and top["index"] == 458 and abs(top["score"] - 0.38) < 0.02
    assert rows[1]["predictions"][0]["label"] == "macaw" and rows[1]["predictions"][0]["score"] > 0.95


def test_classify_quant_burger_whole_image():
    # tflite-support's golden: 0.25_224_quant on burger.jpg (whole image resized) -> 934 cheeseburger ~0.96
    proc = run("classify", str(shared_path("images", "burger.jpg")), "--weights", str(shared_path(*QUANT_224)),
               "--crop", "1.0", "--json", "--top-k", "1")  # fmt: skip
    pred = json.loads(proc.stdout)["predictions"][0]
    assert (pred["index"], pred["label"]) == (934, "cheeseburger") and pred["score"] == pytest.approx(0.96, abs=0.02)


def test_background_hidden_unless_asked(tmp_path):
    img = tmp_path / "flat.png"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(img)
    w = str(shared_path(*FLOAT))
    hidden = json.loads(run("classify", str(img), "--weights", w, "--json", "--top-k", "1001").stdout)
    assert all(p["index"] != 0 for p in hidden["predictions"]) and len(hidden["predictions"]) == 1000
    shown = json.loads(run("classify", str(img), "--weights", w, "--json", "--top-k", "1001", "--show-background").stdout)
    assert any(p["index"] == 0 and p["label"] == "background" for p in shown["predictions"])


def test_evaluate_json_on_flat_wnid_folder():
    proc = run("evaluate", "--data", str(shared_path("imagenet_samples_100")), "--weights", str(shared_path(*FLOAT)),
               "--json", "--limit", "20", "--workers", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"top1", "top5", "n", "images_per_s"} <= set(out)
    assert out["n"] == 20 and 0 <= out["top1"] <= out["top5"] <= 1 and out["images_per_s"] > 0


def test_evaluate_imagenet_val_layout_and_labels_file(tmp_path):
    src = shared_path("imagenet_samples_100")
    files = sorted(src.iterdir())[:6]
    val = tmp_path / "val"
    for f in files:  # ImageNet val layout: one folder per wnid
        (val / f.name[:9]).mkdir(parents=True)
        shutil.copy(f, val / f.name[:9] / f.name)
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for i, f in enumerate(files):  # anonymous names + labels file
        shutil.copy(f, flat / f"img{i}.jpg")
        lines.append(f"img{i}.jpg\t{f.name[:9]}")
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")
    w = str(shared_path(*FLOAT))
    a = json.loads(run("evaluate", "--data", str(val), "--weights", w, "--json", "--workers", "0").stdout)
    b = json.loads(run("evaluate", "--data", str(flat), "--labels", str(tmp_path / "labels.txt"), "--weights", w,
                       "--json", "--workers", "0").stdout)  # fmt: skip
    c = json.loads(run("evaluate", "--data", str(src), "--limit", "6", "--weights", w, "--json", "--workers", "0").stdout)
    assert a["n"] == b["n"] == c["n"] == 6
    assert a["top1"] == b["top1"] == c["top1"] and a["top5"] == b["top5"] == c["top5"]


def test_evaluate_skips_corrupt_images_with_one_warning(tmp_path):
    src = shared_path("imagenet_samples_100")
    for f in sorted(src.iterdir())[:4]:
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "n01440764_broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "n01443537_broken.JPEG").write_bytes(b"garbage")
    proc = run("evaluate", "--data", str(tmp_path), "--weights", str(shared_path(*FLOAT)), "--json", "--workers", "0")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["n"] == 4 and out["skipped"] == 2
    assert proc.stderr.count("warning") == 1


def test_embed_and_similar(tmp_path):
    w = str(shared_path(*EMBED))
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("cat.bmp", "parrot.jpg", "burger.jpg", "sunflower.bmp"):
        shutil.copy(shared_path("images", name), gallery / name)
    out = tmp_path / "emb.npy"
    proc = run("embed", str(gallery), "-o", str(out), "--weights", w, "--l2")
    assert proc.returncode == 0, proc.stderr
    emb = np.load(out)
    assert emb.shape == (4, 1024) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    query = shared_path("images", "burger-224.png")  # the same burger, pre-resized
    proc = run("similar", str(query), "--gallery", str(gallery), "-k", "2", "--weights", w, "--json")
    assert proc.returncode == 0, proc.stderr
    hits = json.loads(proc.stdout)["neighbours"]
    assert hits[0]["image"].endswith("burger.jpg") and hits[0]["cosine"] > hits[1]["cosine"]
    caches = list(gallery.glob(".mobilenets-gallery-*.npz"))
    assert len(caches) == 1
    before = caches[0].stat().st_mtime_ns
    run("similar", str(query), "--gallery", str(gallery), "-k", "1", "--weights", w, "--json")
    assert caches[0].stat().st_mtime_ns == before  # cache reused, not rewritten


@pytest.mark.parametrize(("extra", "needle"),
                         [(["--top-k", "0"], "--top-k"), (["--crop", "0"], "--crop"),
                          (["--model", "mobilenet_v1_1.0_224"], "alpha"), (["--backend", "tensorrt"], "backend")])  # fmt: skip
def test_classify_bad_arguments(extra, needle):
    proc = run("classify", str(shared_path("images", "cat.bmp")), "--weights", str(shared_path(*FLOAT)), *extra)
    assert_one_line_error(proc, needle)


def test_classify_bad_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    assert_one_line_error(run("classify", str(bad), "--weights", str(shared_path(*FLOAT))), "not an image")


def test_evaluate_empty_folder(tmp_path):
    proc = run("evaluate", "--data", str(tmp_path), "--weights", str(shared_path(*FLOAT)))
    assert_one_line_error(proc, "no images")


def test_evaluate_warns_about_an_off_by_one_labels_file(tmp_path, capsys):
    """Labels in the model's 1001-class output convention (one too high) score 0%: the warning says so."""
    from mobilenets.cli import main
    from mobilenets.data.labels import imagenet_classes

    wnids, _ = imagenet_classes()
    folder = shared_path("imagenet_samples_100")
    files = sorted(folder.iterdir())[:30]
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{p.name} {wnids.index(p.name.split('_')[0]) + 1}" for p in files))
    argv = ["evaluate", "--data", str(folder), "--labels", str(labels), "--weights", str(shared_path(*FLOAT)),
            "--limit", "30", "--workers", "0", "--json"]  # fmt: skip
    assert main(argv) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["top1"] == 0.0
    assert "were one lower" in err and "dataset indices 0..999" in err
