"""Export: the folded deploy graph, ONNX and LiteRT artifacts, int8 calibration, metadata, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import mobilenets
from mobilenets.cli import main
from mobilenets.errors import MobilenetsError
from mobilenets.export import export_model, synthetic_images
from mobilenets.models.deploy import DeployModule
from mobilenets.runtime import read_artifact_info

from .conftest import random_model, shared_path


@pytest.mark.parametrize("resolution", [96, 97, 64])
def test_deploy_module_is_the_model(resolution):
    model = random_model(resolution=resolution)
    x = torch.from_numpy(synthetic_images((3, resolution, resolution), 4))
    with torch.no_grad():
        probs, emb = DeployModule(model, (3, resolution, resolution))(x)
        ref = model(x).softmax(1)
        ref_emb = model.forward_head(model.forward_features(x), pre_logits=True)
        probs_nhwc, _ = DeployModule(model, (3, resolution, resolution), channels_last=True)(x.permute(0, 2, 3, 1))
    assert (probs - ref).abs().max() < 1e-6
    assert (emb - ref_emb).abs().max() < 1e-4 * ref_emb.abs().max()
    assert (probs_nhwc - ref).abs().max() < 1e-6


def test_deploy_module_pads_only_where_tf_same_is_asymmetric():
    deploy = DeployModule(random_model(resolution=96), (3, 96, 96))
    features = deploy.model.features
    pads = [name for name, block in features.named_children() if isinstance(block[0], torch.nn.ZeroPad2d)]
    # stride 2 on an even input: TF pads nothing top/left and one pixel bottom/right
    assert pads == ["Conv2d_0", "Conv2d_2_depthwise", "Conv2d_4_depthwise", "Conv2d_6_depthwise", "Conv2d_12_depthwise"]
    assert features.Conv2d_0[0].padding == (0, 1, 0, 1)
    assert features.Conv2d_1_depthwise[0].padding == (1, 1)  # symmetric: kept inside the conv


def test_weight_rounding_correction_keeps_each_channels_mean_output():
    from mobilenets.quantize import correct_weight_rounding, int8_weight_scale

    deploy = DeployModule(random_model(resolution=64), (3, 64, 64), channels_last=True).eval()
    convs = {n: m for n, m in deploy.named_modules() if type(m) is torch.nn.Conv2d}
    before = {n: (m.weight.detach().double().clone(), m.bias.detach().double().clone()) for n, m in convs.items()}
    x = np.ascontiguousarray(synthetic_images((3, 64, 64), 6).transpose(0, 2, 3, 1), np.float32)
    inputs = {}

    def keep(mod, args, name):
        inputs[name] = args[0].detach().double()

    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: keep(mod, a, n)) for n, m in convs.items()]
    with torch.no_grad():
        deploy(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    # one layer's weights pinned to a grid they sit on exactly: nothing to correct there
    pinned = "Conv2d_3_pointwise"
    name = next(n for n in convs if n.endswith((pinned + ".0", pinned)))
    w = convs[name].weight.data.double()
    grid = int8_weight_scale(w)
    convs[name].weight.data = (torch.round(w / grid) * grid).float()
    before[name] = (convs[name].weight.detach().double().clone(), before[name][1])
    changed = correct_weight_rounding(deploy, x, {pinned: grid.flatten().numpy() * 127})
    assert 0 < changed < len(convs)
    for n, conv in convs.items():
        w, b = before[n]
        assert torch.equal(conv.weight.detach().double(), w)  # the weights stay float: PT2E rounds them
        s = int8_weight_scale(w)
        q = torch.round(w / s).clamp(-127, 127) * s
        x_in = inputs[n]
        args = (conv.stride, conv.padding, conv.dilation, conv.groups)
        ref = torch.nn.functional.conv2d(x_in, w, b, *args).mean((0, 2, 3))
        rounded = torch.nn.functional.conv2d(x_in, q, b, *args).mean((0, 2, 3))
        fixed = torch.nn.functional.conv2d(x_in, q, conv.bias.detach().double(), *args).mean((0, 2, 3))
        scale = ref.abs().max() + 1
        assert (fixed - ref).abs().max() <= 1e-5 * scale, n
        if n == name:
            assert torch.equal(conv.bias.detach().double(), b)
        elif (rounded - ref).abs().max() > 1e-4 * scale:
            assert (fixed - ref).abs().max() < 0.1 * (rounded - ref).abs().max(), n


def test_int8_weight_scale_is_the_pt2e_observers():
    pytest.importorskip("litert_torch")
    from litert_torch.quantize import pt2e_quantizer_utils as pqu

    from mobilenets.quantize import int8_weight_scale, pt2e_quantizer

    spec = pqu.get_weight_qspec(pt2e_quantizer().global_config)
    w = torch.randn(16, 8, 3, 3) * torch.logspace(-5, 0, 16).view(-1, 1, 1, 1)  # down to the eps floor
    observer = spec.observer_or_fake_quant_ctr(dtype=spec.dtype, quant_min=spec.quant_min, quant_max=spec.quant_max,
                                               qscheme=spec.qscheme, ch_axis=spec.ch_axis)  # fmt: skip (as prepare_pt2e makes it)
    observer(w)
    scale, zero = observer.calculate_qparams()
    assert (spec.quant_min, spec.quant_max) == (-127, 127) and not zero.any()
    assert torch.allclose(int8_weight_scale(w).flatten().float(), scale, rtol=1e-6, atol=0)


def test_onnx_float_parity_metadata_and_clean_graph(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the [onnx] extra")
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    from mobilenets.auto import load_predictor

    model = random_model()
    out = tmp_path / "m.onnx"
    result = export_model(model, "onnx", out)
    assert result.parity.max_abs_diff["probabilities"] < 1e-5 and result.parity.top1_agreement == 1.0
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Conv") == 28 and "Pad" not in ops  # the TF 'SAME' pads live in the convs' pads
    info = read_artifact_info(out)
    assert (info.format, info.resolution, info.cfg.num_classes, info.layout, info.int8) == ("onnx", 96, 10, "NCHW", False)
    assert info.cfg.labels[3] == "class3" and info.name == model.name
    assert [o.name for o in info.outputs] == ["probabilities", "embedding"]
    pred = load_predictor(weights=out, backend="onnxruntime")
    x = synthetic_images((3, 96, 96), 3, seed=1)
    with torch.no_grad():
        emb = model.forward_head(model.forward_features(torch.from_numpy(x)), pre_logits=True).numpy()
    assert np.abs(pred.embed(x) - emb).max() < 1e-4 * np.abs(emb).max()
    assert pred.label(3) == "class3" and pred.resolution == 96


def test_onnx_int8_is_per_channel_qdq(tmp_path):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the [onnx] extra")
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    from onnx import numpy_helper

    model = random_model()
    out = tmp_path / "q.onnx"
    result = export_model(model, "onnx", out, calibration=synthetic_images((3, 96, 96), 16))
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight_scales = [inits[n.input[1]] for n in graph.node
                     if n.op_type == "DequantizeLinear" and n.input[0].endswith("weight_quantized")]  # fmt: skip
    assert len(weight_scales) == 26  # 28 convs minus the two kept float (stem, first depthwise)
    assert all(s.ndim == 1 and s.size > 1 for s in weight_scales)  # one scale per output channel
    assert "Clip" in [n.op_type for n in graph.node]  # only after the float layers
    info = read_artifact_info(out)
    assert info.int8 and info.quantization["calibration_images"] == 16
    assert result.parity.images == 16 and result.parity.source == "calibration images"


@pytest.mark.parametrize("bits", [8, 7])
def test_onnx_int8_weights_are_rounded_as_the_bias_correction_assumes(tmp_path, monkeypatch, bits):
    onnx = pytest.importorskip("onnx", reason="ONNX export needs the [onnx] extra")
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    from onnx import numpy_helper

    from mobilenets import quantize
    from mobilenets.quantize import ORT_FLOAT_LAYERS, int8_weight_scale

    monkeypatch.setattr(quantize, "ort_weight_bits", lambda: bits)  # the width either CPU kind gets

    model = random_model()
    out = tmp_path / "q.onnx"
    export_model(model, "onnx", out, calibration=synthetic_images((3, 96, 96), 8), bias_correction=False, parity=False)
    graph = onnx.load(str(out)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weights = dict(DeployModule(model, (3, 96, 96)).state_dict())
    levels = 127 if bits == 8 else 64
    checked = 0
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or not node.input[0].endswith("weight_quantized"):
            continue
        name = node.input[0].removesuffix("_quantized")
        w = weights[name].double()
        assert not any(f".{layer}." in name for layer in ORT_FLOAT_LAYERS)
        s = int8_weight_scale(w, levels=levels, floor=float(np.finfo(np.float32).tiny))
        assert np.allclose(inits[node.input[1]], s.flatten().numpy(), rtol=1e-6)
        assert np.array_equal(inits[node.input[0]], torch.round(w / s).clamp(-levels, levels).numpy().astype(np.int8))
        checked += 1
    assert checked == 26


def test_tflite_flatbuffer_rewrites():
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT ([tflite] extra)")
    from mobilenets.export.litert import Flatbuffer, add_metadata

    path = shared_path("models", "mobilenet_v1_0.25_128_quant.tflite")
    fb = Flatbuffer(path.read_bytes())
    add_metadata(fb, "mobilenets", b'{"x": 1}')
    again = Flatbuffer(fb.serialize())
    names = [m.name for m in again.model.metadata]
    assert b"mobilenets" in names
    assert [again.op_name(op) for op in again.sg.operators] == [fb.op_name(op) for op in fb.sg.operators]


@pytest.mark.slow
def test_tflite_float_official_parity(tmp_path):
    pytest.importorskip("litert_torch", reason="TFLite export needs the [litert] extra")
    from mobilenets.quantize import image_files, load_batch
    from mobilenets.weights import build_model, read_weights
    from mobilenets.weights.tflite import TFLiteGraph

    google = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    model = build_model(read_weights(google))
    files = image_files(shared_path("imagenet_samples_100"), size=16)
    images = load_batch(files, mobilenets.EvalTransform(224))
    out = tmp_path / "f.tflite"
    result = export_model(model, "tflite", out, parity_images=images)
    assert result.parity.max_abs_diff["probabilities"] <= 1e-4 and result.parity.top1_agreement == 1.0
    ours, theirs = TFLiteGraph(out).ops, TFLiteGraph(google).ops
    # op for op Google's graph (pool as MEAN, squeeze as RESHAPE): no PAD, no TRANSPOSE
    assert [o for o in ours if "CONV" in o] == [o for o in theirs if "CONV" in o]
    assert "PAD" not in ours and "TRANSPOSE" not in ours
    assert read_artifact_info(out).cfg.labels[0].lower() == "background"


@pytest.mark.slow
@pytest.mark.parametrize("input_type", ["int8", "uint8"])
def test_tflite_int8_official_weights(tmp_path, input_type):
    pytest.importorskip("litert_torch", reason="TFLite export needs the [litert] extra")
    from mobilenets.quantize import calibration_images, image_files, load_batch
    from mobilenets.weights import build_model, read_weights
    from mobilenets.weights.tflite import TFLiteGraph

    model = build_model(read_weights(shared_path("models", "mobilenet_v1_0.75_192_quant.tflite")))
    calib = calibration_images(shared_path("hymenoptera", "train"), mobilenets.EvalTransform(192), size=32)
    images = load_batch(image_files(shared_path("imagenet_samples_100"), size=20), mobilenets.EvalTransform(192))
    out = tmp_path / "q.tflite"
    result = export_model(model, "tflite", out, calibration=calib, input_dtype=input_type, parity_images=images)
    assert result.parity.top1_agreement >= 0.8
    ops = TFLiteGraph(out).ops
    assert "PAD" not in ops and "TRANSPOSE" not in ops and ops.count("DEPTHWISE_CONV_2D") == 13
    assert ops[0] == ("QUANTIZE" if input_type == "uint8" else "CONV_2D")
    info = read_artifact_info(out)
    assert info.int8 and info.input_dtype == input_type and info.layout == "NHWC"
    scale, zero = info.input_quantization
    assert abs(scale - 2 / 255) < 1e-6 and (zero >= 0 if input_type == "uint8" else zero < 0)


# --- command line ---------------------------------------------------------------------------------


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


@pytest.fixture
def weights_file(tmp_path):
    from mobilenets.weights import save_weights

    path = tmp_path / "w.safetensors"
    save_weights(random_model(), path)
    return path


def test_export_without_extra_names_it(capsys, monkeypatch, weights_file, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "litert_torch", None)  # import fails as if not installed
    one_line_error(capsys, ["export", "--weights", str(weights_file), "--format", "tflite", "-o", str(tmp_path / "x")],
                   "pip install 'mobilenets[litert]'")  # fmt: skip
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    one_line_error(capsys, ["export", "--weights", str(weights_file), "--format", "onnx", "-o", str(tmp_path / "x")],
                   "pip install 'mobilenets[onnx]'")  # fmt: skip


def test_export_bad_calibration_folders(capsys, weights_file, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    empty = tmp_path / "empty"
    empty.mkdir()
    texts = tmp_path / "texts"
    texts.mkdir()
    (texts / "notes.txt").write_text("not an image")
    base = ["export", "--weights", str(weights_file), "--format", "onnx", "--int8", "-o", str(tmp_path / "q.onnx")]
    one_line_error(capsys, base + ["--calibration", str(empty)], "no images to calibrate on")
    one_line_error(capsys, base + ["--calibration", str(texts)], "no images to calibrate on")
    one_line_error(capsys, base + ["--calibration", str(tmp_path / "missing")], "no such folder (of images to calibrate on)")
    one_line_error(capsys, base, "--int8 needs --calibration")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    one_line_error(capsys, base + ["--calibration", str(bad)], "could be read")
    assert not (tmp_path / "q.onnx").exists()


def test_export_cli_int8_onnx(capsys, weights_file, tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (60, 50, 3), dtype=np.uint8)).save(calib / f"{i}.png")
    out = tmp_path / "q.onnx"
    argv = ["export", "--weights", str(weights_file), "--format", "onnx", "--int8", "--calibration", str(calib),
            "-o", str(out), "--json"]  # fmt: skip
    assert main(argv) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    # 6 noise images through a random 10-class head: int8 keeps the float top-1 on all of them
    assert report["int8"] and report["parity"]["images"] == 6 and report["parity"]["top1_agreement"] == 1.0
    assert report["outputs"] == ["probabilities", "embedding"]
    assert out.exists()


def test_a_headless_model_exports_its_embedding(tmp_path):
    pytest.importorskip("onnxruntime", reason="ONNX export needs the [onnx] extra")
    model = mobilenets.mobilenet_v1(alpha=0.25, resolution=64, num_classes=0).eval()
    result = export_model(model, "onnx", tmp_path / "e.onnx")
    assert [o.name for o in result.info.outputs] == ["embedding"]
    assert result.parity.max_abs_diff["embedding"] < 1e-4
    with pytest.raises(MobilenetsError, match="unknown output"):
        DeployModule(model, (3, 64, 64), outputs=("probabilities",))
