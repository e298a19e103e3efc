"""Segmentation as a task: DeepLab's predict/outputs, every backend, `mobilenets segment`, mIoU evaluation.

References are LiteRT running Google's deeplabv3.tflite (never our code) and TFLite
Support's golden category mask; the VOC masks are the dataset's ground truth.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data.voc import DatasetError, MaskLabelError, find_segmentation_data, mask_to_image, read_voc_mask
from mobilenets.models.deeplab import DeepLabV3
from mobilenets.tasks.segment import confusion_update, evaluate_segmentation, logits_to_mask

from .conftest import shared_path
from .test_cli import assert_one_line_error, run

DEEPLAB = ("models", "deeplabv3.tflite")
SEG_IMAGE = ("images", "segmentation_input_rotation0.jpg")
SEG_GOLDEN = ("images", "segmentation_golden_rotation0.png")
VOC = ("voc2012_seg_samples",)


@pytest.fixture(scope="module")
def predictors():
    pytest.importorskip("ai_edge_litert")
    from mobilenets.auto import load_predictor

    w = shared_path(*DEEPLAB)
    return {b: load_predictor(weights=w, backend=b, threads=2) for b in ("torch", "litert")}


# --- the model's surface --------------------------------------------------------------------


def test_outputs_follow_the_contracts_input_size():
    m = DeepLabV3().eval()
    assert m.outputs[0].shape == (-1, 21, 257, 257)
    m.pretrained_cfg = m.pretrained_cfg.replace(input_size=(3, 321, 321))
    assert m.outputs[0].shape == (-1, 21, 321, 321)
    with torch.no_grad():
        out = m.predict(torch.zeros(1, 3, 65, 65))
    assert set(out) == {"logits"} and out["logits"].shape == (1, 21, 65, 65)


@pytest.mark.parametrize("kw", [{}, {"backbone": "mobilenet_v1", "depth_multiplier": 0.25, "output_stride": 16,
                                    "atrous_rates": True, "decoder": True}])  # fmt: skip
def test_every_conv_bn_unit_fuses(kw):
    from mobilenets.models.deploy import DeployModule
    from mobilenets.models.layers import ConvBnAct

    torch.manual_seed(0)
    m = DeepLabV3(**kw).eval()
    for mod in m.modules():  # non-trivial BN statistics, so folding is really tested
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
    m.pretrained_cfg = m.pretrained_cfg.replace(input_size=(3, 97, 97))
    d = DeployModule(m, (3, 97, 97)).eval()
    assert not any(isinstance(x, (ConvBnAct, torch.nn.BatchNorm2d)) for x in d.modules())
    relus = sum(isinstance(x, torch.nn.ReLU) for x in d.modules())
    assert relus >= 3  # the head keeps its ReLU (not ReLU6)
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        assert torch.allclose(d(x)[0], m(x), atol=1e-4)


def test_read_weights_dispatches_deeplab_and_builds_it():
    from mobilenets.builder import model_from_weights
    from mobilenets.weights import read_weights

    w = read_weights(shared_path(*DEEPLAB))
    assert w.cfg.task == "segment" and w.cfg.arch == "deeplabv3_mobilenet_v2" and w.cfg.input_size == (3, 257, 257)
    m = model_from_weights(w)
    assert isinstance(m, DeepLabV3) and not m.training and m.pretrained_cfg.source == str(shared_path(*DEEPLAB))
    assert model_from_weights(w, resolution=321).outputs[0].shape == (-1, 21, 321, 321)


def test_safetensors_round_trip(tmp_path):
    from mobilenets.builder import model_from_weights
    from mobilenets.weights import read_weights, save_weights

    m = DeepLabV3("mobilenet_v1", 0.25, num_classes=5, output_stride=16).eval()
    save_weights(m, tmp_path / "d.safetensors")
    back = model_from_weights(read_weights(tmp_path / "d.safetensors"))
    assert back.pretrained_cfg.arch == "deeplabv3_mobilenet_v1" and back.num_classes == 5
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))


@pytest.mark.slow
def test_every_backend_agrees_with_litert(tmp_path, monkeypatch):
    from mobilenets.auto import load_predictor
    from mobilenets.runtime import backend_available

    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path))
    w = shared_path(*DEEPLAB)
    ref = load_predictor(weights=w, backend="litert")
    x = ref.transform(shared_path(*SEG_IMAGE))[None].numpy()
    y_ref = ref.run(x)["logits"]
    from mobilenets.export import export_model
    from mobilenets.weights.deeplab_tflite import load_deeplab

    onnx = export_model(load_deeplab(w), "onnx", tmp_path / "d.onnx", parity=False).path  # ONNX engines run our export
    for b in ("torch", "onnxruntime", "openvino"):
        if not backend_available(b):
            continue
        p = load_predictor(weights=w if b == "torch" else onnx, backend=b, threads=2)
        y = p.run(x)["logits"]
        assert p.task == "segment" and y.shape == (1, 21, 257, 257)
        assert float(np.abs(y - y_ref).max()) < 1e-3, b  # measured: torch 3.0e-5, onnxruntime 2.3e-5, openvino 9.5e-6
        assert float((y.argmax(1) == y_ref.argmax(1)).mean()) >= 0.999, b  # measured 1.0


# --- masks at the image's size ----------------------------------------------------------------


def test_logits_to_mask_is_align_corners_bilinear_then_argmax():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 9, 13)).astype(np.float32)
    ref = torch.nn.functional.interpolate(torch.from_numpy(logits)[None], size=(300, 41), mode="bilinear",
                                          align_corners=True)[0].argmax(0).numpy()  # fmt: skip
    assert (logits_to_mask(logits, (300, 41)) == ref).mean() > 0.9999
    assert (logits_to_mask(logits) == logits.argmax(0)).all()


def test_confusion_ignores_255():
    cm = np.zeros((3, 3), np.int64)
    confusion_update(cm, np.array([[0, 1, 255], [2, 2, 1]], np.uint8), np.array([[0, 2, 1], [2, 0, 1]], np.uint8))
    assert cm.tolist() == [[1, 0, 0], [0, 1, 1], [1, 0, 1]]


# --- evaluation -------------------------------------------------------------------------------


def test_miou_on_the_voc_pairs_matches_litert(predictors):
    """Our model and LiteRT on Google's file, same preprocessing, 14 VOC pairs: one confusion matrix each."""
    data = shared_path(*VOC)
    ours = evaluate_segmentation(predictors["torch"], data).as_dict()
    ref = evaluate_segmentation(predictors["litert"], data).as_dict()
    assert ours["n"] == ref["n"] == 14 and ours["skipped"] == 0
    assert abs(ours["miou"] - ref["miou"]) <= 0.005  # measured: both 0.6696 (pixel acc 0.9553)
    assert ref["miou"] > 0.6 and ref["pixel_acc"] > 0.9
    assert set(ours) >= {"miou", "pixel_acc", "n", "per_class_iou"} and ours["per_class_iou"]["person"] > 0.5


def _voc_layout(tmp_path, ids=("a", "b"), listed=None):
    root = tmp_path / "VOC2012"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    src = shared_path(*VOC)
    for k, i in enumerate(ids):
        Image.open(src / f"{k}_image.png").convert("RGB").save(root / "JPEGImages" / f"{i}.jpg", quality=95)
        mask_to_image(read_voc_mask(src / f"{k}_target.png")).save(root / "SegmentationClass" / f"{i}.png")
    if listed is not None:
        (root / "ImageSets" / "Segmentation").mkdir(parents=True)
        (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(listed) + "\n")
    return tmp_path


def test_voc_layout_and_bad_data(tmp_path, predictors):
    p = predictors["litert"]
    root = _voc_layout(tmp_path, listed=["a", "b", "missing"])
    found = find_segmentation_data(root)
    assert found.layout == "voc" and [x[0].stem for x in found.pairs] == ["a", "b"] and len(found.unpaired) == 1
    res = evaluate_segmentation(p, root)
    assert res.n == 2 and len(res.skipped) == 1  # the listed id without files: a counted skip
    # a mask of the wrong size: counted skip
    mask = root / "VOC2012" / "SegmentationClass" / "b.png"
    mask_to_image(np.zeros((10, 10), np.uint8)).save(mask)
    res = evaluate_segmentation(p, root)
    assert res.n == 1 and any("mask is 10x10" in r for _, r in res.skipped)
    assert "skipped" in res.summary()
    # a label the model does not have: one-line error
    bad = np.zeros((10, 10), np.uint8)
    bad[0, 0] = 30
    Image.fromarray(bad, "L").save(mask)
    with pytest.raises(MaskLabelError, match="value 30 is neither"):
        evaluate_segmentation(p, root)
    with pytest.raises(DatasetError, match="neither a VOC layout"):
        evaluate_segmentation(p, tmp_path / "VOC2012" / "JPEGImages")


def test_pairs_without_mask_are_counted(tmp_path, predictors):
    src = shared_path(*VOC)
    for n in ("0", "1"):
        (tmp_path / f"{n}_image.png").write_bytes((src / f"{n}_image.png").read_bytes())
    (tmp_path / "0_target.png").write_bytes((src / "0_target.png").read_bytes())
    res = evaluate_segmentation(predictors["litert"], tmp_path)
    assert res.n == 1 and res.skipped[0][1] == "no mask for this image"


# --- the CLI ------------------------------------------------------------------------------------


def test_cli_segment_reproduces_the_golden_mask(tmp_path):
    """End to end: the saved PNG (at the image's size, which is the 257 x 257 tensor size) vs TFLite Support's golden."""
    proc = run("segment", str(shared_path(*SEG_IMAGE)), "--weights", str(shared_path(*DEEPLAB)),
               "--save-dir", str(tmp_path), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert (row["width"], row["height"], row["backend"]) == (257, 257, "litert")
    assert set(row["classes"]) == {"background", "person", "horse"} and abs(sum(row["classes"].values()) - 1) < 1e-4
    mask = Image.open(tmp_path / "segmentation_input_rotation0.png")
    assert mask.mode == "P" and mask.size == (257, 257)
    assert mask.getpalette()[15 * 3 : 16 * 3] == [192, 128, 128]  # VOC colour of person
    golden = np.asarray(Image.open(shared_path(*SEG_GOLDEN)))
    agree = float((np.asarray(mask).astype(np.int32) * 10 == golden).mean())
    assert agree >= 0.995, agree  # measured 0.99575 (TF's fast-DCT decode; 1.0 with Pillow's)
    overlay = Image.open(tmp_path / "segmentation_input_rotation0_overlay.jpg")
    assert overlay.size == (257, 257)


def test_cli_segment_folder_skips_unreadable_and_sizes_masks(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    (d / "bad.jpg").write_bytes(b"not an image")
    Image.open(shared_path("voc2012_seg_samples", "1_image.png")).save(d / "one.png")
    proc = run("segment", str(d), "--weights", str(shared_path(*DEEPLAB)), "--save-dir", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 of 2" in proc.stderr and "one.png" in proc.stdout
    src = Image.open(d / "one.png")
    assert Image.open(tmp_path / "out" / "one.png").size == src.size


@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_224_1_default_1.tflite", "coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"])
def test_cli_segment_refuses_other_tasks(name):
    proc = run("segment", str(shared_path(*SEG_IMAGE)), "--weights", str(shared_path("models", name)))
    assert_one_line_error(proc, "`segment` needs logits")


def test_cli_evaluate_segment_json():
    proc = run("evaluate", "--data", str(shared_path(*VOC)), "--weights", str(shared_path(*DEEPLAB)), "--json",
               "--limit", "3")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    row = json.loads(proc.stdout)
    assert row["n"] == 3 and 0 < row["miou"] <= 1 and row["backend"] == "litert"
