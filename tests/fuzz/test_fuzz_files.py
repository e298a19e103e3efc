"""Byte mutation of real files: every damaged input is a result or one `MobilenetsError` line, never a traceback.

Seeds are real files: Google's .tflite files and photos from ../shared/data, the TF-Slim
checkpoint and Keras .h5 fixtures TensorFlow wrote, a release-style .tgz around that
checkpoint, and our own .safetensors. Where a format carries integrity data (our tensor
digest, the checkpoint's CRC32C) a damaged file that still loads must give exactly the
original tensors: no silent wrong answer.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings

from ..conftest import CKPT, FIXTURES, SHARD, keras_file, make_tgz, shared_path, slim_members
from .conftest import examples, mutations, one_outcome


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _read(path: Path):
    from mobilenets.weights import read_weights

    return read_weights(path)


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finite(w) -> None:
    for name, t in w.state_dict.items():
        assert not t.is_floating_point() or bool(torch.isfinite(t).all()), name


# --- .tflite ------------------------------------------------------------------------------------


def _tflite_structure(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of a .tflite that are not tensor payloads: the flatbuffer tables, vtables and offsets."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(data, 0)
    spans = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.DataLength() > 64:
            start = b._tab.Vector(b._tab.Offset(4))
            spans.append((start, start + b.DataLength()))
    hot, pos = [], 0
    for a, b in sorted(spans):
        if a > pos:
            hot.append((pos, a))
        pos = max(pos, b)
    hot.append((pos, len(data)))
    return hot


TFLITE_SEEDS = ["mobilenet_v1_0.25_128_quant.tflite", "mobilenet_v1_0.25_224_1_default_1.tflite"]


@pytest.mark.parametrize("name", TFLITE_SEEDS)
def test_mutated_tflite(work, name):
    pytest.importorskip("ai_edge_litert")
    from mobilenets.runtime import read_artifact_info

    data = shared_path("models", name).read_bytes()
    hot = _tflite_structure(data)
    path = work / f"m_{name}"

    @settings(max_examples=examples(600))
    @given(mutations(data, hot))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        w = one_outcome(lambda: _read(path))
        if w is not None:
            _finite(w)
        one_outcome(lambda: read_artifact_info(path), count=False)

    case()


# --- our .safetensors ---------------------------------------------------------------------------


def test_mutated_safetensors(work):
    from mobilenets import mobilenet_v1
    from mobilenets.weights import save_weights

    torch.manual_seed(0)
    seed = save_weights(mobilenet_v1(alpha=0.25, resolution=64, num_classes=5).eval(), work / "seed.safetensors")
    data = seed.read_bytes()
    original = _read(seed).state_dict
    header_end = 8 + int.from_bytes(data[:8], "little")
    path = work / "m.safetensors"

    @settings(max_examples=examples(1000))
    @given(mutations(data, [(0, header_end)]))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        w = one_outcome(lambda: _read(path))
        if w is not None:  # the header's digest pins every tensor
            assert _same_tensors(w.state_dict, original)

    case()


# --- TF-Slim checkpoint and the release .tgz ------------------------------------------------------


def test_mutated_slim_checkpoint(work):
    index, shard = (FIXTURES / f"{CKPT}.index").read_bytes(), (FIXTURES / f"{CKPT}{SHARD}").read_bytes()
    original = _read(FIXTURES / CKPT).state_dict
    prefix = work / "m.ckpt"

    @settings(max_examples=examples(200))
    @given(mutations(index, [(len(index) - 48, len(index))]))
    def index_case(blob: bytes) -> None:
        Path(f"{prefix}.index").write_bytes(blob)
        Path(f"{prefix}{SHARD}").write_bytes(shard)
        w = one_outcome(lambda: _read(prefix))
        if w is not None:  # every block and tensor carries a CRC32C
            assert _same_tensors(w.state_dict, original)

    @settings(max_examples=examples(200))
    @given(mutations(shard))
    def shard_case(blob: bytes) -> None:
        Path(f"{prefix}.index").write_bytes(index)
        Path(f"{prefix}{SHARD}").write_bytes(blob)
        w = one_outcome(lambda: _read(prefix))
        if w is not None:
            assert _same_tensors(w.state_dict, original)

    index_case()
    shard_case()


def test_mutated_release_archive(work):
    seed = make_tgz(work / "seed.tgz", slim_members())
    data = seed.read_bytes()
    original = _read(seed).state_dict
    path = work / "m.tgz"

    @settings(max_examples=examples(200))
    @given(mutations(data, [(0, 64), (len(data) - 64, len(data))]))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        w = one_outcome(lambda: _read(path))
        if w is not None:
            assert _same_tensors(w.state_dict, original)

    case()


# --- Keras .h5 -------------------------------------------------------------------------------------


def test_mutated_keras_h5(work):
    pytest.importorskip("h5py")
    data = keras_file(work, "keras2_weights.h5").read_bytes()
    path = work / "m.h5"

    @settings(max_examples=examples(400))
    @given(mutations(data, [(0, 4096), (len(data) - 4096, len(data))]))
    def case(blob: bytes) -> None:
        path.write_bytes(blob)
        w = one_outcome(lambda: _read(path))  # HDF5 has no checksums: a changed value may load, but finite
        if w is not None:
            _finite(w)

    case()


# --- images ----------------------------------------------------------------------------------------

IMAGE_SEEDS = ["burger.jpg", "segmentation_input_rotation0.jpg", "segmentation_golden_rotation0.png"]


@pytest.mark.parametrize("name", IMAGE_SEEDS)
def test_mutated_images(name):
    from mobilenets.data.transforms import EvalTransform

    data = shared_path("images", name).read_bytes()
    transform = EvalTransform(64, 0.875)

    @settings(max_examples=examples(600))
    @given(mutations(data, [(0, 1024)]))
    def case(blob: bytes) -> None:
        x = one_outcome(lambda: transform(blob))
        if x is not None:
            assert tuple(x.shape) == (3, 64, 64) and bool(torch.isfinite(x).all())
            assert float(x.min()) >= -1.0 - 1e-6 and float(x.max()) <= 1.0 + 1e-6

    case()


def test_seeds_are_real_files():
    """The suite mutates what users have: the seeds load cleanly before mutation."""
    for name in TFLITE_SEEDS:
        assert _read(shared_path("models", name)).num_classes == 1001
    assert _read(FIXTURES / CKPT).alpha == 0.0625
