"""Reference preprocessing against values TensorFlow itself computed (tests/fixtures/make_tf_golden.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mobilenets.data.transforms import EvalTransform, PillowEvalTransform, tf1_resize_bilinear, tf_central_crop_box

from .conftest import FIXTURES, shared_path

GOLDEN = np.load(FIXTURES / "tf1_preprocess_golden.npz")
RESIZE_KEYS = [k for k in GOLDEN.files if k.startswith("resize_")]
INCEPTION_KEYS = [k for k in GOLDEN.files if k.startswith("inception_")]


@pytest.mark.parametrize("key", RESIZE_KEYS)
def test_resize_bilinear_matches_tf1(key):
    _, name, hw = key.split("_")
    h, w = map(int, hw.split("x"))
    x = GOLDEN[f"input_{name}"].astype(np.float32) / np.float32(255)
    np.testing.assert_allclose(tf1_resize_bilinear(x, h, w), GOLDEN[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("key", INCEPTION_KEYS)
def test_inception_eval_pipeline_matches_tf1(key):
    _, name, res = key.split("_")
    out = EvalTransform(int(res))(Image.fromarray(GOLDEN[f"input_{name}"]))
    assert out.shape == (3, int(res), int(res)) and out.dtype.is_floating_point
    np.testing.assert_allclose(out.numpy().transpose(1, 2, 0), GOLDEN[key], atol=1e-5, rtol=0)


def test_central_crop_boxes_match_tf():
    starts = [tf_central_crop_box(int(n), int(n), 0.875)[0] for n in GOLDEN["crop_sizes"]]
    np.testing.assert_array_equal(starts, GOLDEN["crop_starts"])
    assert tf_central_crop_box(600, 512, 0.875) == (37, 32, 526, 448)
    assert tf_central_crop_box(10, 20, 1.0) == (0, 0, 10, 20)


def test_output_range_and_pillow_variant_is_close_but_not_equal():
    path = shared_path("images", "grace_hopper.bmp")
    ref, fast = EvalTransform(224)(path), PillowEvalTransform(224)(path)
    assert ref.min() >= -1 and ref.max() <= 1
    diff = (ref - fast).abs()
    assert 0 < diff.mean() < 0.05  # same picture, different resampling
