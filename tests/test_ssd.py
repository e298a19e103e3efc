"""SSD-MobileNet-v1: Google's COCO quant .tflite imported into PyTorch and checked against LiteRT.

References come from LiteRT running Google's file on the same uint8 tensors (never from
our code), and from TFLite Support's golden detections on cats_and_dogs.jpg. The file is
uint8 QAT (every activation on an 8-bit grid, anchors rounded to uint8); our float model
is not, so parity is measured as box/score agreement, and `emulate_file_arithmetic`
(integer convs as LiteRT's XNNPACK kernels compute them) reproduces LiteRT bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mobilenets.data.coco import coco80_to_id, coco_detection_labels, coco_labels, read_yolo_labels, yolo_samples
from mobilenets.data.images import load_image
from mobilenets.data.transforms import tf1_resize_bilinear
from mobilenets.errors import WeightsError
from mobilenets.models.cfg import PretrainedCfg
from mobilenets.models.ssd import (
    AnchorGenerator,
    BoxCoder,
    PostProcess,
    SSDMobileNetV1,
    box_iou_one_to_many,
    tf_od_name,
    tf_od_name_map,
)
from mobilenets.weights.ssd_tflite import load_ssd, read_ssd_tflite
from mobilenets.weights.tflite import read_tflite

from .conftest import SHARED, shared_path

SSD = "models/coco_ssd_mobilenet_v1_1.0_quant_2018_06_29.tflite"
CLASSIFIER = "models/mobilenet_v1_0.25_128_quant.tflite"
CATS_AND_DOGS = "images/cats_and_dogs.jpg"
# TFLite Support's golden (MANIFEST.tsv): (class 0-based = COCO id - 1, score, x, y, w, h px).
GOLDEN = [(16, 0.64, 54, 396, 393, 196), (16, 0.61, 602, 157, 394, 447), (16, 0.56, 260, 394, 180, 209),
          (17, 0.50, 389, 197, 278, 409)]  # fmt: skip


# --- references and helpers ---------------------------------------------------------------------


class LiteRTDetector:
    """Google's file under LiteRT: uint8 HxWx3 in, (boxes, classes, scores, count) out."""

    def __init__(self, path) -> None:
        litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) not installed")
        self.it = litert.Interpreter(model_path=str(path), num_threads=2)
        self.it.allocate_tensors()
        self.inp = self.it.get_input_details()[0]
        self.outs = self.it.get_output_details()

    def __call__(self, q: np.ndarray):
        self.it.set_tensor(self.inp["index"], q[None])
        self.it.invoke()
        b, c, s, n = (self.it.get_tensor(o["index"])[0] for o in self.outs)
        return b, c, s, int(n if np.ndim(n) == 0 else n[0])


def half_pixel_bilinear(rgb: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres, no antialias (what TFLite Support's libyuv path does)."""
    h, w = rgb.shape[:2]

    def axis(n: int, o: int):
        src = np.clip((np.arange(o) + 0.5) * n / o - 0.5, 0, n - 1)
        lo = np.floor(src).astype(np.int64)
        return lo, np.minimum(lo + 1, n - 1), (src - lo).astype(np.float32)

    y0, y1, ly = axis(h, out_h)
    x0, x1, lx = axis(w, out_w)
    f = rgb.astype(np.float32)
    lx = lx[None, :, None]
    top = f[y0][:, x0] * (1 - lx) + f[y0][:, x1] * lx
    bottom = f[y1][:, x0] * (1 - lx) + f[y1][:, x1] * lx
    return top * (1 - ly[:, None, None]) + bottom * ly[:, None, None]


def uint8_input(path, resize: str = "tf1", decode: str = "tf") -> np.ndarray:
    """The whole image resized to 300x300 and rounded to uint8: the file's input tensor."""
    rgb = np.asarray(load_image(path, decode=decode))
    r = tf1_resize_bilinear(rgb.astype(np.float32), 300, 300) if resize == "tf1" else half_pixel_bilinear(rgb, 300, 300)
    return np.clip(np.rint(r), 0, 255).astype(np.uint8)


def float_input(q: np.ndarray) -> torch.Tensor:
    """Exactly the real values the uint8 tensor stands for (scale 1/128, zero point 128)."""
    return torch.from_numpy((q.astype(np.float32) - 128.0) / 128.0).permute(2, 0, 1)[None]


def iou(a, b) -> float:
    return float(box_iou_one_to_many(torch.as_tensor(a)[None], torch.as_tensor(b)[None, None])[0, 0])


def compare(detector, model, images, min_score: float = 0.3) -> dict:
    """Match every LiteRT detection (score >= min_score) to ours of the same class."""
    rows = []
    inputs = [uint8_input(path) for path in images]
    with torch.no_grad():  # batched: the same per image (test_model_any_width_and_size_batched), faster
        outs = [model(torch.cat([float_input(q) for q in inputs[i : i + 8]])) for i in range(0, len(inputs), 8)]
    outs = {k: torch.cat([o[k] for o in outs]).float().numpy() for k in ("boxes", "classes", "scores")}
    for i, (path, q) in enumerate(zip(images, inputs)):
        lb, lc, ls, n = detector(q)
        ob, oc, os_ = (outs[k][i] for k in ("boxes", "classes", "scores"))
        for j in range(n):
            if ls[j] < min_score:
                continue
            same = [k for k in range(len(os_)) if oc[k] == lc[j]]
            ious = [iou(lb[j], ob[k]) for k in same]
            diffs = [abs(float(os_[k] - ls[j])) for k in same]
            best = int(np.argmax(ious)) if same else None
            rows.append({
                "image": path.name, "class": int(lc[j]), "score": float(ls[j]),
                "close": any(i >= 0.9 and d <= 0.05 for i, d in zip(ious, diffs)),
                "best_iou": ious[best] if same else 0.0, "score_diff": diffs[best] if same else math.inf,
            })  # fmt: skip
    matched = [r for r in rows if r["best_iou"] >= 0.5]
    return {
        "n": len(rows),
        "close": sum(r["close"] for r in rows) / len(rows),
        "matched_05": len(matched) / len(rows),
        "worst_iou": min(r["best_iou"] for r in rows),
        "median_iou": float(np.median([r["best_iou"] for r in rows])),
        "max_score_diff": max(r["score_diff"] for r in matched),
        "misses": [r for r in rows if not r["close"]],
    }


@pytest.fixture(scope="module")
def ssd_file():
    return shared_path(SSD)


@pytest.fixture(scope="module")
def model(ssd_file) -> SSDMobileNetV1:
    return load_ssd(ssd_file)


@pytest.fixture(scope="module")
def litert(ssd_file) -> LiteRTDetector:
    return LiteRTDetector(ssd_file)


def parity_images() -> list:
    coco8 = [img for img, _ in yolo_samples(shared_path("coco8"))]
    return coco8 + sorted(p for p in shared_path("images").iterdir() if p.suffix.lower() in (".jpg", ".png", ".bmp"))


# --- the file, read ------------------------------------------------------------------------------


def test_file_structure_and_options(ssd_file):
    state, info = read_ssd_tflite(ssd_file)
    # "1.0" in the name, but the channels say depth multiplier 0.75 (Conv2d_13: 768).
    assert (info.alpha, info.min_depth, info.num_classes, info.resolution) == (0.75, 16, 91, 300)
    assert info.anchors_per_location == [3, 6, 6, 6, 6, 6] and info.predictor_kernel == 1
    assert info.anchors.shape == (1917, 4) and info.input_quantization == (0.0078125, 128)
    opts = info.postprocess
    assert (opts["max_detections"], opts["max_classes_per_detection"], opts["num_classes"]) == (10, 1, 90)
    assert opts["nms_iou_threshold"] == pytest.approx(0.6) and opts["nms_score_threshold"] == pytest.approx(1e-8)
    assert (opts["y_scale"], opts["x_scale"], opts["h_scale"], opts["w_scale"]) == (10, 10, 5, 5)
    assert not opts.get("use_regular_nms", False)
    assert state["box_predictors.BoxPredictor_0.ClassPredictor.weight"].shape == (273, 384, 1, 1)


def test_anchors_equal_the_files(model, ssd_file):
    _, info = read_ssd_tflite(ssd_file)
    ours = model.anchors_for((300, 300)).numpy()
    assert ours.shape == info.anchors.shape == (1917, 4)
    # Generated from the definition, they sit within half a uint8 step (0.00645 / 2) of the file's.
    assert np.abs(ours - info.anchors).max() <= 0.0033


def test_names_mirror_the_tf_scopes(model, ssd_file):
    from mobilenets.weights.tflite import TFLiteGraph

    names = tf_od_name_map(model)
    assert len(set(names.values())) == len(names)
    assert (
        names["backbone.features.Conv2d_1_depthwise.conv.weight"]
        == "FeatureExtractor/MobilenetV1/Conv2d_1_depthwise/depthwise_weights"
    )
    assert names["box_predictors.BoxPredictor_5.ClassPredictor.bias"] == "BoxPredictor_5/ClassPredictor/biases"
    assert names["extras.Conv2d_13_pointwise_2_Conv2d_2_3x3_s2_384.bn.bias"] == (
        "FeatureExtractor/MobilenetV1/Conv2d_13_pointwise_2_Conv2d_2_3x3_s2_384/BatchNorm/beta"
    )
    # Every conv's TF scope is the scope of a weight tensor in Google's file.
    g = TFLiteGraph(ssd_file)
    file_names = {g.tensor(i).Name().decode().replace("MobilenetV1/MobilenetV1/", "MobilenetV1/")
                  for i in range(g.sg.TensorsLength())}  # fmt: skip
    scopes = {n.rsplit("/", 1)[0] for k, n in names.items() if k.endswith(("conv.weight", "Predictor.weight"))}
    missing = [s for s in scopes if not any(f.startswith(s + "/") for f in file_names)]
    assert not missing and len(scopes) == 47
    with pytest.raises(KeyError):
        tf_od_name("score_converter.weight")


# --- refusals ----------------------------------------------------------------------------------


def test_file_weights_known_through_read_weights_until_changed(ssd_file):
    from mobilenets.builder import model_from_weights
    from mobilenets.weights import describe, read_weights
    from mobilenets.weights.ssd_tflite import holds_file_weights

    w = read_weights(ssd_file)
    built = model_from_weights(w)  # the CLI's and the Predictor's path keeps the file's grids
    assert holds_file_weights(built) and holds_file_weights(load_ssd(ssd_file))
    assert "file_info" not in describe(w)  # the JSON summary stays JSON
    built.reset_head_parameters()  # a new head: the file's activation grids no longer describe it
    assert not holds_file_weights(built)
    assert not holds_file_weights(SSDMobileNetV1(alpha=0.25))


def test_classifier_file_refused_by_ssd_reader():
    with pytest.raises(WeightsError) as e:
        read_ssd_tflite(shared_path(CLASSIFIER))
    msg = str(e.value)
    assert "not an SSD detector" in msg and "\n" not in msg


def test_ssd_file_refused_by_classifier_reader(ssd_file):
    with pytest.raises(WeightsError) as e:
        read_tflite(ssd_file)
    msg = str(e.value)
    assert "not a MobileNet v1 classifier" in msg and "CUSTOM" in msg and "\n" not in msg


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        read_ssd_tflite(tmp_path / "nope.tflite")
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError, match="TFL3"):
        read_ssd_tflite(bad)


# --- against LiteRT ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulated(ssd_file) -> SSDMobileNetV1:
    return load_ssd(ssd_file, emulate_quantization=True)


@pytest.mark.slow
def test_parity_with_litert(model, emulated, litert, capsys):
    images = parity_images()
    assert len(images) >= 30
    got = compare(litert, model, images)
    emu = compare(litert, emulated, images)
    with capsys.disabled():
        for name, r in (("float", got), ("emulated uint8", emu)):
            print(f"\nSSD parity ({name}): {r['n']} LiteRT detections >= 0.3 over {len(images)} images; "
                  f"IoU>=0.9 & |dscore|<=0.05: {r['close']:.3f}; same-class IoU>=0.5: {r['matched_05']:.3f}; "
                  f"median IoU {r['median_iou']:.3f}, worst {r['worst_iou']:.3f}; max score diff {r['max_score_diff']:.3f}")  # fmt: skip
    # Measured (LiteRT 2.3, torch 2.13 CPU, 31 images, 179 detections): float 0.804 close, 0.983
    # matched at 0.5, median IoU 0.971. The float model misses the target (0.95) only by the
    # file's rounding: uint8 anchors (small boxes move), activations, and logits saturating at
    # the file's range (scores cap near 0.82 in LiteRT). Emulated: every detection, same score
    # (both are k / 256), boxes equal to float32 rounding (worst IoU 0.999999).
    assert got["close"] >= 0.78 and got["matched_05"] >= 0.97 and got["median_iou"] >= 0.95
    assert emu["close"] == 1.0 and emu["matched_05"] == 1.0
    assert emu["max_score_diff"] == 0.0 and emu["worst_iou"] >= 0.9999


@pytest.mark.slow
def test_emulated_activations_equal_litert_bit_for_bit(ssd_file, emulated):
    litert = pytest.importorskip("ai_edge_litert.interpreter", reason="LiteRT (ai-edge-litert) not installed")
    with pytest.warns(UserWarning, match="preserve_all_tensors"):
        it = litert.Interpreter(model_path=str(ssd_file), num_threads=2, experimental_preserve_all_tensors=True)
    it.allocate_tensors()
    tensors = {d["name"]: d for d in it.get_tensor_details()}
    grids = emulated.file_info.meta["activation_quant"]
    layers = {}  # our module -> the file's activation tensor (its TF scope + "/Relu6")
    for name in grids:
        if name.startswith(("backbone.", "extras.")):
            scope = name.rsplit(".", 1)[1]
            (layers[name],) = [t for t in tensors if t.endswith(f"/{scope}/Relu6")]
    assert len(layers) == 35
    ours: dict[str, torch.Tensor] = {}

    def keep(name, scale, zero):
        def hook(_module, _inputs, output):
            ours[name] = (torch.round(output / scale) + zero).permute(0, 2, 3, 1)

        return hook

    handles = [emulated.get_submodule(n).register_forward_hook(keep(n, *grids[n][0])) for n in layers]
    try:
        for path in (shared_path(CATS_AND_DOGS), yolo_samples(shared_path("coco8"), "val")[0][0]):
            q = uint8_input(path)
            it.set_tensor(it.get_input_details()[0]["index"], q[None])
            it.invoke()
            with torch.no_grad():
                box, scores = emulated.raw(float_input(q))
            for name, tensor in layers.items():
                ref = it.get_tensor(tensors[tensor]["index"])
                assert np.array_equal(ours[name].numpy(), ref), name
            # the post-process op's inputs: box encodings on the concatenation's grid, sigmoids on 1/256
            box_scale, box_zero = tensors["Squeeze"]["quantization"]
            assert np.array_equal((torch.round(box / box_scale) + box_zero).numpy(),
                                  it.get_tensor(tensors["Squeeze"]["index"]))  # fmt: skip
            assert np.array_equal((scores * 256).round().numpy(), it.get_tensor(tensors["convert_scores"]["index"]))
    finally:
        for h in handles:
            h.remove()


def test_golden_cats_and_dogs(model, emulated, litert):
    # TFLite Support made the golden from an accurate-DCT decode and a half-pixel bilinear
    # resize (libyuv); with TF1's resize the file itself finds no dog above 0.3.
    q = uint8_input(shared_path(CATS_AND_DOGS), resize="half_pixel", decode="pillow")
    w, h = 1200, 600

    def check(boxes, classes, scores, tol_score, tol_px):
        for (cls, score, x, y, bw, bh), box, c, s in zip(GOLDEN, boxes, classes, scores):
            ymin, xmin, ymax, xmax = (float(v) for v in box)
            got = (xmin * w, ymin * h, (xmax - xmin) * w, (ymax - ymin) * h)
            assert int(c) == cls and abs(float(s) - score) <= tol_score, (c, s, cls, score)
            assert max(abs(a - b) for a, b in zip(got, (x, y, bw, bh))) <= tol_px, (got, (x, y, bw, bh))

    lb, lc, ls, _ = litert(q)
    check(lb, lc, ls, 0.02, 10)  # the reference tool reproduces the golden with this input (<= 7 px)
    with torch.no_grad():
        out = model(float_input(q))
    check(out["boxes"][0], out["classes"][0], out["scores"][0], 0.05, 10)  # 10 px < 1% of the width
    assert coco_labels()[16] == "cat" and coco_labels()[17] == "dog"
    with torch.no_grad():
        emu = emulated(float_input(q))
    assert int(emu["count"][0]) == 10 and np.array_equal(emu["classes"][0].numpy(), lc)
    assert np.array_equal(emu["scores"][0].numpy(), ls)  # LiteRT's own scores, not just the golden's
    assert np.abs(emu["boxes"][0].numpy() - lb).max() <= 1e-6


# --- the pieces, without files -------------------------------------------------------------------


def test_anchor_generator_definition():
    gen = AnchorGenerator()
    assert gen.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    grid = [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    a = gen.generate(grid)
    assert a.shape == (1917, 4)
    s1 = 0.2 + 0.75 / 5
    # first cell of the lowest layer: (0.1, 1), (0.2, 2), (0.2, 1/2); then the next column
    expect = [(1 / 38, 1 / 38, 0.1, 0.1), (1 / 38, 1 / 38, 0.2 / math.sqrt(2), 0.2 * math.sqrt(2)),
              (1 / 38, 1 / 38, 0.2 * math.sqrt(2), 0.2 / math.sqrt(2)), (1 / 38, 3 / 38, 0.1, 0.1)]  # fmt: skip
    assert torch.allclose(a[:4], torch.tensor(expect), atol=1e-6)
    # second layer, first cell: five ratios at s1, then sqrt(s1 * s2) at ratio 1
    s2 = 0.2 + 0.75 * 2 / 5
    assert torch.allclose(a[1083, 2:], torch.tensor([s1, s1]), atol=1e-6)
    assert torch.allclose(a[1088, 2:], torch.tensor([math.sqrt(s1 * s2)] * 2), atol=1e-6)
    # last anchor: the 1x1 map, interpolated scale sqrt(0.95 * 1.0)
    assert torch.allclose(a[-1], torch.tensor([0.5, 0.5, math.sqrt(0.95), math.sqrt(0.95)]), atol=1e-6)
    # non-square image: base size scales by min(H, W) / side, so boxes stay square in pixels
    b = gen.generate(grid, im_height=300, im_width=600)
    assert torch.allclose(b[0, 2:] * torch.tensor([300.0, 600.0]), torch.tensor([30.0, 30.0]), atol=1e-4)


def test_box_coder_round_trip():
    coder = BoxCoder()
    anchors = AnchorGenerator().generate([(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)])
    codes = torch.randn(2, anchors.shape[0], 4) * torch.tensor([1.0, 1.0, 0.5, 0.5])
    boxes = coder.decode(codes, anchors)
    assert torch.allclose(coder.encode(boxes, anchors), codes, atol=2e-3)
    # decode of zero codes is the anchor itself; y comes first
    z = coder.decode(torch.zeros(1, 4), torch.tensor([[0.3, 0.6, 0.2, 0.4]]))
    assert torch.allclose(z, torch.tensor([[0.2, 0.4, 0.4, 0.8]]))
    t = coder.decode(torch.tensor([[10.0, 0.0, 0.0, 5 * math.log(2)]]), torch.tensor([[0.3, 0.6, 0.2, 0.4]]))
    assert torch.allclose(t, torch.tensor([[0.4, 0.2, 0.6, 1.0]]), atol=1e-6)  # y moves by ty/10 * h_a; w doubles


def _tflite_nms_loop(boxes, scores, iou_thr, score_thr, max_out):
    """Line-by-line transcription of TFLite's NonMaxSuppressionSingleClassHelper."""
    keep = [i for i in range(len(scores)) if scores[i] >= score_thr]
    order = sorted(keep, key=lambda i: -scores[i])  # Python's sort is stable, like std::stable_sort
    active = [True] * len(order)
    selected = []
    for i in range(len(order)):
        if len(selected) >= min(len(order), max_out):
            break
        if not active[i]:
            continue
        selected.append(order[i])
        active[i] = False
        for j in range(i + 1, len(order)):
            if active[j] and iou(boxes[order[i]], boxes[order[j]]) > iou_thr:
                active[j] = False
    return selected


def _random_case(seed, n=2, a=300, c=6):
    g = torch.Generator().manual_seed(seed)
    yx = torch.rand(n, a, 2, generator=g) * 0.8
    hw = torch.rand(n, a, 2, generator=g) * 0.3
    boxes = torch.cat([yx, yx + hw], dim=-1)
    scores = torch.rand(n, a, c + 1, generator=g)
    scores = (scores * 16).round() / 16  # many ties, like the file's 1/256 steps
    return boxes, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_nms_is_tflites(seed):
    boxes, scores = _random_case(seed)
    post = PostProcess(num_classes=6, max_detections=10, nms_iou_threshold=0.5, nms_score_threshold=0.3)
    out = post(boxes, scores)
    for b in range(boxes.shape[0]):
        best, cls = scores[b, :, 1:].max(dim=-1)
        ref = _tflite_nms_loop(boxes[b], best.tolist(), 0.5, 0.3, 10)
        count = int(out["count"][b])
        assert count == len(ref)
        assert torch.equal(out["boxes"][b, :count], boxes[b, ref])
        assert out["classes"][b, :count].tolist() == cls[ref].float().tolist()
        assert out["scores"][b, :count].tolist() == best[ref].tolist()
        assert not out["scores"][b, count:].any()


@pytest.mark.parametrize("seed", [0, 3])
def test_regular_nms_is_per_class(seed):
    boxes, scores = _random_case(seed, a=120, c=4)
    post = PostProcess(num_classes=4, max_detections=10, nms_iou_threshold=0.5, nms_score_threshold=0.5,
                       use_regular_nms=True, detections_per_class=5)  # fmt: skip
    out = post(boxes, scores)
    for b in range(boxes.shape[0]):
        cands = []
        for c in range(4):
            s = scores[b, :, c + 1].tolist()
            cands += [(s[i], c, i) for i in _tflite_nms_loop(boxes[b], s, 0.5, 0.5, 5)]
        top = sorted(cands, key=lambda t: -t[0])[:10]  # stable: class-major ties
        assert int(out["count"][b]) == len(top)
        assert out["scores"][b, : len(top)].tolist() == [t[0] for t in top]
        assert out["classes"][b, : len(top)].tolist() == [float(t[1]) for t in top]
        assert torch.equal(out["boxes"][b, : len(top)], boxes[b, [t[2] for t in top]])


def test_model_any_width_and_size_batched():
    torch.manual_seed(0)
    m = SSDMobileNetV1(alpha=0.25).eval()
    # min depth 16 holds everywhere (0.25 * 32 = 8 -> 16)
    assert m.backbone.features.Conv2d_0.conv.out_channels == 16
    x = torch.randn(2, 3, 256, 320)
    with torch.no_grad():
        out = m(x)
        one = m(x[1:])
        box, scores = m.raw(x)
    assert [tuple(t.shape) for t in m.forward_features(x)] == [(2, c, h, w) for c, (h, w) in zip(
        m.map_channels, m.grid_sizes((256, 320)))]  # fmt: skip
    a = sum(h * w * n for (h, w), n in zip(m.grid_sizes((256, 320)), m.anchor_generator.num_anchors_per_location()))
    assert box.shape == (2, a, 4) and scores.shape == (2, a, 91) and 0 <= float(scores.min())
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "boxes": (2, 10, 4),
        "classes": (2, 10),
        "scores": (2, 10),
        "count": (2,),
    }
    for k in out:
        assert torch.allclose(out[k][1:], one[k], atol=1e-5)  # the batch dimension is independent
    assert [o.name for o in m.outputs] == ["boxes", "classes", "scores", "count"]
    assert m.outputs[0].shape == (-1, 10, 4) and m.outputs[3].shape == (-1,)
    cfg = m.pretrained_cfg
    assert isinstance(cfg, PretrainedCfg) and PretrainedCfg.from_json(cfg.to_json()) == cfg
    assert (cfg.task, cfg.arch, cfg.num_classes, cfg.label_offset, cfg.crop_fraction, cfg.input_size) == (
        "detect",
        "ssd_mobilenet_v1",
        91,
        1,
        1.0,
        (3, 300, 300),
    )
    assert cfg.labels[0] == "background" and cfg.labels[1] == "person" and len(cfg.labels) == 91
    m.train()
    raw = m(x)
    assert set(raw) == {"box_encodings", "class_logits", "anchors"} and raw["anchors"].shape == (a, 4)
    raw["class_logits"].sum().backward()


def test_coco_labels_and_yolo_reader():
    names = coco_labels()
    assert len(names) == 90 and sum(n != "n/a" for n in names) == 80
    assert names[0] == "person" and names[89] == "toothbrush" and names[11] == "n/a"
    ids = coco80_to_id()
    assert len(ids) == 80 and ids[0] == 1 and ids[11] == 13 and ids[79] == 90
    assert coco_detection_labels()[18] == "dog"
    if not SHARED.is_dir():
        pytest.skip("needs ../shared/data for coco8")
    samples = yolo_samples(shared_path("coco8"))
    assert len(samples) == 8
    gt = read_yolo_labels(samples[0][1])  # 000000000009: bowls (45 -> id 51), broccoli, oranges
    assert len(gt) == 8 and gt.category_ids[0] == 51 and gt.boxes.shape == (8, 4)
    assert (gt.boxes[:, 2] > gt.boxes[:, 0]).all() and (gt.boxes >= -1e-6).all() and (gt.boxes <= 1 + 1e-6).all()
