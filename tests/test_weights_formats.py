"""Weight readers: TF-Slim checkpoints, Keras .h5 and release archives reproduce their source's outputs.

Fixtures are written by TensorFlow / Keras themselves (tests/fixtures/make_slim_ckpt.py,
make_keras_h5.py) together with the logits TF computed, so a wrong layout, name or
padding makes the comparison fail.
"""

from __future__ import annotations

import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets.errors import WeightsError
from mobilenets.weights import archive, build_model, read_weights
from mobilenets.weights.keras_h5 import read_keras_h5
from mobilenets.weights.slim_ckpt import crc32c, read_slim_checkpoint

from .conftest import (
    CKPT,
    FIXTURES,
    KERAS,
    SHARD,
    SLIM,
    flip_byte,
    keras_file,
    logits,
    make_tgz,
    shared_path,
    slim_members,
)

KERAS_FILES = ("keras2_weights.h5", "keras3_model.h5", "keras3.weights.h5")


def copy_ckpt(dest: Path, stem: str = "model.ckpt") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".index", SHARD):
        shutil.copy(FIXTURES / f"{CKPT}{suffix}", dest / f"{stem}{suffix}")
    return dest / stem


# --- CRC32C --------------------------------------------------------------------------------


def _crc32c_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


def test_crc32c_matches_the_definition():
    assert crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert crc32c(b"") == 0
    rng = np.random.default_rng(0)
    for n in (1, 63, 64, 65, 200, 4097, 70_001):  # lane splits, tree joins and tails
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32c(data) == _crc32c_bitwise(data), n


# --- TF-Slim checkpoints ---------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".index", SHARD])
def test_slim_checkpoint_reproduces_tensorflow(suffix):
    w = read_weights(FIXTURES / f"{CKPT}{suffix}")
    assert (w.format, w.alpha, w.num_classes, w.meta["ema"]) == ("slim-ckpt", 0.0625, 10, True)
    np.testing.assert_allclose(logits(w, SLIM["x"]), SLIM["logits_ema"], atol=1e-5)


def test_slim_checkpoint_ema_choice_and_layouts():
    raw = read_slim_checkpoint(FIXTURES / CKPT, use_ema=False)
    assert raw.meta == {"ema": False, "ema_tensors": 0}
    np.testing.assert_allclose(logits(raw, SLIM["x"]), SLIM["logits_raw"], atol=1e-5)
    assert np.abs(SLIM["logits_raw"] - SLIM["logits_ema"]).max() > 0.1  # the two really differ

    state = read_slim_checkpoint(FIXTURES / CKPT).state_dict
    # HWIO -> OIHW, and the EMA shadow rather than the raw variable
    np.testing.assert_array_equal(state["features.Conv2d_0.conv.weight"].numpy(),
                                  SLIM["conv0_weights_ema"].transpose(3, 2, 0, 1))  # fmt: skip
    assert state["features.Conv2d_1_depthwise.conv.weight"].shape == (8, 1, 3, 3)
    assert not torch.equal(state["features.Conv2d_0.bn.weight"], torch.ones(8))  # gamma in the file
    assert torch.equal(state["features.Conv2d_5_pointwise.bn.weight"], torch.ones(16))  # slim's scale=False


@pytest.mark.parametrize(
    ("damage", "needle"),
    [
        (lambda p: p.with_name(p.name + SHARD).write_bytes(p.with_name(p.name + SHARD).read_bytes()[:50_000]),
         "truncated checkpoint data"),
        (lambda p: flip_byte(p.with_name(p.name + SHARD), 40_000), "fails its CRC32C check"),
        (lambda p: p.with_name(p.name + ".index").write_bytes(p.with_name(p.name + ".index").read_bytes()[:-20]),
         "not a TensorFlow checkpoint index"),
        (lambda p: flip_byte(p.with_name(p.name + ".index"), 100), "corrupt checkpoint index"),
        (lambda p: p.with_name(p.name + SHARD).unlink(), "cannot read checkpoint data"),
        (lambda p: p.with_name(p.name + ".index").unlink(), "no such checkpoint"),
    ],
    ids=["data-truncated", "data-bitflip", "index-truncated", "index-bitflip", "no-data", "no-index"],
)  # fmt: skip
def test_slim_checkpoint_damage_is_one_clear_error(tmp_path, damage, needle):
    prefix = copy_ckpt(tmp_path)
    damage(prefix)
    with pytest.raises(WeightsError, match=needle) as err:
        read_slim_checkpoint(prefix)
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_slim_backbone_checkpoint_has_no_head():
    w = read_weights(FIXTURES / "slim_backbone.ckpt")
    assert (w.alpha, w.num_classes, w.meta["ema"]) == (0.0625, 0, False)
    assert not any(k.startswith("classifier.") for k in w.state_dict)
    feats = build_model(w).eval()(torch.zeros(1, 3, 64, 64))
    assert feats.shape == (1, 64)


@pytest.mark.parametrize(("stem", "needle"), [("slim_v2", "not a TF-Slim MobileNet v1 checkpoint"),
                                               ("slim_partial", "variables missing from the checkpoint")])  # fmt: skip
def test_slim_checkpoint_of_something_else(stem, needle):
    with pytest.raises(WeightsError, match=needle):
        read_weights(FIXTURES / f"{stem}.ckpt")


def test_slim_data_shard_without_index(tmp_path):
    shutil.copy(FIXTURES / f"{CKPT}{SHARD}", tmp_path / f"x.ckpt{SHARD}")
    with pytest.raises(WeightsError, match="no such checkpoint"):
        read_weights(tmp_path / f"x.ckpt{SHARD}")


# --- Keras .h5 -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", KERAS_FILES)
def test_keras_h5_reproduces_keras(tmp_path, name):
    w = read_weights(keras_file(tmp_path, name))
    assert (w.format, w.alpha, w.num_classes) == ("keras-h5", 0.25, 10)
    assert w.resolution == (64 if name == "keras3_model.h5" else None)  # only a full-model save records it
    x = KERAS["pixels"].astype(np.float32) / 127.5 - 1
    np.testing.assert_allclose(logits(w, x), KERAS["logits"], atol=1e-5)
    # the comparison is sharp: PyTorch's symmetric padding instead of TF 'SAME' misses by far more
    assert np.abs(logits(w, x, padding="symmetric") - KERAS["logits"]).max() > 1e-3


def test_keras_needs_h5py(tmp_path, monkeypatch):
    path = keras_file(tmp_path, "keras2_weights.h5")
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py -> ImportError
    with pytest.raises(WeightsError, match=r"pip install 'mobilenets\[keras\]'"):
        read_keras_h5(path)


def test_keras_h5_of_something_else(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = np.zeros(3)
    with pytest.raises(WeightsError, match="no Keras weights"):
        read_weights(path)
    trunc = tmp_path / "trunc.h5"
    trunc.write_bytes(keras_file(tmp_path, "keras2_weights.h5").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="unreadable Keras .h5"):
        read_weights(trunc)


def test_keras_h5_damaged_name_attribute_costs_no_memory(tmp_path):
    """One damaged variable-length string (``layer_names``) made HDF5 allocate ~4 GB before it failed.

    Found by the long fuzz profile: 4 bytes of the first name's global-heap address set to
    0x7fffffff. The names now come from the groups' links; the file still loads.
    """
    import subprocess

    data = bytearray(keras_file(tmp_path, "keras2_weights.h5").read_bytes())
    assert data[1390:1406].hex() == "000000000000350000000c0000003809", "the fixture changed: find the offset again"
    data[1402:1406] = b"\xff\xff\xff\x7f"
    path = tmp_path / "damaged.h5"
    path.write_bytes(bytes(data))
    # VmHWM: this process's own peak (ru_maxrss would include the RSS of the pytest process it forked from)
    code = ("import re, sys\nfrom pathlib import Path\nfrom mobilenets.weights import read_weights\n"
            "w = read_weights(sys.argv[1])\n"
            "print(w.alpha, re.search(r'VmHWM:\\s*(\\d+)', Path('/proc/self/status').read_text()).group(1))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(path)], check=False, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    alpha, peak_kb = out.stdout.split()
    assert float(alpha) == 0.25 and int(peak_kb) < 1_500_000, out.stdout  # the damaged read peaked at 4.2 GB


def test_keras_h5_dataset_larger_than_the_file(tmp_path):
    """A header can claim gigabytes for a dataset whose chunks were never written (HDF5 would fill them)."""
    import h5py

    path = keras_file(tmp_path, "keras2_weights.h5")
    with h5py.File(path, "r+") as f:
        del f["conv1/conv1/kernel:0"]
        f["conv1/conv1"].create_dataset("kernel:0", shape=(3, 3, 3, 10**8), dtype="f4", chunks=(3, 3, 3, 1024))
    assert path.stat().st_size < 2_000_000
    with pytest.raises(WeightsError, match=r"unreadable Keras .h5 file .*claims 10800000000 bytes"):
        read_weights(path)


def test_keras_h5_follows_no_external_link(tmp_path):
    """A link to another file is not followed: what that file holds (here a dataset too big to read) plays no part."""
    import h5py

    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_group("g").create_dataset("kernel:0", shape=(10**8,), dtype="f4", chunks=(1024,))
    path = keras_file(tmp_path, "keras2_weights.h5")
    with h5py.File(path, "r+") as f:
        f["elsewhere"] = h5py.ExternalLink(str(other), "/g")
    assert read_weights(path).alpha == 0.25


def test_keras_h5_compressed_repack_loads(tmp_path):
    """A repack with every dataset gzip-compressed (as h5repack makes) gives the same tensors."""
    import h5py

    src = keras_file(tmp_path, "keras2_weights.h5")
    packed = tmp_path / "packed.h5"
    with h5py.File(src, "r") as a, h5py.File(packed, "w") as b:
        for k, v in a.attrs.items():
            b.attrs[k] = v

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Dataset):
                b.create_dataset(name, data=obj[()], compression="gzip", compression_opts=9)
            else:
                b.require_group(name)
            for k, v in obj.attrs.items():
                b[name].attrs[k] = v

        a.visititems(copy)
    want, got = read_weights(src), read_weights(packed)
    assert got.state_dict.keys() == want.state_dict.keys()
    assert all(torch.equal(got.state_dict[k], want.state_dict[k]) for k in want.state_dict)


# --- release archives ---------------------------------------------------------------------


def test_archive_prefers_the_checkpoint(tmp_path):
    tgz = make_tgz(tmp_path / "mobilenet_v1_0.0625_64.tgz", {**slim_members(), "mobilenet_v1_0.0625_64.tflite": b"x"})
    w = read_weights(tgz)
    assert (w.format, w.resolution, w.num_classes) == ("slim-ckpt", 64, 10)
    assert w.source == f"{tgz}:mobilenet_v1_0.0625_64.ckpt.index"
    np.testing.assert_allclose(logits(w, SLIM["x"]), SLIM["logits_ema"], atol=1e-5)


def test_archive_with_only_a_tflite(tmp_path):
    tflite = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    tgz = make_tgz(tmp_path / "a.tar", {"dir/mobilenet_v1_0.25_224.tflite": tflite, "dir/x_info.txt": b""}, "w")
    w = read_weights(tgz)
    assert (w.format, w.alpha, w.resolution, w.num_classes) == ("tflite-float", 0.25, 224, 1001)


def _unsafe(tar: tarfile.TarFile, kind: str) -> None:
    info = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}.get(kind, "evil"))
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "../../etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "../outside"
    elif kind == "device":
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    data = b"pwned" if info.type == tarfile.REGTYPE else b""
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_archive_refuses_unsafe_members(tmp_path, kind):
    tgz = tmp_path / "work" / "evil.tgz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in slim_members().items():
            info = tarfile.TarInfo(name)
            payload = data.read_bytes() if isinstance(data, Path) else data
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        _unsafe(tar, kind)
    with pytest.raises(WeightsError, match="unsafe archive member"):
        read_weights(tgz)
    assert not (tmp_path / "evil.txt").exists() and sorted(p.name for p in tgz.parent.iterdir()) == ["evil.tgz"]


def test_archive_limits(tmp_path, monkeypatch):
    tgz = make_tgz(tmp_path / "a.tgz", slim_members())
    monkeypatch.setattr(archive, "MAX_BYTES", 100_000)
    with pytest.raises(WeightsError, match="archive is too large"):
        read_weights(tgz)
    monkeypatch.setattr(archive, "MAX_BYTES", 1 << 30)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 3)
    with pytest.raises(WeightsError, match="archive is too large"):
        read_weights(tgz)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "empty-archive", "bad-member"])
def test_archive_damage_is_one_clear_error(tmp_path, kind, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    tgz = make_tgz(tmp_path / "a.tgz", slim_members())
    if kind == "truncated":
        tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    elif kind == "garbage":
        tgz.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    elif kind == "empty-archive":
        make_tgz(tgz, {"README": b"nothing here"})
    else:  # a damaged checkpoint inside a sound archive: the error names the member, not a temp copy
        members = slim_members()
        members["mobilenet_v1_0.0625_64.ckpt.index"] = b"\0" * 100
        make_tgz(tgz, members)
    needle = {"truncated": "corrupt, truncated", "garbage": "corrupt, truncated", "empty-archive": "holds no",
              "bad-member": f"{tgz}:mobilenet_v1_0.0625_64.ckpt.index: not a TensorFlow checkpoint"}[kind]  # fmt: skip
    with pytest.raises(WeightsError, match=needle.replace(".", r"\.")) as err:
        read_weights(tgz)
    assert "\n" not in str(err.value)
    assert list(scratch.iterdir()) == []  # the temporary extraction is always removed
