"""SIGTERM while requests are in flight: they all complete, then ``mobilenets serve`` exits 0, no traceback."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time

import pytest

from tests.conftest import shared_path

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")


@pytest.mark.slow
def test_sigterm_finishes_in_flight_requests_and_exits_0():
    from mobilenets.runtime import read_artifact_info
    from tests.test_serve_attack import HOST, free_port, start_server

    weights = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    name = read_artifact_info(weights).name
    port = free_port()
    proc = start_server(weights, port, "--max-batch", "4")
    images = [base64.b64encode(shared_path("images", f).read_bytes()).decode()
              for f in ("burger.jpg", "grace_hopper.bmp", "cat.bmp", "parrot.jpg")] * 2  # fmt: skip
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images}],
           "outputs": [{"name": "probabilities"}]}  # fmt: skip
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            r = httpx.post(f"http://{HOST}:{port}/v2/models/{name}/infer", json=doc, timeout=60)
            status = r.status_code if r.status_code != 200 or len(r.json()["outputs"][0]["data"]) == 8008 else -1
        except httpx.HTTPError as e:
            status = repr(e)
        with lock:
            results.append((status, time.monotonic()))

    try:
        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 30:  # wait until all 12 are admitted (12 x 8 images: work for a while)
            metrics = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
            if float(next(ln.split()[1] for ln in metrics.splitlines() if ln.startswith("mobilenets_in_flight "))) >= 12:
                break
            time.sleep(0.01)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(60)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = proc.stderr.read().decode()
    assert [s for s, _ in results] == [200] * 12, (results, err[-2000:])
    assert any(t > signalled for _, t in results), "no request was still in flight at SIGTERM"
    assert code == 0, (code, err[-2000:])
    assert "Traceback" not in err, err[-3000:]
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{HOST}:{port}/v2/health/live", timeout=5)
    json.dumps(results)
