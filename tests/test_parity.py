"""Parity with Google's own files: our model, loaded from their .tflite, against LiteRT running it.

Acceptance figures of the weights issue; the numbers are printed with -s for the record.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mobilenets.auto import load_predictor
from mobilenets.data.datasets import open_dataset
from mobilenets.data.transforms import EvalTransform
from mobilenets.tasks.classify import evaluate
from mobilenets.weights import build_model, read_weights

from .conftest import shared_path
from .litert_ref import LiteRT

FLOAT = "mobilenet_v1_0.25_224_1_default_1.tflite"
QUANT = ["mobilenet_v1_0.25_128_quant", "mobilenet_v1_0.25_224_quant", "mobilenet_v1_0.5_160_quant", "mobilenet_v1_0.75_192_quant"]


def _images(*folders: str):
    paths = []
    for folder in folders:
        paths += sorted(p for p in shared_path(folder).iterdir() if p.is_file())
    return paths


def _run_both(tflite_name: str, paths, resolution: int):
    path = shared_path("models", tflite_name)
    model = build_model(read_weights(path)).eval()
    ref = LiteRT(path)
    t = EvalTransform(resolution)
    ours, theirs = [], []
    with torch.inference_mode():
        for p in paths:
            x = t(p)
            ours.append(model(x[None]).softmax(1)[0].numpy())
            theirs.append(ref(x.numpy()))
    return np.stack(ours), np.stack(theirs)


def test_float_parity_on_every_image():
    paths = _images("imagenet_samples_100", "images")
    ours, theirs = _run_both(FLOAT, paths, 224)
    diff = np.abs(ours - theirs).max()
    print(f"\nfloat 0.25_224: max |prob diff| {diff:.2e} over {len(paths)} images")
    assert diff <= 1e-4
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_reference_accuracy_equals_litert():
    folder = shared_path("imagenet_samples_100")
    pred = load_predictor(weights=shared_path("models", FLOAT), backend="torch")  # ours, against LiteRT below
    res = evaluate(pred, folder, workers=0, progress=False)
    data = open_dataset(folder)
    ref = LiteRT(shared_path("models", FLOAT))
    t = EvalTransform(224)
    probs = np.stack([ref(t(p).numpy()) for p, _ in data.samples])
    labels = np.array([c + 1 for _, c in data.samples])
    top5 = np.argsort(-probs, 1)[:, :5]
    lite1, lite5 = (top5[:, 0] == labels).mean(), (top5 == labels[:, None]).any(1).mean()
    print(f"\nimagenet_samples_100, 0.25_224 float: ours top-1 {res.top1:.2f} top-5 {res.top5:.2f}; LiteRT {lite1:.2f} / {lite5:.2f}")
    assert res.n == 100
    assert (res.top1, res.top5) == (lite1, lite5)


@pytest.mark.slow
@pytest.mark.parametrize("name", QUANT)
def test_uint8_sources_agree_with_litert(name):
    res = int(name.split("_")[3])
    folder = shared_path("imagenet_samples_100")
    data = open_dataset(folder)
    ours, theirs = _run_both(f"{name}.tflite", [p for p, _ in data.samples], res)
    labels = np.array([c + 1 for _, c in data.samples])
    # LiteRT's output is uint8 probabilities (step 1/256): at low confidence several classes
    # often share the top value and argmax just takes the lowest index. Our top-1 agrees
    # when LiteRT scores it as high as its maximum.
    mine = ours.argmax(1)
    agree = (theirs[np.arange(len(mine)), mine] == theirs.max(1)).mean()
    strict = (mine == theirs.argmax(1)).mean()
    acc_ours, acc_lite = (mine == labels).mean(), (theirs.argmax(1) == labels).mean()
    print(f"\n{name}: top-1 agreement {agree:.2f} (strict argmax {strict:.2f}); "
          f"top-1 ours (float, dequantized) {acc_ours:.2f}, LiteRT uint8 {acc_lite:.2f}")
    assert agree >= 0.90
    assert abs(acc_ours - acc_lite) <= 0.03


def test_embeddings_match_the_extractor():
    path = shared_path("models", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite")
    pred = load_predictor(weights=path, backend="torch")  # ours, against LiteRT below
    assert pred.num_classes == 0 and pred.output_names == ("embedding",)
    ref = LiteRT(path)
    t = pred.transform
    cosines = []
    photos = [p for p in _images("images") if "mask" not in p.name and "golden" not in p.name]  # not label maps
    for p in photos:
        x = t(p)
        a = pred.embed(x[None].numpy())[0]
        b = ref(x.numpy())
        cosines.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    print(f"\nembedding cosine vs LiteRT: min {min(cosines):.4f} mean {np.mean(cosines):.4f} over {len(cosines)} photos")
    assert min(cosines) >= 0.98


@pytest.mark.parametrize("backend", ["litert", "torch"])
def test_classify_end_to_end_equals_litert_on_tensorflow_preprocessing(capsys, backend):
    """`mobilenets classify` from the JPEG bytes on, against LiteRT on tensors TensorFlow decoded and
    preprocessed itself (tests/fixtures/make_tf_classify_golden.py): same top-1 on every image."""
    import json

    from mobilenets.cli import main

    from .conftest import FIXTURES

    golden = np.load(FIXTURES / "tf_classify_golden.npz")
    folder = shared_path("imagenet_samples_100")
    assert main(["classify", str(folder), "--weights", str(shared_path("models", FLOAT)), "--backend", backend,
                 "--json", "--top-k", "1001", "--show-background"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == list(golden["names"])
    worst = 0.0
    for row, ref in zip(rows, golden["probs"]):
        ours = np.zeros(1001, np.float32)
        for p in row["predictions"]:
            ours[p["index"]] = p["score"]
        assert ours.argmax() == ref.argmax(), row["image"]
        worst = max(worst, float(np.abs(ours - ref).max()))
    print(f"\n{backend}: max |prob diff| vs LiteRT on TF-preprocessed tensors {worst:.2e} over {len(rows)} images")
    assert worst <= 1e-4
