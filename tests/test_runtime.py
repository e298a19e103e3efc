"""The Predictor over torch / onnxruntime / litert / openvino / auto: same outputs, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from mobilenets.auto import load_predictor
from mobilenets.errors import MobilenetsError
from mobilenets.export import export_model, synthetic_images
from mobilenets.models.cfg import PretrainedCfg
from mobilenets.runtime import ArtifactError, ArtifactInfo, ArtifactPredictor, backend_available

from .conftest import random_model, shared_path


def needs_openvino() -> None:
    """Skip without OpenVINO; never `import openvino` here (that alone sends its telemetry)."""
    if not backend_available("openvino"):
        pytest.skip("openvino is optional")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small float model: its safetensors weights and its .onnx export."""
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    from mobilenets.weights import save_weights

    root = tmp_path_factory.mktemp("rt")
    model = random_model()
    save_weights(model, root / "w.safetensors")
    export_model(model, "onnx", root / "m.onnx")
    return root


def test_backends_agree(exported):
    x = synthetic_images((3, 96, 96), 4, seed=3)
    torch_pred = load_predictor(weights=exported / "w.safetensors", backend="torch")
    ort_pred = load_predictor(weights=exported / "m.onnx", backend="onnxruntime", threads=1)
    assert np.abs(torch_pred.probabilities(x) - ort_pred.probabilities(x)).max() < 1e-5
    emb = torch_pred.embed(x)
    assert np.abs(ort_pred.embed(x) - emb).max() < 1e-4 * np.abs(emb).max()
    assert (ort_pred.resolution, ort_pred.num_classes, ort_pred.label(2)) == (96, 10, "class2")
    with pytest.raises(MobilenetsError, match="takes N x 3 x 96 x 96"):
        ort_pred.probabilities(x[:, :, :64, :64])


def test_openvino_runs_the_onnx_artifact(exported):
    needs_openvino()
    x = synthetic_images((3, 96, 96), 2, seed=4)
    ov = load_predictor(weights=exported / "m.onnx", backend="openvino", threads=1)
    ref = load_predictor(weights=exported / "m.onnx", backend="onnxruntime", threads=1)
    assert np.abs(ov.probabilities(x) - ref.probabilities(x)).max() < 1e-4


def test_openvino_keeps_fp32_on_real_weights(tmp_path):
    """OpenVINO runs float models in bf16 on CPUs that have it unless told f32: with Google's 0.25_224 weights
    on real photos that moved probabilities by up to 0.18 and flipped a top-1 (measured); asked f32, ~5e-6."""
    needs_openvino()
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    from mobilenets.data.transforms import EvalTransform
    from mobilenets.weights import build_model, read_weights

    src = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    images = sorted(shared_path("imagenet_samples_100").rglob("*.JPEG"))[:8]
    export_model(build_model(read_weights(src)), "onnx", tmp_path / "f025.onnx")
    x = np.stack([EvalTransform(224)(p).numpy() for p in images])
    ov = load_predictor(weights=tmp_path / "f025.onnx", backend="openvino", threads=1)
    ref = load_predictor(weights=src, backend="torch")
    assert np.abs(ov.probabilities(x) - ref.probabilities(x)).max() < 1e-4


def test_openvino_without_telemetry(exported, tmp_path):
    """`import openvino` alone sends a usage event and writes ~/intel/ (opt-out telemetry); ours does neither."""
    needs_openvino()
    code = ("from mobilenets.auto import load_predictor; import sys; "
            f"load_predictor(weights={str(exported / 'm.onnx')!r}, backend='openvino', threads=1); "
            "assert sys.modules.get('openvino_telemetry') is None")  # fmt: skip
    env = {**os.environ, "HOME": str(tmp_path), "CI": ""}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "intel").exists(), "OpenVINO telemetry wrote its files"


@pytest.mark.parametrize(("artifact", "backend", "needle"), [
    ("m.onnx", "litert", "the litert backend runs .tflite files and m.onnx is a .onnx model"),
    ("m.onnx", "torch", "is an ONNX model"),
    ("w.safetensors", "onnxruntime", "is not an exported .onnx model"),
    ("w.safetensors", "litert", "is not an exported .tflite model"),
])  # fmt: skip
def test_wrong_backend(exported, artifact, backend, needle):
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT")
    with pytest.raises(MobilenetsError, match=needle):
        load_predictor(weights=exported / artifact, backend=backend)


def test_tflite_to_onnxruntime_is_refused():
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    google = shared_path("models", "mobilenet_v1_0.25_128_quant.tflite")
    with pytest.raises(MobilenetsError, match="use --backend litert"):
        load_predictor(weights=google, backend="onnxruntime")


def test_corrupt_artifacts(exported, tmp_path):
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT")
    data = (exported / "m.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="corrupt or truncated .onnx"):
        load_predictor(weights=cut, backend="onnxruntime")
    google = shared_path("models", "mobilenet_v1_0.25_128_quant.tflite").read_bytes()
    bad = tmp_path / "cut.tflite"
    bad.write_bytes(google[:5000])
    with pytest.raises(MobilenetsError, match="cut.tflite"):
        load_predictor(weights=bad, backend="litert")


def test_google_quant_tflite_on_litert():
    """The README's reference: 0.25_224_quant on burger.jpg, whole image, is a cheeseburger at about 0.96."""
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT")
    pred = load_predictor(weights=shared_path("models", "mobilenet_v1_0.25_224_quant.tflite"), backend="litert",
                          crop_fraction=1.0, threads=1)  # fmt: skip
    assert pred.info["input_dtype"] == "uint8" and pred.has_background
    probs = pred.probabilities(pred.transform(shared_path("images", "burger.jpg")).numpy()[None])
    assert pred.label(int(probs.argmax())) == "cheeseburger"
    assert abs(probs.max() - 0.96) < 0.03
    with pytest.raises(MobilenetsError, match="no embedding output"):
        pred.embed(np.zeros((1, 3, 224, 224), np.float32))


def test_embedding_extractor_tflite():
    pytest.importorskip("ai_edge_litert", reason="needs LiteRT")
    pred = load_predictor(weights=shared_path("models", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite"),
                          backend="litert", threads=1)  # fmt: skip
    assert pred.embed(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 1024)
    with pytest.raises(MobilenetsError, match="no classifier output"):
        pred.probabilities(np.zeros((1, 3, 224, 224), np.float32))


def test_integer_input_is_quantized_with_the_artifacts_scale(tmp_path):
    cfg = PretrainedCfg(num_classes=1, label_offset=0, input_size=(3, 2, 2))
    info = ArtifactInfo(name="x", format="tflite", cfg=cfg, layout="NHWC", input_dtype="uint8",
                        input_quantization=(1 / 128, 128))  # fmt: skip
    pred = ArtifactPredictor("litert", tmp_path / "x.tflite", info)
    x = np.array([-1.0, -0.5, 0.0, 0.999, 1.0, 0.25, 0.3, -0.3, 0.1, 0.2, 0.3, 0.4], np.float32).reshape(1, 3, 2, 2)
    q = pred.prepare(x)
    assert q.dtype == np.uint8 and q.shape == (1, 2, 2, 3)
    assert q[0, 0, 0].tolist() == [0, 255, 141]  # -1 -> 0; 1 * 128 + 128 clips to 255; 0.1 -> 12.8 -> 13 + 128
    assert q[0, 0, 1, 0] == 64 and q[0, 1, 1, 0] == 255


def test_auto_on_an_artifact_picks_and_remembers(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    pred = load_predictor(weights=exported / "m.onnx", backend="auto", threads=1)
    assert pred.backend in ("onnxruntime", "openvino")
    record = json.loads((tmp_path / "cache" / "auto.json").read_text())
    (choice,) = record.values()
    assert choice["backend"] == pred.backend and set(choice["ms"]) >= {"onnxruntime"}
    again = load_predictor(weights=exported / "m.onnx", backend="auto", threads=1)
    assert again.backend == pred.backend and again.info["auto"] == choice["ms"]  # from the cache, not re-timed


@pytest.mark.slow
def test_auto_on_pytorch_weights_exports_and_picks(exported, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    pred = load_predictor(weights=exported / "w.safetensors", backend="auto", threads=1)
    timed = pred.info["auto"]
    assert "torch" in timed and "onnxruntime" in timed
    assert timed[pred.backend] == min(timed.values())
    assert sorted(p.suffix for p in (tmp_path / "cache" / "exports").iterdir()) >= [".onnx"]


def test_unknown_backend():
    with pytest.raises(MobilenetsError, match="unknown backend 'tensorrt'"):
        load_predictor(model="mobilenet_v1_0.25_128", weights="x", backend="tensorrt")


# --- any task shape: a two-output module that is not a classifier --------------------------------


class TwoHeads(torch.nn.Module):
    """A made-up dense task: a 4-channel map at stride 4 and an 8-d vector, on a MobileNet v1 stem."""

    def __init__(self) -> None:
        from mobilenets.models.cfg import OutputSpec
        from mobilenets.models.layers import ConvBnAct

        super().__init__()
        torch.manual_seed(0)
        self.stem = ConvBnAct(3, 8, 3, 2)
        self.down = ConvBnAct(8, 16, 3, 2, depthwise=False)
        self.head = ConvBnAct(16, 4, 1, act=False)
        self.fc = torch.nn.Linear(16, 8)
        for bn in (m for m in self.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.normal_(0, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
        self.pretrained_cfg = PretrainedCfg(task="segment", arch="two_heads", num_classes=4, label_offset=0,
                                            input_size=(3, 64, 64), crop_fraction=1.0)  # fmt: skip
        self.outputs = (OutputSpec("heat", (-1, 4, 16, 16)), OutputSpec("vector", (-1, 8)))
        self.name = "two_heads"

    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.down(self.stem(x))
        return {"heat": self.head(f), "vector": self.fc(f.mean((2, 3)))}


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    pytest.importorskip("onnxruntime", reason="needs the [onnx] extra")
    pytest.importorskip("litert_torch", reason="needs the [litert] extra")
    from mobilenets.utils import quiet_native

    root = tmp_path_factory.mktemp("two")
    model = TwoHeads().eval()
    with quiet_native():
        onnx = export_model(model, "onnx", root / "t.onnx")
        tfl = export_model(model, "tflite", root / "t.tflite")
    return model, onnx, tfl


def test_predictor_run_names_every_output_on_every_backend(two_heads):
    from mobilenets.runtime import open_backend

    model, onnx, tfl = two_heads
    assert onnx.parity.max_abs_diff["heat"] < 1e-5 and tfl.parity.max_abs_diff["vector"] < 1e-5
    x = synthetic_images((3, 64, 64), 3, seed=5)
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model.predict(torch.from_numpy(x)).items()}
    preds = [open_backend("torch", model=model), load_predictor(weights=onnx.path), load_predictor(weights=tfl.path)]
    if backend_available("openvino"):
        preds.append(load_predictor(weights=onnx.path, backend="openvino"))
    assert [p.backend for p in preds][:3] == ["torch", "onnxruntime", "litert"]
    for p in preds:
        out = p.run(x)
        assert list(out) == ["heat", "vector"] and p.task == "segment", p.backend
        assert out["heat"].shape == (3, 4, 16, 16) and out["vector"].shape == (3, 8), p.backend
        for k in out:
            assert np.abs(out[k] - ref[k]).max() < 1e-4, (p.backend, k)
        with pytest.raises(MobilenetsError, match="no classifier output"):
            p.probabilities(x)


@pytest.mark.parametrize(
    ("values", "dtype", "finite"),
    [([0.0, -1.5, 2.0], np.float32, True), ([], np.float32, True),
     ([3e38, 3e38, 3e38], np.float32, True), ([6e4, 6e4], np.float16, True),  # sums overflow, values are finite
     ([1.0, np.nan], np.float32, False), ([np.inf, 1.0], np.float32, False), ([-np.inf, np.inf], np.float32, False),
     ([3e38, 3e38, np.nan], np.float32, False), ([6e4, np.inf], np.float16, False)],
)  # fmt: skip
def test_all_finite(values, dtype, finite):
    from mobilenets.utils import all_finite

    assert all_finite(np.asarray(values, dtype)) is finite
    assert all_finite(np.asarray(values, dtype).reshape(1, -1, 1)) is finite
