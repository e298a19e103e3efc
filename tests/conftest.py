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
