"""SIGTERM while requests are in flight: they all complete, then ``mobilenets serve`` exits 0, no traceback."""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import shared_path

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")


def serving_children(pid: int) -> list[int]:
    """The processes ``pid`` started with multiprocessing's spawn (uvicorn's workers; not its resource tracker)."""
    from tests.test_serve_attack import children

    out = []
    for c in children(pid):
        try:
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                out.append(c)
        except OSError:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_finishes_in_flight_requests_and_exits_0(processes):
    """With ``--processes 2`` the signal goes to the supervisor, which stops both processes."""
    from mobilenets.runtime import read_artifact_info
    from tests.test_serve_attack import HOST, free_port, start_server

    weights = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    name = read_artifact_info(weights).name
    port = free_port()
    proc = start_server(weights, port, "--max-batch", "4", "--processes", str(processes))
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
        # wait until all 12 are admitted (12 x 8 images: work for a while); with 2 processes a
        # scrape sees one of them, which has about half
        admitted = 12 if processes == 1 else 5
        while time.monotonic() - t0 < 30:
            metrics = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
            if float(next(ln.split()[1] for ln in metrics.splitlines() if ln.startswith("mobilenets_in_flight "))) >= admitted:
                break
            time.sleep(0.01)
        workers = serving_children(proc.pid)
        assert len(workers) == (0 if processes == 1 else processes), workers
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
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()], "a server process outlived the supervisor"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{HOST}:{port}/v2/health/live", timeout=5)
    json.dumps(results)
