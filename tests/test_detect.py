"""Detection as a task: SSD predict/fuse, Predictors on Google's file, detect_batch, COCO mAP, the CLI.

References: LiteRT running Google's file (the reference tool), pycocotools (mAP of perfect
and of known-wrong detections), the real coco8 labels. Never our own outputs as goldens.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mobilenets.data.coco import AnnotationError, coco80_to_id, read_yolo_labels, yolo_samples
from mobilenets.models.cfg import OutputSpec
from mobilenets.models.deploy import DeployModule, fuse_for_inference
from mobilenets.models.layers import ConvBnAct
from mobilenets.models.ssd import SSDMobileNetV1, default_ssd_cfg
from mobilenets.runtime import Predictor
from mobilenets.tasks.detect import Detection, detect_batch, evaluate_detection

from .conftest import shared_path

SSD = "models/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
CLASSIFIER = "models/mobilenet_v1_0.25_128_quant.tflite"


def random_ssd(seed: int = 0) -> SSDMobileNetV1:
    torch.manual_seed(seed)
    m = SSDMobileNetV1(alpha=0.25).eval()
    for bn in (x for x in m.modules() if isinstance(x, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.2)
    return m


# --- the model surface ---------------------------------------------------------------------------


def test_predict_outputs_and_fused_graph():
    m = random_ssd()
    x = torch.rand(2, 3, 300, 300) * 2 - 1
    with torch.no_grad():
        ref = m(x)
        got = m.predict(x)
    assert [o.name for o in m.outputs] == list(got) == ["boxes", "classes", "scores", "count"]
    for k in ref:
        assert torch.equal(ref[k], got[k])
    fused = fuse_for_inference(m, (3, 300, 300))
    assert not any(isinstance(mod, ConvBnAct) for mod in fused.modules())
    with torch.no_grad():
        raw_ref, raw_fused = m.raw(x), fused.raw(x)
        ys = DeployModule(m, (3, 300, 300))(x)
    for a, b in zip(raw_ref, raw_fused):
        assert torch.allclose(a, b, atol=1e-4)
    assert torch.allclose(ys[2], ref["scores"], atol=1e-4) and torch.equal(ys[3], ref["count"])


def test_arch_cfg_round_trip_through_safetensors(tmp_path):
    from mobilenets.builder import model_from_weights
    from mobilenets.weights import read_weights, save_weights

    m = random_ssd()
    m.postprocess.max_detections = 7  # a non-default setting must survive
    m.pretrained_cfg = m.pretrained_cfg.replace(arch_cfg=m.arch_cfg())
    path = save_weights(m, tmp_path / "ssd.safetensors")
    back = model_from_weights(read_weights(path))
    assert isinstance(back, SSDMobileNetV1) and not back.training
    assert back.postprocess.max_detections == 7 and back.outputs[0].shape == (-1, 7, 4)
    x = torch.rand(1, 3, 300, 300) * 2 - 1
    with torch.no_grad():
        a, b = m.predict(x), back.predict(x)
    for k in a:
        assert torch.equal(a[k], b[k])


# --- Google's file on both backends --------------------------------------------------------------


@pytest.fixture(scope="module")
def ssd_file():
    return shared_path(SSD)


@pytest.fixture(scope="module")
def predictors(ssd_file):
    pytest.importorskip("ai_edge_litert")
    from mobilenets.auto import load_predictor

    return {b: load_predictor(weights=ssd_file, backend=b) for b in ("litert", "torch")}


def test_file_contract_and_output_mapping(predictors, ssd_file):
    """The LiteRT predictor's named outputs are the file's four post-process tensors, in LiteRT's own order."""
    from ai_edge_litert.interpreter import Interpreter

    from mobilenets.data.images import load_image
    from mobilenets.data.transforms import tf1_resize_bilinear

    lite = predictors["litert"]
    assert lite.backend == "litert" and lite.task == "detect"
    for p in predictors.values():
        cfg = p.cfg
        assert (cfg.task, cfg.arch, cfg.num_classes, cfg.label_offset, cfg.crop_fraction) == ("detect",
                                                                                               "ssd_mobilenet_v1", 91, 1, 1.0)  # fmt: skip
        assert cfg.arch_cfg["alpha"] == 0.75 and cfg.input_size == (3, 300, 300)
        # input scale 1/128, zero point 128: mean = std = 128/255 makes the float input exactly (q - 128) / 128
        assert cfg.mean == cfg.std == (128 / 255,) * 3
        assert p.label(1) == "person" and p.label(18) == "dog"
    img = shared_path("images", "cats_and_dogs.jpg")
    x = lite.transform(img)[None].numpy()
    q = lite.prepare(x)
    rgb = np.asarray(load_image(img), np.float32)
    ref_q = np.clip(np.rint(tf1_resize_bilinear(rgb, 300, 300)), 0, 255).astype(np.uint8)
    assert q.dtype == np.uint8 and np.abs(q[0].astype(int) - ref_q).max() <= 1  # float rounding at .5 only
    assert (q[0] != ref_q).mean() < 1e-3
    it = Interpreter(model_path=str(ssd_file))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], q)
    it.invoke()
    raw = [it.get_tensor(o["index"]) for o in it.get_output_details()]
    got = lite.run(x)
    for name, ref in zip(("boxes", "classes", "scores", "count"), raw):
        np.testing.assert_array_equal(got[name], ref.astype(np.float32).reshape(got[name].shape))
    assert raw[0].shape == (1, 10, 4) and raw[3].shape == (1,)
    # torch on the same image: the same top detections (class, box within 0.02, score within 0.05)
    t = predictors["torch"].run(x)
    for k in range(3):
        assert t["classes"][0, k] == got["classes"][0, k]
        assert np.abs(t["boxes"][0, k] - got["boxes"][0, k]).max() < 0.02
        assert abs(t["scores"][0, k] - got["scores"][0, k]) < 0.05


def test_detect_batch_in_pixels(predictors):
    p = predictors["litert"]
    img = shared_path("images", "cats_and_dogs.jpg")
    x = p.transform(img)[None].numpy()
    out = p.run(x)
    dets = detect_batch(p, x, [(1200, 600)], score_threshold=0.5)[0]
    n = int(out["count"][0])
    keep = [j for j in range(n) if out["scores"][0, j] >= 0.5]
    assert len(dets) == len(keep) >= 2
    for d, j in zip(dets, keep):
        _, xmin, ymax, _ = out["boxes"][0, j]
        assert d.category_id == int(out["classes"][0, j]) + 1 and d.label == "cat"
        assert d.box[0] == pytest.approx(max(0, xmin * 1200), abs=1e-3)
        assert d.box[3] == pytest.approx(min(600, ymax * 600), abs=1e-3)  # clipped to the image
        assert 0 <= d.box[0] < d.box[2] <= 1200 and 0 <= d.box[1] < d.box[3] <= 600
    assert len(detect_batch(p, x, [(1200, 600)], score_threshold=0.0, max_detections=1)[0]) == 1
    with pytest.raises(Exception, match="sizes"):
        detect_batch(p, x, [], 0.5)


@pytest.mark.slow
def test_map_on_coco8_torch_within_one_point_of_litert(predictors):
    coco8 = shared_path("coco8")
    maps = {b: evaluate_detection(p, coco8).as_dict() for b, p in predictors.items()}
    # Measured: LiteRT 0.4086, torch (our float model of the file) 0.4003 mAP on the 8 images.
    assert maps["litert"]["n"] == maps["torch"]["n"] == 8 and maps["litert"]["boxes"] == 30
    assert maps["litert"]["map"] > 0.3 and maps["litert"]["map50"] > 0.45
    assert abs(maps["litert"]["map"] - maps["torch"]["map"]) <= 0.01
    assert abs(maps["litert"]["map50"] - maps["torch"]["map50"]) <= 0.01


# --- evaluation against pycocotools, without a network ------------------------------------------


class TablePredictor(Predictor):
    """Returns prepared detections image by image (in evaluation order): a stand-in detector."""

    def __init__(self, rows: list[list[tuple[int, float, tuple]]], k: int = 10) -> None:
        cfg = default_ssd_cfg(0.25, input_size=(3, 32, 32))
        specs = (OutputSpec("boxes", (-1, k, 4)), OutputSpec("classes", (-1, k)), OutputSpec("scores", (-1, k)),
                 OutputSpec("count", (-1,)))  # fmt: skip
        super().__init__("table", "table", cfg, specs)
        self.rows, self.k = list(rows), k

    def _run(self, x):
        n = len(x)
        out = {"boxes": np.zeros((n, self.k, 4), np.float32), "classes": np.zeros((n, self.k), np.float32),
               "scores": np.zeros((n, self.k), np.float32), "count": np.zeros(n, np.float32)}  # fmt: skip
        for i in range(n):
            dets = self.rows.pop(0)
            for j, (cid, s, box) in enumerate(dets):
                out["classes"][i, j], out["scores"][i, j], out["boxes"][i, j] = cid - 1, s, box
            out["count"][i] = len(dets)
        return out


def yolo_truth(root):
    """Per image of a YOLO dataset: [(COCO id, 1.0, normalised ymin/xmin/ymax/xmax)] (perfect detections)."""
    rows = []
    for _, lab in yolo_samples(root):
        g = read_yolo_labels(lab)
        rows.append([(int(c), 1.0, tuple(float(v) for v in b)) for c, b in zip(g.category_ids, g.boxes)])
    return rows


def make_dataset(tmp_path, sizes=((64, 48), (40, 40)), labels=None):
    """A tiny YOLO layout of real-size random images."""
    rng = np.random.default_rng(0)
    (tmp_path / "images" / "val").mkdir(parents=True)
    (tmp_path / "labels" / "val").mkdir(parents=True)
    labels = labels or ["0 0.5 0.5 0.5 0.5\n", "16 0.25 0.25 0.3 0.4\n2 0.7 0.7 0.2 0.2\n"]
    for k, ((w, h), text) in enumerate(zip(sizes, labels)):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "images" / "val" / f"{k}.png")
        (tmp_path / "labels" / "val" / f"{k}.txt").write_text(text)
    return tmp_path


def test_perfect_and_wrong_detections(tmp_path):
    pytest.importorskip("pycocotools")
    root = make_dataset(tmp_path)
    res = evaluate_detection(TablePredictor(yolo_truth(root)), root).as_dict()
    assert res["map"] == pytest.approx(1.0) and res["map50"] == pytest.approx(1.0) and res["n"] == 2
    assert set(res["per_class"]) == {"person", "dog", "car"}  # YOLO 0, 16, 2 -> COCO ids 1, 18, 3
    assert coco80_to_id()[16] == 18
    # the right boxes with the wrong class: nothing is found
    wrong = [[(c % 90 + 1, s, b) for c, s, b in row] for row in yolo_truth(root)]
    assert evaluate_detection(TablePredictor(wrong), root).as_dict()["map"] == 0.0


def test_coco_json_equals_yolo_and_bad_data(tmp_path):
    pytest.importorskip("pycocotools")
    root = make_dataset(tmp_path)
    truth = yolo_truth(root)
    # The same ground truth written as COCO JSON (pixels, x/y/w/h), plus bad entries.
    images = [{"id": 10, "file_name": "0.png", "width": 64, "height": 48},
              {"id": 11, "file_name": "1.png", "width": 40, "height": 40},
              {"id": 12, "file_name": "missing.png", "width": 40, "height": 40}]  # fmt: skip
    anns = []
    for image_id, (w, h), row in zip((10, 11), ((64, 48), (40, 40)), truth):
        for cid, _, (ymin, xmin, ymax, xmax) in row:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cid,
                         "bbox": [xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h]})  # fmt: skip
    anns.append({"id": 90, "image_id": 10, "category_id": 1, "bbox": [60, 10, 0, 5]})  # zero area: dropped
    anns.append({"id": 91, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]})  # no such image: skipped
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"},
                                              {"id": 18, "name": "dog"}]}))  # fmt: skip
    res = evaluate_detection(TablePredictor(truth), root / "images" / "val", annotations=ann)
    d = res.as_dict()
    assert d["map"] == pytest.approx(1.0) and d["n"] == 2 and d["dropped_boxes"] == 1 and d["skipped"] == 2
    assert "missing" in res.summary() or "skipped" in res.summary()
    # a box reaching outside its image is clipped: a perfect detection of the clipped box still scores 1
    anns[0]["bbox"] = [-10, -10, 44, 34]
    ann.write_text(json.dumps({"images": images[:2], "annotations": anns[:1]}))
    clipped = [[(1, 1.0, (0.0, 0.0, 24 / 48, 34 / 64))]]
    assert evaluate_detection(TablePredictor(clipped), root / "images" / "val", annotations=ann,
                              limit=1).as_dict()["map"] == pytest.approx(1.0)  # fmt: skip
    # one-line errors
    for text, match in (("{not json", "not a readable COCO JSON"), ('{"images": []}', "needs 'images' and"),
                        ('{"images": [{"id": 1}], "annotations": []}', "lacks one of id, file_name"),
                        (json.dumps({"images": images[:1], "annotations": [{"image_id": 10, "category_id": 1,
                                                                              "bbox": [1, 2]}]}), "bbox is not"),
                        (json.dumps({"images": images[:1], "annotations": []}), "no ground-truth box"),
                        (json.dumps({"images": images[:1], "annotations": [{"image_id": 10, "category_id": 12,
                                                                              "bbox": [1, 2, 3, 4]}]}), "not a class")):  # fmt: skip
        ann.write_text(text)
        with pytest.raises(AnnotationError, match=match) as e:
            evaluate_detection(TablePredictor([[]] * 3), root / "images" / "val", annotations=ann)
        assert "\n" not in str(e.value)
    with pytest.raises(AnnotationError, match="no such annotations file"):
        evaluate_detection(TablePredictor([]), root, annotations=tmp_path / "nope.json")


def test_bad_yolo_labels(tmp_path):
    pytest.importorskip("pycocotools")
    root = make_dataset(tmp_path, labels=["0 0.5 0.5 0.5\n", "0 0.5 0.5 0.5 0.5\n"])
    with pytest.raises(AnnotationError, match=r"0\.txt:1: expected 'class cx cy w h'"):
        evaluate_detection(TablePredictor([[]] * 2), root)
    (root / "labels" / "val" / "0.txt").write_text("85 0.5 0.5 0.5 0.5\n")
    with pytest.raises(AnnotationError, match="outside the dataset's 80 classes"):
        evaluate_detection(TablePredictor([[]] * 2), root)
    (root / "labels" / "val" / "0.txt").write_text("")  # an image without objects is fine
    (root / "images" / "val" / "1.png").write_bytes(b"garbage")  # unreadable: a counted skip
    with pytest.raises(AnnotationError, match="no ground-truth box"):
        evaluate_detection(TablePredictor([[]] * 2), root)
    with pytest.raises(AnnotationError, match="not a YOLO dataset"):
        evaluate_detection(TablePredictor([]), tmp_path / "labels")


def test_detection_as_dict():
    d = Detection("cat", 17, 0.51234567, (1.234, 2.0, 3.0, 4.0))
    assert d.as_dict() == {"label": "cat", "category_id": 17, "score": 0.512346, "box": [1.23, 2.0, 3.0, 4.0]}


# --- CLI --------------------------------------------------------------------------------------------


def cli(*args):
    return subprocess.run([sys.executable, "-m", "mobilenets", *map(str, args)], check=False, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_cli_detect_json_and_drawing(ssd_file, tmp_path):
    pytest.importorskip("ai_edge_litert")
    img = shared_path("images", "cats_and_dogs.jpg")
    val = shared_path("coco8", "images", "val")
    r = cli("detect", img, val, "--weights", ssd_file, "--json", "--save-dir", tmp_path / "drawn",
            "--score-threshold", "0.3", "--max-detections", "3")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 5 and rows[0]["image"] == str(img) and (rows[0]["width"], rows[0]["height"]) == (1200, 600)
    assert rows[0]["backend"] == "litert" and rows[0]["detections"][0]["label"] == "cat"
    for row in rows:
        assert len(row["detections"]) <= 3 and all(d["score"] >= 0.3 for d in row["detections"])
        drawn = Image.open(row["drawn"])
        assert drawn.size == (row["width"], row["height"])
    r = cli("detect", img, "--weights", shared_path(CLASSIFIER))
    assert r.returncode == 2 and "is a classify model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("classify", img, "--weights", ssd_file)
    assert r.returncode == 2 and "is a detect model" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("evaluate", "--task", "detect", "--data", shared_path("coco8"), "--weights", ssd_file, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["map"] == pytest.approx(0.4086, abs=0.002)
