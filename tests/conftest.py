"""Shared fixtures: the real artifacts in ../shared/data, skipped with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MOBILENETS_SHARED", ROOT.parent / "shared" / "data"))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data; the test is skipped (with the path) when it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the project's ../shared/data is not beside this checkout)")
    return path


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs {SHARED} (the project's ../shared/data is not beside this checkout)")
    return SHARED


def random_model(alpha: float = 0.25, resolution: int = 96, num_classes: int = 10, seed: int = 0):
    """A small MobileNet with non-trivial BatchNorm statistics (so folding is really tested), labelled class0..."""
    import torch

    import mobilenets

    torch.manual_seed(seed)
    model = mobilenets.mobilenet_v1(alpha=alpha, resolution=resolution, num_classes=num_classes).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.normal_(0, 0.2)
    model.pretrained_cfg = model.pretrained_cfg.replace(labels=tuple(f"class{i}" for i in range(num_classes)),
                                                        label_offset=0)  # fmt: skip
    return model


# --- helpers shared by several test modules (no test module imports another) ------------------

CKPT = "slim_tiny.ckpt"
SHARD = ".data-00000-of-00001"


def _npz(name: str):
    import numpy as np

    return np.load(FIXTURES / name)


SLIM = _npz("slim_tiny_expected.npz")
KERAS = _npz("keras_expected.npz")


def logits(w, x_nhwc, **kwargs):
    """Logits of the MobileNet v1 built from loaded weights ``w`` on an NHWC batch."""
    import torch

    from mobilenets.weights import build_model

    model = build_model(w, **kwargs).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)).numpy()


def keras_file(tmp_path: Path, name: str) -> Path:
    """One of the xz-compressed Keras fixtures, decompressed into ``tmp_path``."""
    import lzma
    import shutil

    out = tmp_path / name
    with lzma.open(FIXTURES / f"{name}.xz") as src, open(out, "wb") as f:
        shutil.copyfileobj(src, f)
    return out


def flip_byte(path: Path, offset: int) -> None:
    """Corrupt one byte of ``path`` in place (damaged-file tests)."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x55
    path.write_bytes(bytes(data))


def make_tgz(dest: Path, members: dict, mode: str = "w:gz") -> Path:
    """A tar archive of ``{name: bytes or Path}``."""
    import io
    import tarfile

    with tarfile.open(dest, mode) as tar:
        for name, data in members.items():
            data = data.read_bytes() if isinstance(data, Path) else data
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return dest


def slim_members(stem: str = "mobilenet_v1_0.0625_64") -> dict:
    """The members of a release .tgz around the tiny TF-Slim fixture checkpoint."""
    return {f"{stem}.ckpt.index": FIXTURES / f"{CKPT}.index", f"{stem}.ckpt{SHARD}": FIXTURES / f"{CKPT}{SHARD}",
            f"{stem}_info.txt": b"Model: test\n", f"{stem}.ckpt.meta": b"graph"}  # fmt: skip


def closed_port_url(name: str = "mobilenet_v1_test.tgz") -> str:
    """A URL on 127.0.0.1 where nothing listens: connection refused, as when offline."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def register(monkeypatch, urls, alpha: float = 0.0625, resolution: int = 64, name: str = "mobilenet_v1_test") -> None:
    """Put a catalog entry ``name`` with ``urls`` into the registry for one test."""
    from mobilenets.models.registry import CATALOG, WeightsEntry, default_cfg

    cfg = default_cfg(alpha, resolution).replace(url=urls[0], tag="imagenet")
    entry = WeightsEntry(name=name, arch=name, tag="imagenet", urls=tuple(urls), cfg=cfg)
    monkeypatch.setitem(CATALOG, name, entry)


def run(*args: str):
    """``python -m mobilenets ARGS`` in a subprocess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "mobilenets", *args], capture_output=True, text=True, timeout=300,
                          check=False)  # fmt: skip


def assert_one_line_error(proc, needle: str) -> None:
    """Exit code 2, exactly one line on stderr, no traceback, ``needle`` in it."""
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]
