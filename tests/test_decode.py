"""JPEG decoding bit-exact with tf.io.decode_jpeg, against TF's own output (tests/fixtures/make_tf_decode_golden.py)."""

from __future__ import annotations

import base64
import hashlib
import io
import json

import numpy as np
import pytest
import simplejpeg
from PIL import Image

from mobilenets.data.images import load_image
from mobilenets.errors import ImageError

from .conftest import FIXTURES, SHARED, shared_path

GOLDEN = json.loads((FIXTURES / "tf_decode_golden.json").read_text())
SYNTHETIC = {name: {**rec, "data": base64.b64decode(rec["jpeg_b64"])} for name, rec in GOLDEN["synthetic"].items()}
DECODABLE = [name for name, rec in SYNTHETIC.items() if "sha256" in rec]
REFUSED = [name for name, rec in SYNTHETIC.items() if "error" in rec]


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.uint8)


def sha256(img: Image.Image) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels(img)).tobytes()).hexdigest()


@pytest.mark.parametrize("set_name", list(GOLDEN["sets"]))
def test_shared_jpegs_match_tf_bit_for_bit(set_name):
    entry = GOLDEN["sets"][set_name]
    shared_path(*entry["folder"].split("/"))  # skips when ../shared is absent
    wrong = []
    for rel, want in entry["files"].items():
        img = load_image(SHARED / rel)
        if [img.height, img.width, 3] != want["shape"] or sha256(img) != want["sha256"]:
            wrong.append(rel)
    assert not wrong, f"{len(wrong)}/{len(entry['files'])} differ from TF {GOLDEN['tensorflow']}: {wrong[:5]}"


def test_pixel_rows_match_tf():
    for rel, rows in GOLDEN["rows"].items():
        arr = pixels(load_image(shared_path(*rel.split("/"))))
        for r, want in rows.items():
            np.testing.assert_array_equal(arr[int(r), : len(want)], np.array(want), err_msg=f"{rel} row {r}")


def test_pillow_decode_differs_from_tf():
    """Proves the hashes can fail: the accurate-DCT decode is off on real photos."""
    path = shared_path("images", "parrot.jpg")
    tf_px, pil_px = pixels(load_image(path)), pixels(load_image(path, decode="pillow"))
    assert sha256(load_image(path, decode="pillow")) != GOLDEN["sets"]["images"]["files"]["images/parrot.jpg"]["sha256"]
    assert 0 < np.abs(tf_px.astype(int) - pil_px).max() <= 32
    assert np.array_equal(pil_px, pixels(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("name", DECODABLE)
def test_synthetic_jpegs_match_tf(tmp_path, name):
    rec = SYNTHETIC[name]
    path = tmp_path / f"{name}.jpg"
    path.write_bytes(rec["data"])
    from_path, from_bytes = load_image(path), load_image(rec["data"])
    assert [from_path.height, from_path.width, 3] == rec["shape"]  # EXIF orientation is not applied
    assert sha256(from_path) == rec["sha256"]
    assert np.array_equal(pixels(from_path), pixels(from_bytes))


@pytest.mark.parametrize("name", REFUSED)
def test_jpegs_tf_refuses_are_refused(name):
    with pytest.raises(ImageError, match=r"^upload\.jpg: cannot decode image \(") as e:
        load_image(SYNTHETIC[name]["data"], name="upload.jpg")
    assert "\n" not in str(e.value)


def test_grayscale_is_replicated(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (17, 33), dtype=np.uint8)
    path = tmp_path / "gray.jpg"
    Image.fromarray(gray, "L").save(path, quality=90)
    out = pixels(load_image(path))
    assert out.shape == (17, 33, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    want = simplejpeg.decode_jpeg(path.read_bytes(), colorspace="GRAY", fastdct=True)[..., 0]
    assert np.array_equal(out[..., 0], want)


def test_cmyk_uses_tf_conversion_not_pillows():
    data = SYNTHETIC["cmyk_adobe_33x17"]["data"]
    tf_px, pil_px = pixels(load_image(data)), pixels(load_image(data, decode="pillow"))
    assert tf_px.shape == pil_px.shape == (17, 33, 3)
    assert sha256(load_image(data, decode="pillow")) != SYNTHETIC["cmyk_adobe_33x17"]["sha256"]


def test_bytes_equal_path_on_a_real_photo():
    path = shared_path("images", "cats_and_dogs.jpg")  # progressive
    assert np.array_equal(pixels(load_image(path)), pixels(load_image(path.read_bytes())))
    assert np.array_equal(
        pixels(load_image(path, decode="pillow")), pixels(load_image(path.read_bytes(), decode="pillow"))
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "is empty"),
        (b"hello, not a jpeg", "not an image file"),
        (b"\xff\xd8\xff\xe0 not really a jpeg", "cannot decode image"),
        (SYNTHETIC["rgb_420_33x17"]["data"][:200], "cannot decode image"),
        (SYNTHETIC["rgb_420_33x17"]["data"][:-30], "truncated JPEG data"),
    ],
)
@pytest.mark.parametrize("decode", ["tf", "pillow"])
def test_bad_bytes_give_one_line_image_error(data, needle, decode):
    if decode == "pillow" and needle == "truncated JPEG data":
        needle = "cannot decode image"
    with pytest.raises(ImageError, match=f"^image bytes: .*{needle}") as e:
        load_image(data, decode=decode)
    assert "\n" not in str(e.value)


def test_too_small_jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (7, 40)).save(buf, "JPEG")
    with pytest.raises(ImageError, match="^tiny: image is 7x40; need at least 8x8"):
        load_image(buf.getvalue(), name="tiny")


def test_decompression_bomb_limit(monkeypatch):
    data = SYNTHETIC["rgb_420_33x17"]["data"]  # 561 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200)
    with pytest.raises(ImageError, match="exceeds limit of 400 pixels, could be decompression bomb"):
        load_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.warns(Image.DecompressionBombWarning):
        load_image(data)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    load_image(data)


def test_unknown_decoder():
    with pytest.raises(ValueError, match="decode must be one of"):
        load_image(b"\xff\xd8\xff", decode="opencv")  # type: ignore[arg-type]
