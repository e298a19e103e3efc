"""Our .tflite files carry standard TFLite Model Metadata, and MediaPipe Tasks runs them with nothing else.

MediaPipe (a test dependency only) resizes the whole image (no crop, aspect ratio not kept)
with TF1-style bilinear (pixel corners aligned, no half-pixel offset, no antialiasing) and
rounds the result to uint8 before normalizing: our eval transform with ``crop_fraction=1.0``
within one grey level. So the Predictor is run with crop 1.0 to compare top-1.
"""

from __future__ import annotations

import inspect
import io
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilenets.errors import MobilenetsError
from mobilenets.export import tflite_metadata as tm

from .conftest import shared_path


def _mediapipe():
    return pytest.importorskip("mediapipe", reason="MediaPipe Tasks checks need mediapipe (a test dependency)")


def _schema():
    _mediapipe()
    from mediapipe.tasks.metadata import metadata_schema_py_generated as schema

    return schema


def _classifier(path: Path, max_results: int = 3):
    _mediapipe()
    from mediapipe.tasks.python import BaseOptions, vision

    options = vision.ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=max_results
    )
    return vision.ImageClassifier.create_from_options(options)


def _mp_image(img: Image.Image):
    mp = _mediapipe()
    # MediaPipe does not expand grayscale to RGB itself: hand it 3-channel pixels.
    return mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(np.asarray(img.convert("RGB"))))


def _read_artifact_info(path: Path):
    from mobilenets.runtime import read_artifact_info

    return read_artifact_info(path)


def _imagenet_labels() -> list[str]:
    """The 1001 labels (index 0 'background') packed in Google's own metadata zip."""
    with zipfile.ZipFile(shared_path("models", "mobilenet_v1_0.25_224_quant.tflite")) as z:
        return z.read("labels.txt").decode().splitlines()


def _google_float(tmp_path: Path) -> tuple[Path, tm.ModelCard]:
    """Google's float 0.25_224 file (no metadata: MediaPipe refuses it) with our standard metadata."""
    src = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    card = tm.ModelCard(name="mobilenet_v1_0.25_224", labels=_imagenet_labels(), has_background=True, alpha=0.25)
    out = tmp_path / "google_float_md.tflite"
    out.write_bytes(tm.standard_metadata(src.read_bytes(), card))
    return out, card


# --- the metadata flatbuffer ------------------------------------------------------------------


def test_layout_matches_the_generated_schema():
    """Every field id, scalar type and table size in `_LAYOUT` is what flatc generated from metadata_schema.fbs."""
    schema = _schema()
    scalar = {"int8": "Int8", "uint8": "Uint8", "int32": "Int32", "uint32": "Uint32"}
    for table, (size, fields) in tm._LAYOUT.items():
        assert f"StartObject({size})" in inspect.getsource(getattr(schema, f"{table}Start")), table
        for field, (slot, kind) in fields.items():
            camel = "".join(p[:1].upper() + p[1:] for p in field.split("_"))
            src = inspect.getsource(getattr(schema, f"{table}Add{camel}"))
            prepend = f"Prepend{scalar[kind]}Slot" if kind in scalar else "PrependUOffsetTRelativeSlot"
            assert re.search(rf"{prepend}\({slot},", src), (table, field, src)


def test_metadata_reads_back_with_the_generated_code(tmp_path):
    """What we write parses with the schema's own generated reader, field by field."""
    schema = _schema()
    _, card = _google_float(tmp_path)
    card.version = "v9"
    graph = {"resolution": 224, "input_dtype": "float32", "input_quantization": None, "int8": False,
             "output_widths": [1001, 7]}  # fmt: skip
    buf = tm.build_metadata(tm.metadata_tables(card, graph, [tm.PROBABILITIES, "extra"]))
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    md = schema.ModelMetadataT.InitFromPackedBuf(bytearray(buf), 0)
    assert (md.name, md.version, md.author, md.minParserVersion) == (card.name.encode(), b"v9", b"mobilenets", b"1.0.0")
    (sg,) = md.subgraphMetadata
    (image,) = sg.inputTensorMetadata
    assert image.content.contentPropertiesType == schema.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == schema.ColorSpaceType.RGB
    (unit,) = image.processUnits
    assert unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions
    assert (list(unit.options.mean), list(unit.options.std)) == ([127.5], [127.5])  # [-1, 1] on 0..255 pixels
    assert (list(image.stats.min), list(image.stats.max)) == ([-1.0], [1.0])
    probs, extra = sg.outputTensorMetadata
    assert probs.name == b"probabilities" and list(probs.stats.max) == [1.0]
    (labels,) = probs.associatedFiles
    assert (labels.name, labels.type) == (b"labels.txt", schema.AssociatedFileType.TENSOR_AXIS_LABELS)
    assert extra.name == b"extra" and extra.content.contentPropertiesType == schema.ContentProperties.FeatureProperties


def test_pack_files_appends_a_zip_the_flatbuffer_ignores():
    model = b"\x10\x00\x00\x00TFL3" + bytes(100)
    packed = tm.pack_files(model, {"labels.txt": b"background\ncat\n"})
    assert packed[: len(model)] == model
    with zipfile.ZipFile(io.BytesIO(packed)) as z:
        (entry,) = z.infolist()
        assert entry.header_offset >= len(model)  # offsets count from the file start, as tflite-support writes them
        assert entry.compress_type == zipfile.ZIP_STORED and z.read("labels.txt") == b"background\ncat\n"
    assert tm.pack_files(model, {}) == model


def test_uint8_input_must_mean_pixels():
    card = tm.ModelCard(name="m")  # (x - 0.5) / 0.5 on [0, 1]: (pixel - 127.5) / 127.5
    tm.check_pixel_input(card, "uint8", (1 / 127.5, 127))  # pixel p means (p - 127) / 127.5: within half a level
    tm.check_pixel_input(card, "uint8", (0.99 / 127.5, 128))  # calibrated without pure black/white: still pixels
    with pytest.raises(MobilenetsError, match="pixel normalization"):
        tm.check_pixel_input(card, "uint8", (1 / 255, 0))  # an input on [0, 1]: MediaPipe would feed it 0..255
    tm.check_pixel_input(card, "int8", (1 / 255, 0))  # MediaPipe takes no int8 images: nothing to check


def test_google_float_model_runs_in_mediapipe_with_our_metadata(tmp_path):
    """A float file MediaPipe refuses without NormalizationOptions names the parrot once ours is added."""
    path, card = _google_float(tmp_path)
    from ai_edge_litert.interpreter import Interpreter

    Interpreter(model_path=str(path)).allocate_tensors()  # still a loadable model
    found = _read_artifact_info(path)
    labels = found.cfg.labels if hasattr(found, "cfg") else found.labels
    assert list(labels) == card.labels  # our reader finds the labels in the zip
    with _classifier(path) as clf:
        result = clf.classify(_mp_image(Image.open(shared_path("images", "parrot.jpg"))))
    (head,) = result.classifications
    assert head.head_name == "probabilities"
    assert head.categories[0].category_name == "macaw" and head.categories[0].index == card.labels.index("macaw")


# --- our exports, end to end -------------------------------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Float 0.25_224 and int8 (uint8 input) 0.75_192 exports, each with standard metadata added."""
    _mediapipe()
    import mobilenets
    from mobilenets.export import export_model
    from mobilenets.quantize import calibration_images

    models = shared_path("models")
    calib = shared_path("hymenoptera", "train")
    tmp = tmp_path_factory.mktemp("mediapipe")
    out = {}
    float_model = mobilenets.create_model(
        "mobilenet_v1_0.25_224", weights=str(models / "mobilenet_v1_0.25_224_1_default_1.tflite")
    )
    int8_model = mobilenets.create_model(
        "mobilenet_v1_0.75_192", weights=str(models / "mobilenet_v1_0.75_192_quant.tflite")
    )
    calibration = calibration_images(calib, mobilenets.EvalTransform(192), size=64)
    for kind, model, kwargs in [
        ("float", float_model, {}),
        ("int8", int8_model, {"calibration": calibration, "input_dtype": "uint8", "parity_images": calibration[:4]}),
    ]:
        path = tmp / f"{kind}.tflite"
        result = export_model(model, "tflite", path, **kwargs)  # writes the standard metadata itself
        out[kind] = (path, result.info)
    return out


def _agreement(path: Path, count: int = 100) -> float:
    """Top-1 agreement of MediaPipe's ImageClassifier with our LiteRT Predictor (crop 1.0) on ImageNet samples."""
    from mobilenets.auto import load_predictor

    files = sorted(
        p for p in shared_path("imagenet_samples_100").iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")
    )
    pred = load_predictor(weights=path, backend="litert", crop_fraction=1.0)
    same = 0
    with _classifier(path, max_results=1) as clf:
        for f in files[:count]:
            img = Image.open(f).convert("RGB")
            ours = int(pred.probabilities(pred.transform(img).numpy()[None]).argmax())
            theirs = clf.classify(_mp_image(img)).classifications[0].categories[0]
            assert theirs.category_name == pred.labels[theirs.index]
            same += ours == theirs.index
    return same / min(count, len(files))


@pytest.mark.slow
@pytest.mark.parametrize("kind, floor", [("float", 0.98), ("int8", 0.95)])
def test_mediapipe_agrees_with_our_predictor(exports, kind, floor):
    path, info = exports[kind]
    assert _read_artifact_info(path) == info  # our "mobilenets" JSON survived the rewrite
    assert info.input_dtype == ("uint8" if kind == "int8" else "float32")
    agreement = _agreement(path)
    assert agreement >= floor, f"{kind}: MediaPipe and our Predictor agree on {100 * agreement:.0f}% of top-1"


@pytest.mark.slow
def test_mediapipe_embedder_reads_our_embedding(exports):
    """Both outputs are described; the ImageEmbedder's 'embedding' head is our Predictor's embedding."""
    _mediapipe()
    from mediapipe.tasks.python import BaseOptions, vision

    from mobilenets.auto import load_predictor

    img = Image.open(shared_path("images", "parrot.jpg")).convert("RGB")
    for kind, (path, _) in exports.items():
        options = vision.ImageEmbedderOptions(base_options=BaseOptions(model_asset_path=str(path)))
        with vision.ImageEmbedder.create_from_options(options) as embedder:
            heads = {
                e.head_name: np.asarray(e.embedding, np.float32) for e in embedder.embed(_mp_image(img)).embeddings
            }
        pred = load_predictor(weights=path, backend="litert", crop_fraction=1.0)
        ours = pred.embed(pred.transform(img).numpy()[None])[0]
        theirs = heads["embedding"]
        assert float(theirs @ ours / np.linalg.norm(theirs) / np.linalg.norm(ours)) > 0.99, kind
