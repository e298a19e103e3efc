"""Exports of the imported DeepLab v3: float/int8 .tflite and ONNX, parity, standard metadata, MediaPipe.

References: LiteRT running Google's deeplabv3.tflite, and MediaPipe Tasks' ImageSegmenter
(a test dependency) running our file with nothing but the file.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from .conftest import shared_path

pytestmark = pytest.mark.slow  # three conversions: ~3 min on 2 cores

DEEPLAB = ("models", "deeplabv3.tflite")
VOC_IDS = ("0", "1", "20", "166")


def _voc_batch(transform):
    return np.stack([transform(shared_path("voc2012_seg_samples", f"{i}_image.png")).numpy() for i in VOC_IDS])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    pytest.importorskip("litert_torch")
    pytest.importorskip("onnxruntime")
    from mobilenets.data.transforms import EvalTransform
    from mobilenets.export import export_model
    from mobilenets.quantize import calibration_images
    from mobilenets.weights.deeplab_tflite import load_deeplab

    out = tmp_path_factory.mktemp("seg_export")
    model = load_deeplab(shared_path(*DEEPLAB))
    transform = EvalTransform.from_cfg(model.pretrained_cfg)
    images = _voc_batch(transform)
    calib_dir = out / "calib"  # never the VOC pairs that parity is measured on
    calib_dir.mkdir()
    for src in sorted((shared_path("coco8", "images")).rglob("*.jpg")) + sorted(
            shared_path("imagenet_samples_100").glob("*.JPEG"))[:16]:  # fmt: skip
        (calib_dir / src.name).symlink_to(src)
    calib = calibration_images(calib_dir, transform)
    res = {
        "float": export_model(model, "tflite", out / "f.tflite", parity_images=images),
        "onnx": export_model(model, "onnx", out / "f.onnx", parity_images=images),
        "int8": export_model(model, "tflite", out / "q.tflite", calibration=calib, parity_images=images),
    }
    return model, res


def test_parity_with_pytorch(exported):
    _, res = exported
    f, o, q = (res[k].parity for k in ("float", "onnx", "int8"))
    assert f.agreement["pixels"] >= 0.999 and f.max_abs_diff["logits"] < 1e-3  # measured 1.0, 1.7e-4
    assert o.agreement["pixels"] >= 0.999 and o.max_abs_diff["logits"] < 1e-3  # measured 1.0, 4.6e-5
    assert q.agreement["pixels"] >= 0.97  # measured 0.995 (max |logit diff| ~2.0; logits reach ~40)
    assert "pixels" in str(q)


def test_tflite_layout_is_googles(exported):
    from mobilenets.runtime import read_artifact_info
    from mobilenets.weights.tflite import TFLiteGraph

    _, res = exported
    for key, dtype in (("float", "float32"), ("int8", "uint8")):
        path = res[key].path
        g = TFLiteGraph(path)
        assert [int(v) for v in g.tensor(g.sg.Outputs(0)).ShapeAsNumpy()] == [1, 257, 257, 21]
        assert "TRANSPOSE" not in g.ops and "BROADCAST_TO" not in g.ops
        info = read_artifact_info(path)
        assert info.cfg.task == "segment" and info.transpose == {"logits": [0, 3, 1, 2]} and info.input_dtype == dtype
        assert set(g.metadata()) >= {"mobilenets", "TFLITE_METADATA"}
        labels = zipfile.ZipFile(io.BytesIO(path.read_bytes())).read("labels.txt").decode().splitlines()
        assert labels[0] == "background" and labels[15] == "person" and len(labels) == 21


def test_segmenter_metadata_is_standard(exported):
    schema = pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")
    from mobilenets.weights.tflite import TFLiteGraph

    _, res = exported
    g = TFLiteGraph(res["float"].path)
    buf = next(g.model.Buffers(g.model.Metadata(i).Buffer()).DataAsNumpy().tobytes()
               for i in range(g.model.MetadataLength()) if g.model.Metadata(i).Name() == b"TFLITE_METADATA")  # fmt: skip
    md = schema.ModelMetadataT.InitFromPackedBuf(bytearray(buf), 0)
    sub = md.subgraphMetadata[0]
    norm = sub.inputTensorMetadata[0].processUnits[0].options
    assert list(norm.mean) == [127.5] and list(norm.std) == [127.5]
    out = sub.outputTensorMetadata[0]
    assert out.content.contentPropertiesType == 2 and out.content.contentProperties.colorSpace == 2  # grayscale image
    assert out.associatedFiles[0].type == 2 and out.associatedFiles[0].name == b"labels.txt"  # TENSOR_AXIS_LABELS


def _mediapipe_masks(model_path, paths):
    mp = pytest.importorskip("mediapipe")
    from mediapipe.tasks.python import BaseOptions, vision

    opts = vision.ImageSegmenterOptions(base_options=BaseOptions(model_asset_path=str(model_path)),
                                        output_category_mask=True, output_confidence_masks=False)  # fmt: skip
    masks = []
    with vision.ImageSegmenter.create_from_options(opts) as seg:
        for p in paths:
            rgb = np.ascontiguousarray(np.asarray(Image.open(p).convert("RGB")))
            m = seg.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb)).category_mask
            masks.append(m.numpy_view().reshape(m.height, m.width).copy())
    return masks


def test_mediapipe_image_segmenter_runs_our_files(exported):
    """MediaPipe alone on our file vs LiteRT on Google's file (our preprocessing, Pillow decode as MediaPipe's caller)."""
    from mobilenets.auto import load_predictor
    from mobilenets.data.transforms import EvalTransform
    from mobilenets.tasks.segment import logits_to_mask

    _, res = exported
    paths = [shared_path("images", "segmentation_input_rotation0.jpg")] + [
        shared_path("voc2012_seg_samples", f"{i}_image.png") for i in VOC_IDS]  # fmt: skip
    google = load_predictor(weights=shared_path(*DEEPLAB), backend="litert")
    t = EvalTransform.from_cfg(google.cfg.replace(decode="pillow"))
    ref = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        ref.append(logits_to_mask(google.run(t(img)[None].numpy())["logits"][0], (img.height, img.width)))
    for key, floor in (("float", 0.99), ("int8", 0.97)):
        got = _mediapipe_masks(res[key].path, paths)
        agree = [float((a == b).mean()) for a, b in zip(got, ref)]
        assert min(agree) >= floor, (key, agree)  # measured float >= 0.9993, int8 >= 0.985


def test_exported_files_evaluate_like_the_original(exported):
    from mobilenets.auto import load_predictor
    from mobilenets.tasks.segment import evaluate_segmentation

    _, res = exported
    data = shared_path("voc2012_seg_samples")
    ref = evaluate_segmentation(load_predictor(weights=shared_path(*DEEPLAB), backend="litert"), data).miou
    for key, tol in (("float", 0.005), ("onnx", 0.005), ("int8", 0.03)):
        miou = evaluate_segmentation(load_predictor(weights=res[key].path), data).miou
        assert abs(miou - ref) <= tol, (key, miou, ref)
