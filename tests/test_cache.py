"""The download cache, through the real code path but never the network: a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from mobilenets import create_model
from mobilenets.errors import WeightsError
from mobilenets.weights import cache, read_weights

from .conftest import KERAS, SLIM, closed_port_url, keras_file, logits, make_tgz, register, slim_members

NAME = "mobilenet_v1_test"


class LocalServer:
    """Serves ``files`` with HTTP Range support; ``cuts`` makes the next responses stop after that many bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.cuts: list[int] = []
        self.ranges: list[str | None] = []  # the Range header of every request
        self.honour_range = True
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.ranges.append(self.headers.get("Range"))
                data = server.files.get(self.path.lstrip("/"))
                if data is None:
                    self.send_error(404)
                    return
                rng = self.headers.get("Range")
                start = int(rng.split("=")[1].rstrip("-")) if rng and server.honour_range else 0
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                self.wfile.write(body[: server.cuts.pop(0)] if server.cuts else body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MOBILENETS_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


@pytest.fixture
def tgz_bytes(tmp_path) -> bytes:
    return make_tgz(tmp_path / "src.tgz", slim_members()).read_bytes()


def test_download_convert_and_reuse(server, home, monkeypatch, tgz_bytes):
    server.files["mobilenet_v1_test.tgz"] = tgz_bytes
    register(monkeypatch, [server.url("mobilenet_v1_test.tgz")])
    path = cache.fetch_official(NAME)
    assert path == home / f"{NAME}.safetensors"
    assert files_under(home) == ["downloads/SHA256SUMS", "downloads/mobilenet_v1_test.tgz", f"{NAME}.safetensors"]
    w = read_weights(path)
    assert w.source == str(path) and w.cfg.source == server.url("mobilenet_v1_test.tgz")
    assert w.cfg.sha256 == hashlib.sha256(tgz_bytes).hexdigest() and w.cfg.url == w.cfg.source
    assert (w.meta["format"], w.alpha, w.resolution, w.num_classes) == ("slim-ckpt", 0.0625, 64, 10)
    assert (w.cfg.crop_fraction, w.cfg.decode, w.cfg.tag) == (0.875, "tf", "imagenet")
    np.testing.assert_allclose(logits(w, SLIM["x"]), SLIM["logits_ema"], atol=1e-5)

    assert cache.fetch_official(NAME) == path  # reused: no second request
    assert len(server.ranges) == 1


def test_falls_back_to_the_next_url(server, home, monkeypatch, tmp_path):
    server.files["mobilenet_2_5_128_tf.h5"] = keras_file(tmp_path, "keras2_weights.h5").read_bytes()
    register(
        monkeypatch, [server.url("missing.tgz"), server.url("mobilenet_2_5_128_tf.h5")], alpha=0.25, resolution=128
    )
    w = read_weights(cache.fetch_official(NAME))
    assert (w.meta["format"], w.num_classes, w.resolution) == ("keras-h5", 10, 128)
    assert files_under(home) == ["downloads/SHA256SUMS", "downloads/mobilenet_2_5_128_tf.h5", f"{NAME}.safetensors"]


def test_create_model_imagenet_goes_through_the_cache(server, home, monkeypatch, tmp_path):
    server.files["k.h5"] = keras_file(tmp_path, "keras2_weights.h5").read_bytes()
    register(monkeypatch, [server.url("k.h5")], alpha=0.25, resolution=128, name="mobilenet_v1_0.25_128")
    model = create_model("mobilenet_v1_0.25_128", weights="imagenet")
    assert not model.training and model.pretrained_cfg.source == server.url("k.h5")
    x = torch.from_numpy(KERAS["pixels"].astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), KERAS["logits"], atol=1e-5)


def test_resumes_a_cut_download_within_one_call(server, home, monkeypatch, tgz_bytes):
    server.files["m.tgz"] = tgz_bytes
    server.cuts = [len(tgz_bytes) // 3, len(tgz_bytes) // 3]  # two responses stop early
    register(monkeypatch, [server.url("m.tgz")])
    w = read_weights(cache.fetch_official(NAME))
    third = len(tgz_bytes) // 3
    assert server.ranges == [None, f"bytes={third}-", f"bytes={2 * third}-"]
    assert w.cfg.sha256 == hashlib.sha256(tgz_bytes).hexdigest() and w.cfg.url == w.cfg.source


def test_resumes_across_calls(server, home, monkeypatch, tgz_bytes):
    server.files["m.tgz"] = tgz_bytes
    server.cuts = [1000]
    monkeypatch.setattr(cache, "RESUME_ATTEMPTS", 1)
    register(monkeypatch, [server.url("m.tgz")])
    with pytest.raises(WeightsError, match="run again to resume"):
        cache.fetch_official(NAME)
    assert files_under(home) == ["downloads/m.tgz.part"]  # only the declared partial file
    assert (home / "downloads" / "m.tgz.part").stat().st_size == 1000
    cache.fetch_official(NAME)
    assert server.ranges == [None, "bytes=1000-"]
    assert files_under(home) == ["downloads/SHA256SUMS", "downloads/m.tgz", f"{NAME}.safetensors"]


def test_server_without_range_support_restarts(server, home, monkeypatch, tgz_bytes):
    server.files["m.tgz"] = tgz_bytes
    server.cuts = [5000]
    server.honour_range = False
    register(monkeypatch, [server.url("m.tgz")])
    w = read_weights(cache.fetch_official(NAME))
    assert w.cfg.sha256 == hashlib.sha256(tgz_bytes).hexdigest() and w.cfg.url == w.cfg.source


def test_offline_names_urls_and_the_by_hand_path(home, monkeypatch):
    urls = [closed_port_url("a.tgz"), closed_port_url("b.h5")]
    register(monkeypatch, urls)
    with pytest.raises(WeightsError) as err:
        cache.fetch_official(NAME)
    msg = str(err.value)
    assert "\n" not in msg and all(u in msg for u in urls)
    assert str(home / "downloads" / "a.tgz") in msg and "by hand" in msg
    assert files_under(home) == []  # nothing half-written


def test_a_file_put_there_by_hand_is_used_offline(home, monkeypatch, tgz_bytes):
    url = closed_port_url("by_hand.tgz")
    register(monkeypatch, [url])
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / "by_hand.tgz").write_bytes(tgz_bytes)
    assert read_weights(cache.fetch_official(NAME)).cfg.source == url


def test_a_damaged_download_is_removed(server, home, monkeypatch, tgz_bytes):
    server.files["m.tgz"] = tgz_bytes[: len(tgz_bytes) // 2]  # complete as served, but a truncated archive
    register(monkeypatch, [server.url("m.tgz")])
    with pytest.raises(WeightsError, match="file unusable"):
        cache.fetch_official(NAME)
    assert files_under(home) == []


def test_weights_that_do_not_fit_the_entry(server, home, monkeypatch, tgz_bytes):
    server.files["m.tgz"] = tgz_bytes
    register(monkeypatch, [server.url("m.tgz")], alpha=0.5)
    with pytest.raises(WeightsError, match="alpha=0.0625, but mobilenet_v1_test is alpha=0.5"):
        cache.fetch_official(NAME)
    assert files_under(home) == []


def test_file_url(home, monkeypatch, tmp_path, tgz_bytes):
    src = tmp_path / "m.tgz"
    src.write_bytes(tgz_bytes)
    register(monkeypatch, [src.as_uri()])
    assert read_weights(cache.fetch_official(NAME)).cfg.source == src.as_uri()


def test_unknown_name():
    with pytest.raises(WeightsError, match="did you mean mobilenet_v1_1.0_224"):
        cache.fetch_official("mobilenet_v1_1.0_225")


def test_a_pinned_digest_refuses_other_bytes(home, monkeypatch, tgz_bytes):
    url = closed_port_url("m.tgz")
    register(monkeypatch, [url])
    by_hand = cache.download_path(url)
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(tgz_bytes)
    monkeypatch.setitem(cache.PINNED_SHA256, "m.tgz", "0" * 64)
    with pytest.raises(WeightsError, match="differs from the pinned"):
        cache.fetch_official(NAME)
    assert by_hand.exists() and not (home / f"{NAME}.safetensors").exists()  # the user's file is kept, not used
    monkeypatch.setitem(cache.PINNED_SHA256, "m.tgz", hashlib.sha256(tgz_bytes).hexdigest())
    assert cache.fetch_official(NAME).is_file()


def test_first_download_is_recorded_and_a_swapped_file_refused(home, monkeypatch, tgz_bytes, tmp_path):
    url = closed_port_url("m.tgz")
    register(monkeypatch, [url])
    by_hand = cache.download_path(url)
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(tgz_bytes)
    out = cache.fetch_official(NAME)
    assert cache.recorded_sha256()["m.tgz"] == hashlib.sha256(tgz_bytes).hexdigest()
    out.unlink()
    other = make_tgz(tmp_path / "o.tgz", {**slim_members(), "extra.txt": b"changed"}).read_bytes()
    by_hand.write_bytes(other)
    with pytest.raises(WeightsError, match="differs from the recorded"):
        cache.fetch_official(NAME)


def test_a_damaged_converted_file_is_converted_again(home, monkeypatch, tgz_bytes):
    url = closed_port_url("m.tgz")
    register(monkeypatch, [url])
    by_hand = cache.download_path(url)
    by_hand.parent.mkdir(parents=True)
    by_hand.write_bytes(tgz_bytes)
    out = cache.fetch_official(NAME)
    data = bytearray(out.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data: the digest no longer matches
    out.write_bytes(bytes(data))
    assert cache.fetch_official(NAME) == out
    read_weights(out)  # whole again
