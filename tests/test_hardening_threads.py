"""One Predictor shared by 8 threads gives bit-identical outputs to calling it sequentially.

Every backend, float and int8: torch (float only: PyTorch runs the float module),
onnxruntime and openvino on our exported .onnx (float and int8 QDQ), litert on Google's
own float and uint8 .tflite files. Each thread runs its own images, all threads start
together (a barrier) and each call is repeated, so calls really overlap.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from mobilenets import load_predictor
from mobilenets.runtime import backend_available

from .conftest import random_model, shared_path

THREADS = 8
ROUNDS = 3


def _inputs(pred, n: int = THREADS) -> list[np.ndarray]:
    from mobilenets.export import synthetic_images

    images = synthetic_images(pred.cfg.input_size, count=2 * n, seed=1)
    return [images[2 * i : 2 * i + 2] for i in range(n)]


def assert_thread_safe(pred) -> None:
    batches = _inputs(pred)
    expected = [pred.run(b) for b in batches]
    barrier = threading.Barrier(THREADS)

    def work(i: int) -> list[dict[str, np.ndarray]]:
        barrier.wait()
        return [pred.run(batches[i]) for _ in range(ROUNDS)]

    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(work, range(THREADS)))
    for i, runs in enumerate(results):
        for got in runs:
            for name, want in expected[i].items():
                assert np.array_equal(got[name], want), f"{pred.backend}: thread {i}, output {name} differs"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small random-init model exported to float and int8 .onnx (calibrated on synthetic images)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from mobilenets.export import export_model, synthetic_images
    from mobilenets.weights import save_weights

    d = tmp_path_factory.mktemp("threads")
    model = random_model(alpha=0.25, resolution=96, num_classes=10)
    save_weights(model, d / "w.safetensors")
    export_model(model, "onnx", d / "f.onnx", parity=False)
    export_model(model, "onnx", d / "q.onnx", calibration=synthetic_images((3, 96, 96), count=16), parity=False)
    return d


def test_torch_predictor_is_thread_safe(exported):
    assert_thread_safe(load_predictor(weights=exported / "w.safetensors", backend="torch", threads=2))


@pytest.mark.parametrize("precision", ["f", "q"])
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_onnx_predictors_are_thread_safe(exported, backend, precision):
    if not backend_available(backend):
        pytest.skip(f"{backend} not installed")
    pred = load_predictor(weights=exported / f"{precision}.onnx", backend=backend, threads=2)
    assert pred.info["int8"] == (precision == "q")
    assert_thread_safe(pred)


@pytest.mark.parametrize("name", ["mobilenet_v1_0.25_224_1_default_1.tflite", "mobilenet_v1_0.25_128_quant.tflite"])
def test_litert_predictor_is_thread_safe(name):
    if not backend_available("litert"):
        pytest.skip("litert not installed")
    pred = load_predictor(weights=shared_path("models", name), backend="litert", threads=1)
    assert pred.info["int8"] == ("quant" in name)
    assert_thread_safe(pred)
