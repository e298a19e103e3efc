"""``mobilenets serve`` as processes: SIGTERM while requests are in flight (they all complete, exit 0,
no traceback), and ``--processes 2`` answering ``/metrics`` for both processes."""

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
    # 12 requests of 32 images each, encoded once: each client only sends, so all 12 are admitted
    # together, and the server has seconds of work left when the signal comes
    images = [base64.b64encode(shared_path("images", f).read_bytes()).decode()
              for f in ("burger.jpg", "cats_and_dogs.jpg", "face.jpg", "multi_objects.jpg")] * 8  # fmt: skip
    body = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": images}],
                       "outputs": [{"name": "probabilities"}]}).encode()  # fmt: skip
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            r = httpx.post(f"http://{HOST}:{port}/v2/models/{name}/infer", content=body,
                           headers={"Content-Type": "application/json"}, timeout=120)  # fmt: skip
            whole = r.status_code != 200 or len(r.json()["outputs"][0]["data"]) == len(images) * 1001
            status = r.status_code if whole else -1
        except httpx.HTTPError as e:
            status = repr(e)
        with lock:
            results.append((status, time.monotonic()))

    try:
        threads = [threading.Thread(target=client) for _ in range(12)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        # wait until all 12 are admitted; with 2 processes a scrape sees one of them, which has about half
        admitted = 12 if processes == 1 else 5
        seen = 0.0
        while seen < admitted and time.monotonic() - t0 < 60:
            metrics = httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text
            seen = float(next(ln.split()[1] for ln in metrics.splitlines() if ln.startswith("mobilenets_in_flight ")))
            time.sleep(0.01)
        assert seen >= admitted, f"only {seen} of {admitted} requests were ever in flight together"
        workers = serving_children(proc.pid)
        assert len(workers) == (0 if processes == 1 else processes), workers
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(120)
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


def classify_count(metrics: str) -> float:
    line = 'mobilenets_requests_total{route="/v1/classify",method="POST",status="200"}'
    return sum(float(ln.split()[-1]) for ln in metrics.splitlines() if ln.startswith(line))


@pytest.mark.slow
def test_processes_share_one_metrics_view():
    """Every scrape, whichever process answers it, counts the requests of both."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.test_serve_attack import HOST, free_port, start_server

    weights = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    port = free_port()
    proc = start_server(weights, port, "--processes", "2")
    try:
        workers = serving_children(proc.pid)
        env = Path(f"/proc/{workers[0]}/environ").read_bytes().split(b"\0")
        settings = json.loads(next(e for e in env if e.startswith(b"MOBILENETS_SERVE_ARGS=")).split(b"=", 1)[1])
        shared = Path(settings["metrics_dir"])
        t0 = time.monotonic()
        while len(list(shared.glob("*.json"))) < 2 and time.monotonic() - t0 < 60:  # both started
            time.sleep(0.1)
        image = shared_path("images", "burger.jpg").read_bytes()

        def post(_: int) -> int:  # a new connection each: the processes take turns accepting
            return httpx.post(f"http://{HOST}:{port}/v1/classify", content=image, timeout=60).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(post, range(40))) == [200] * 40
        time.sleep(1.5)  # each process writes its numbers every second
        scrapes = [classify_count(httpx.get(f"http://{HOST}:{port}/metrics", timeout=10).text) for _ in range(6)]
        per_process = [classify_count(proc_metrics(f)) for f in sorted(shared.glob("*.json"))]
        assert len(per_process) == 2 and min(per_process) > 0 and sum(per_process) == 40, per_process
        assert scrapes == [40] * 6, scrapes
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not shared.exists(), "the metrics directory outlived the server"


def proc_metrics(path: Path) -> str:
    """One process's numbers (its file in the shared directory) in the exposition format."""
    from mobilenets.serve.metrics import ServerMetrics

    return ServerMetrics(lambda: 0, lambda: 0, 8).render_sum([json.loads(path.read_text())])
