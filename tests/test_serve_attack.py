"""2,000 hostile requests against ``mobilenets serve``: 4xx only, still ready, memory bounded.

One bounded run on loopback (127.0.0.1): random bytes, truncated images, 50 MB bodies
(declared and chunked), wrong content types, malformed and mistyped v2 JSON, wrong
shapes, unknown models, a decompression bomb, slow clients that trickle their body; every
20th request is a correct one and must succeed. The server is the real CLI in its own
process, so its peak RSS (``VmHWM``) is its own. `run_attack` is also what
``benchmarks/serve_load.py`` reports (unless ``--no-attack``), and the benchmark starts and
watches its servers with the process helpers here.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_path

pytest.importorskip("fastapi")

HOST = "127.0.0.1"
MB = 1 << 20
HTTP_LEVEL = {"bad_content_length"}  # refused by uvicorn's HTTP parser before the app: a plain-text 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_server(weights: Path, port: int, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilenets", "serve", "--weights", str(weights), "--port", str(port),
           "--host", HOST, "--no-access-log", *extra]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 90:
        if proc.poll() is not None:
            raise RuntimeError(proc.stderr.read().decode()[-2000:])
        if ready(port):
            return proc
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def ready(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=2) as s:
            s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (``serve --processes N``: the supervisor's)."""
    out = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
        except (OSError, ValueError):
            pass
    return out


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory of a server: the sum of each of its processes' peaks."""
    kb = 0
    for p in (pid, *children(pid)):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                kb += int(line.split()[1])
    return kb / 1024 if kb else float("nan")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --- a raw HTTP client that can misbehave ----------------------------------------------------------


async def exchange(port: int, head: bytes, chunks: list[bytes] | None = None, delay: float = 0.0,
                   timeout: float = 30.0) -> tuple[int, bytes]:  # fmt: skip
    """Send ``head`` then ``chunks`` (``delay`` s apart) while reading the answer; (status, body) or (0, b"")."""
    reader, writer = await asyncio.open_connection(HOST, port)

    async def sender() -> None:
        try:
            writer.write(head)
            await writer.drain()
            for c in chunks or ():
                if delay:
                    await asyncio.sleep(delay)
                writer.write(c)
                await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server answered and closed: fine, the answer is what counts

    async def answer() -> tuple[int, bytes]:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next((int(v) for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "content-length"), 0)
        return status, await reader.readexactly(length)

    send = asyncio.create_task(sender())
    try:
        return await asyncio.wait_for(answer(), timeout)
    except (asyncio.IncompleteReadError, ConnectionError, OSError, asyncio.TimeoutError, asyncio.LimitOverrunError):
        return 0, b""
    finally:
        send.cancel()
        writer.close()


def head(method: str, path: str, ctype: str | None, length: int | None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    if ctype:
        lines.append(f"Content-Type: {ctype}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    else:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def chunked(data: bytes, size: int = 256 * 1024) -> list[bytes]:
    out = [f"{len(data[i:i + size]):x}\r\n".encode() + data[i : i + size] + b"\r\n" for i in range(0, len(data), size)]
    return out + [b"0\r\n\r\n"]


def hostile_cases(name: str, images: dict[str, bytes], rng: random.Random) -> list[tuple[str, dict]]:
    """(kind, request) pairs: each request is a dict for `exchange`, expected to get a 4xx."""
    infer = f"/v2/models/{name}/infer"
    jpeg, png = images["jpeg"], images["png"]

    def post(path, ctype, body, **kw):
        return {"head": head("POST", path, ctype, len(body)), "chunks": [body], **kw}

    def v2(doc):
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return post(infer, "application/json", body)

    def fp32(shape, data=None, datatype="FP32", name_="input"):
        ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
        n = int(np.prod(shape)) if ok else 3
        return {"inputs": [{"name": name_, "datatype": datatype, "shape": shape,
                            "data": data if data is not None else [0.0] * min(n, 5000)}]}  # fmt: skip

    makers = {
        "random_bytes": lambda: post("/v1/classify", "image/jpeg", rng.randbytes(rng.randint(1, 200_000))),
        "random_bytes_octet": lambda: post("/v1/classify", "application/octet-stream", rng.randbytes(rng.randint(1, 5000))),
        "truncated_jpeg": lambda: post("/v1/classify", "image/jpeg", jpeg[: rng.randint(1, len(jpeg) - 1)]),
        "truncated_png": lambda: post("/v1/classify", "image/png", png[: rng.randint(8, len(png) - 1)]),
        "corrupt_jpeg": lambda: post("/v1/classify", "image/jpeg",
                                     jpeg[:200] + rng.randbytes(2000) + jpeg[2200:2300]),
        "empty_body": lambda: post("/v1/classify", "image/jpeg", b""),
        "bytes_truncated": lambda: v2({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                                   "data": [base64.b64encode(jpeg[:3000]).decode()]}]}),
        "wrong_ctype": lambda: post("/v1/classify", rng.choice(["text/plain", "application/json", "text/html",
                                                                 "application/x-www-form-urlencoded"]), jpeg[:100]),
        "wrong_ctype_v2": lambda: post(infer, rng.choice(["text/plain", "image/png", "multipart/form-data"]), b"{}"),
        "bad_multipart": lambda: post("/v1/classify", "multipart/form-data; boundary=xyz",
                                      b"--xyz\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n" + rng.randbytes(300)),
        "multipart_no_file": lambda: post("/v1/classify", "multipart/form-data; boundary=b",
                                          b'--b\r\nContent-Disposition: form-data; name="a"\r\n\r\nhello\r\n--b--\r\n'),
        "malformed_json": lambda: v2(rng.choice([b"{", b"[1,2", b"null", b'"x"', b"{}", b'{"inputs": {}}',
                                                 b"\xff\xfe", b"[" * 5000 + b"]" * 5000, b'{"inputs": [1]}'])),
        "mistyped_json": lambda: v2(rng.choice([
            fp32([1, 3, 224, 224], ["a"] * 10), fp32([1, 3, 224, 224], datatype="INT64"),
            fp32([1, 3, 224, 224], datatype="FP128"), fp32("1,3,224,224"), fp32([1.5, 3]),
            {"inputs": [{"name": 5, "datatype": "FP32", "shape": [1], "data": [1]}]},
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": {"a": 1}}]},
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [12]}]},
            {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["@@not-base64@@"]}]},
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": [None]}]},
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}], "outputs": "all"},
            {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}], "id": 7},
        ])),
        "wrong_shape": lambda: v2(rng.choice([fp32([1, 3, 32, 32]), fp32([3, 224, 224]), fp32([1, 224, 224, 3]),
                                              fp32([0, 3, 224, 224]), fp32([-1, 3, 224, 224]), fp32([1 << 31, 1 << 31]),
                                              fp32([1, 3, 224, 224], [0.0] * 7)])),
        "nan_input": lambda: post(infer, "application/json",
                                  b'{"inputs":[{"name":"input","datatype":"FP32","shape":[1,3,224,224],"data":['
                                  + b",".join([b"NaN"] * (3 * 224 * 224)) + b"]}]}"),
        "bad_binary": lambda: {"head": head("POST", infer, "application/octet-stream", 40,
                                            f"Inference-Header-Content-Length: {rng.choice(['x', '-5', '999', '20'])}\r\n"),
                               "chunks": [b'{"inputs":[]}'.ljust(40, b" ")]},
        "unknown_model": lambda: v2(fp32([1, 3, 224, 224])) | {
            "head": head("POST", f"/v2/models/{rng.choice(['x', '../etc', 'a' * 300, '%00'])}/infer",
                         "application/json", len(json.dumps(fp32([1, 3, 224, 224])).encode()))},
        "unknown_model_get": lambda: {"head": head("GET", rng.choice(["/v2/models/nope", "/v2/models/nope/ready",
                                                                      f"/v2/models/{name}/versions/7", "/v3",
                                                                      "/v1/nothing", "/static/../../etc/passwd"]),
                                                   None, 0)},
        "bad_method": lambda: {"head": head(rng.choice(["PUT", "DELETE", "PATCH"]), infer, None, 0)},
        "bad_query": lambda: post(f"/v1/classify?top_k={rng.choice(['-1', 'x', '99999', '1e9'])}", "image/jpeg", jpeg),
        "bad_content_length": lambda: {"head": head("POST", infer, "application/json", None).replace(
            b"Transfer-Encoding: chunked", b"Content-Length: -5")},
        "big_declared": lambda: {"head": head("POST", rng.choice([infer, "/v1/classify"]), "image/jpeg", 50 * MB),
                                 "chunks": [rng.randbytes(MB)]},
        "bomb": lambda: post("/v1/classify", "image/png", images["bomb"]),
    }
    weights = {k: 1 for k in makers}
    cases = []
    for i in range(2000):
        kind = rng.choices(list(weights), list(weights.values()))[0]
        cases.append((kind, makers[kind]()))
    return cases


async def run_attack(port: int, name: str, images: dict[str, bytes], concurrency: int = 8,
                     pid: int | None = None, seed: int = 0) -> dict:  # fmt: skip
    rng = random.Random(seed)
    cases = hostile_cases(name, images, rng)
    # A few that take a while, run beside the rest: 50 MB streamed without a length, slow clients.
    big = rng.randbytes(50 * MB)
    special = [("big_chunked", {"head": head("POST", "/v1/classify", "image/jpeg", None), "chunks": chunked(big)})
               for _ in range(4)]  # fmt: skip
    special += [("big_streamed", {"head": head("POST", f"/v2/models/{name}/infer", "application/json", 50 * MB),
                                  "chunks": [big[i : i + MB] for i in range(0, 50 * MB, MB)]})
                for _ in range(2)]  # fmt: skip
    special += [("slow_client", {"head": head("POST", "/v1/classify", "image/jpeg", 10_000),
                                 "chunks": [b"x"] * 40, "delay": 0.25}) for _ in range(10)]  # fmt: skip
    cases = cases[: 2000 - len(special)]
    good_body = images["jpeg"]
    results: dict[str, dict[int, int]] = {}
    good: dict[int, int] = {}
    rss: list[float] = []
    queue = list(enumerate(cases))

    async def one(kind: str, req: dict) -> None:
        status, body = await exchange(port, req["head"], req.get("chunks"), req.get("delay", 0.0))
        results.setdefault(kind, {}).setdefault(status, 0)
        results[kind][status] += 1
        if status:
            assert b"Traceback" not in body, (kind, body[:300])
            if status >= 400 and kind not in HTTP_LEVEL:
                assert isinstance(json.loads(body).get("error"), str), (kind, body[:300])

    async def good_one() -> None:
        status, _ = await exchange(port, head("POST", "/v1/classify?top_k=1", "image/jpeg", len(good_body)),
                                      [good_body])  # fmt: skip
        good[status] = good.get(status, 0) + 1

    async def worker() -> None:
        while queue:
            i, (kind, req) = queue.pop(0)
            await one(kind, req)
            if i % 20 == 0:
                await good_one()
                if pid is not None:
                    rss.append(rss_mb(pid))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)), *(one(k, r) for k, r in special))
    seconds = time.perf_counter() - start
    statuses: dict[int, int] = {}
    for per in results.values():
        for s, n in per.items():
            statuses[s] = statuses.get(s, 0) + n
    return {"requests": sum(statuses.values()), "seconds": round(seconds, 2), "statuses": statuses,
            "by_kind": results, "good": good, "rss_mb_max_sampled": max(rss) if rss else None}  # fmt: skip


def attack_images() -> dict[str, bytes]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # 400 megapixels in ~50 kB
    return {"jpeg": shared_path("images", "burger.jpg").read_bytes(), "png": buf.getvalue(), "bomb": bomb.getvalue()}


@pytest.mark.slow
def test_two_thousand_hostile_requests_get_4xx_only():
    weights = shared_path("models", "mobilenet_v1_0.25_224_1_default_1.tflite")
    port = free_port()
    proc = start_server(weights, port, "--body-timeout-s", "2", "--max-batch", "4")
    try:
        from mobilenets.runtime import read_artifact_info

        name = read_artifact_info(weights).name
        images = attack_images()
        base = rss_mb(proc.pid)
        report = asyncio.run(asyncio.wait_for(run_attack(port, name, images, pid=proc.pid), 240))
        peak = peak_rss_mb(proc.pid)
        print(json.dumps({**report, "rss_start_mb": base, "peak_rss_mb": peak}))
        assert report["requests"] == 2000
        bad = {s: n for s, n in report["statuses"].items() if not 400 <= s < 500}
        assert not bad, (bad, {k: v for k, v in report["by_kind"].items() if any(not 400 <= s < 500 for s in v)})
        assert set(report["good"]) == {200} and sum(report["good"].values()) >= 90, report["good"]
        assert ready(port)
        assert peak < base + 600, (base, peak)  # 50 MB bodies never held whole; bombs refused before decoding
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        err = proc.stderr.read().decode()
        assert code == 0 and "Traceback" not in err, err[-3000:]


if __name__ == "__main__" and os.environ.get("MOBILENETS_ATTACK_PORT"):  # ad hoc: against a running server
    print(asyncio.run(run_attack(int(os.environ["MOBILENETS_ATTACK_PORT"]), sys.argv[1], attack_images())))
