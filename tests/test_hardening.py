"""The causes of every traceback and silent wrong answer found by the hostile-input review, one test each.

Each bad invocation exits 2 with exactly one line on stderr naming the problem, before any
work (no file written); run in this process through `mobilenets.cli.main`.
"""

from __future__ import annotations

import json

import pytest
import torch

from mobilenets.cli import main

from .conftest import random_model, shared_path

CAT = ("images", "cat.bmp")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mobilenets.weights import save_weights

    d = tmp_path_factory.mktemp("hostile")
    good = save_weights(random_model(alpha=0.25, resolution=64, num_classes=5), d / "good.safetensors")
    state = load_file(str(good))
    with safe_open(str(good), "pt") as f:
        meta = f.metadata()
    foreign = {k: v for k, v in meta.items() if k not in ("tensors_sha256", "mobilenets")}  # another tool's file
    edited = {k: v for k, v in meta.items() if k != "tensors_sha256"}

    def variant(name: str, changes: dict, metadata: dict) -> None:
        save_file({**state, **changes}, str(d / name), metadata=metadata)

    variant("shape.safetensors", {"features.Conv2d_5_depthwise.conv.weight": torch.zeros(64, 1, 5, 5)}, foreign)
    cfg = json.loads(meta["pretrained_cfg"])
    cfg["arch_cfg"]["alpha"] = 1.0
    variant("alpha.safetensors", {}, {**meta, "pretrained_cfg": json.dumps(cfg)})
    variant("json.safetensors", {}, {**meta, "pretrained_cfg": "{not json"})
    cfg = json.loads(meta["pretrained_cfg"])
    cfg["mean"] = [0.5, 0.5, 0.5, 0.5]
    variant("mean.safetensors", {}, {**meta, "pretrained_cfg": json.dumps(cfg)})
    nan = state["classifier.bias"].clone()
    nan[0] = float("nan")
    variant("nan.safetensors", {"classifier.bias": nan}, foreign)
    huge = state["classifier.weight"].clone()
    huge[0, 0] = 2.9e36
    variant("huge.safetensors", {"classifier.weight": huge}, foreign)
    flipped = {k: -v for k, v in state.items() if k.endswith("pointwise.conv.weight")}
    variant("flipped.safetensors", flipped, edited)  # our file, edited: its digest was dropped
    (d / "dir").mkdir()
    (d / "fake.h5").write_text("not hdf5")
    (d / "loop_a").symlink_to(d / "loop_b")
    (d / "loop_b").symlink_to(d / "loop_a")
    for cut in (16, 64, 1000):
        for name in ("mobilenet_v1_0.25_224_1_default_1.tflite", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"):
            data = shared_path("models", name).read_bytes()
            (d / f"cut{cut}_{name}").write_bytes(data[:-cut])
    return d


def one_line_exit_2(capsys, argv: list[str], needle: str) -> None:
    capsys.readouterr()
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


@pytest.mark.parametrize("cut", [16, 64, 1000])
@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_224_1_default_1.tflite",
                                  "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"])  # fmt: skip
def test_truncated_tflite(files, capsys, name, cut):
    path = files / f"cut{cut}_{name}"
    capsys.readouterr()
    rc = main(["import", str(path), "-o", str(files / "out.safetensors")])
    err = capsys.readouterr().err
    if rc == 0:  # the cut took only padding: the same weights as the whole file
        from mobilenets.weights import read_weights

        a, b = read_weights(path).state_dict, read_weights(shared_path("models", name)).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a)
    else:
        assert rc == 2 and len(err.strip().splitlines()) == 1 and "corrupt or truncated .tflite" in err, err


@pytest.mark.parametrize(("name", "needle"), [
    ("shape.safetensors", "features.Conv2d_5_depthwise.conv.weight"),
    ("alpha.safetensors", "header says alpha=1"),
    ("json.safetensors", "unreadable contract"),
    ("mean.safetensors", "contract in the file's header is damaged (mean"),
    ("nan.safetensors", "non-finite"),
    ("huge.safetensors", "beyond any trained weight"),
    ("flipped.safetensors", "tensor digest is missing"),
    ("fake.h5", "not an HDF5 file"),
    ("loop_a", "loop of links"),
])  # fmt: skip
def test_bad_weights(files, capsys, name, needle):
    one_line_exit_2(capsys, ["classify", str(shared_path(*CAT)), "--weights", str(files / name), "--backend", "torch"],
                    needle)  # fmt: skip


@pytest.mark.parametrize("argv", [
    ["export", "--weights", "{good}", "--format", "onnx", "-o", "{dir}"],
    ["import", "{good}", "-o", "{dir}"],
    ["embed", "{cat}", "--weights", "{good}", "--backend", "torch", "-o", "{dir}"],
    ["embed", "{cat}", "--weights", "{good}", "--backend", "torch", "-o", "{dir}/new/"],
    ["preprocess", "{cat}", "-o", "{dir}"],
    ["preprocess", "{cat}", "-o", "/proc/mobilenets.npy"],
    ["preprocess", "{cat}", "-o", "{good}/x.npy"],
    ["export", "--weights", "{good}", "--format", "tflite", "-o", "{dir}/x.onnx"],
])  # fmt: skip
def test_output_paths_are_checked_before_work(files, capsys, argv):
    fill = {"good": str(files / "good.safetensors"), "dir": str(files / "dir"), "cat": str(shared_path(*CAT))}
    argv = [a.format(**fill) for a in argv]
    one_line_exit_2(capsys, argv, f"{argv[argv.index('-o')]}")
    assert list((files / "dir").iterdir()) == []


@pytest.mark.parametrize(("argv", "needle"), [
    (["classify", "{cat}", "--threads", "-3"], "threads must be between 1 and"),
    (["evaluate", "--data", "{cat}", "--batch-size", "0"], "batch size must be between 1 and"),
    (["evaluate", "--data", "{cat}", "--workers", "-1"], "workers must be between 0 and"),
    (["classify", "{cat}", "--resolution", "100000"], "resolution must be between 32 and 2048"),
    (["profile", "--alpha", "inf"], "alpha must be in (0, 4]"),
    (["profile", "--alpha", "nan"], "alpha must be in (0, 4]"),
    (["classify", "{cat}", "--crop", "nan"], "crop fraction must be in (0, 1]"),
    (["classify", "{cat}", "-k", "0"], "must be >= 1"),
    (["classify", ""], "empty path"),
    (["bench", "--threads", "1,-2"], "threads must be between 1 and"),
    (["pick", "--latency-ms", "inf"], "finite number > 0"),
])  # fmt: skip
def test_argument_ranges(capsys, argv, needle):
    one_line_exit_2(capsys, [a.format(cat=str(shared_path(*CAT))) for a in argv], needle)


def test_help_shows_defaults(capsys):
    assert main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    assert "(default: 32)" in out and "(default: 2)" in out


def test_same_flag_names_everywhere():
    """--top-k/-k, --batch-size/--batch, --backend/--backends, lists space- or comma-separated."""
    from mobilenets.cli import build_parser

    p = build_parser()
    assert p.parse_args(["similar", "q.jpg", "--gallery", "g", "--top-k", "3"]).k == 3
    assert p.parse_args(["classify", "a.jpg", "-k", "2"]).top_k == 2
    ns = p.parse_args(["bench", "--backend", "torch,onnxruntime", "--threads", "1", "2", "--batch-size", "1,4"])
    from mobilenets.cli._common import flatten

    assert flatten(ns.backends) == ["torch", "onnxruntime"] and flatten(ns.threads) == [1, 2]
    assert flatten(ns.batch) == [1, 4]
    assert p.parse_args(["evaluate", "--data", "d", "--batch", "8"]).batch_size == 8


def test_embed_folder_skips_unreadable_and_maps_rows(files, capsys, tmp_path):
    import numpy as np

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for name in ("burger.jpg", "owl.jpg"):
        (imgs / name).write_bytes(shared_path("images", name).read_bytes())
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xffnope")
    out = tmp_path / "e.npy"
    capsys.readouterr()
    rc = main(["embed", str(imgs), "--weights", str(files / "good.safetensors"), "--backend", "torch", "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped 1 of 3" in err
    rows = (tmp_path / "e.txt").read_text().splitlines()
    assert rows == [str(imgs / "burger.jpg"), str(imgs / "owl.jpg")] and np.load(out).shape[0] == 2


def test_gallery_cache_is_keyed_by_content(files, capsys, tmp_path):
    """A gallery image replaced by another with the same size and mtime is embedded again."""
    import hashlib
    import os

    from mobilenets import load_predictor
    from mobilenets.tasks.embed import gallery_embeddings, read_gallery_cache

    g = tmp_path / "g"
    g.mkdir()
    a = shared_path("images", "cat.bmp").read_bytes()
    b = bytearray(a)
    b[len(a) // 3 :] = bytes(len(a) - len(a) // 3)  # same size, other pixels (black lower part)
    b = bytes(b)
    (g / "x.bmp").write_bytes(a)
    pred = load_predictor(weights=files / "good.safetensors", backend="torch")
    gallery_embeddings(pred, g, progress=False)
    st = os.stat(g / "x.bmp")
    (g / "x.bmp").write_bytes(b)
    os.utime(g / "x.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    gallery_embeddings(pred, g, progress=False)
    (cache,) = g.glob(".mobilenets-gallery-*.npz")
    assert set(read_gallery_cache(cache)) == {hashlib.sha256(b).hexdigest()}  # the new bytes were embedded


def test_gallery_cache_with_nan_is_not_used(files, tmp_path):
    import numpy as np

    from mobilenets.tasks.embed import read_gallery_cache

    bad = tmp_path / "c.npz"
    np.savez(bad, version=np.array(2), digests=np.array(["a"]), embeddings=np.full((1, 4), np.nan, np.float32))
    assert read_gallery_cache(bad) == {}


def test_pick_says_when_rows_are_another_machines(tmp_path, capsys):
    from mobilenets.bench import BenchRow, save_results

    row = BenchRow(model="mobilenet_v1_0.25_128", alpha=0.25, resolution=128, backend="torch", engine="torch",
                   int8=False, threads=1, batch=1, median_ms=1.0, p90_ms=1.1, runs=5, top1=41.5, machine="elsewhere")
    path = save_results([row], tmp_path / "b.json")
    assert main(["pick", "--latency-ms", "5", "--results", str(path)]) == 0
    assert "nothing was measured on this machine" in capsys.readouterr().err


def test_tflite_with_a_non_utf8_name_still_reads(tmp_path):
    """Found by the fuzz suite in CI: a metadata name byte turned 0x80 raised UnicodeDecodeError."""
    from mobilenets.weights import read_weights

    data = bytearray(shared_path("models", "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    at = data.find(b"min_runtime_version")
    assert at > 0
    data[at] = 0x80
    path = tmp_path / "m.tflite"
    path.write_bytes(bytes(data))
    w = read_weights(path)
    assert (w.alpha, w.num_classes) == (0.25, 1001)
