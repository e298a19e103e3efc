"""`mobilenets serve` under load: throughput and latency, with and without micro-batching.

A bounded load generator on loopback only: ``--clients`` concurrent keep-alive connections
to 127.0.0.1 send ``--requests`` requests in all (or stop at ``--time-limit`` seconds),
each waiting for its answer before sending the next. The server runs as its own process
(``python -m mobilenets serve``), so client and server do not share a GIL; both share the
machine's cores, as a sidecar client would.

Requests (``--payload``):
- ``binary``: OIP ``/v2/models/{name}/infer``, one preprocessed 1 x 3 x H x W FP32 image
  with the binary tensor extension, ``probabilities`` back as binary: the same input the
  in-process Predictor gets, so the ceiling is comparable;
- ``json``: the same tensor as OIP JSON (parsing 150k floats per request is the cost);
- ``image``: ``/v1/classify`` with a JPEG (decode + resize in the server's thread pool).

The ceiling is the in-process Predictor's best images/s over batch sizes 1..32, measured
just before the servers on the same file and backend. Model: Google's float 0.25_224,
exported once to .onnx (ONNX Runtime batches; LiteRT graphs have batch 1 baked in).

    python benchmarks/serve_load.py            # writes benchmarks/serve_load.{json,md}
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
WEIGHTS = SHARED / "models" / "mobilenet_v1_0.25_224_1_default_1.tflite"
sys.path.insert(0, str(HERE.parent))
from tests.test_serve_attack import HOST, children, free_port, peak_rss_mb, ready  # HOST: loopback only, by design

# --- a minimal HTTP/1.1 keep-alive client (httpx costs more CPU than the server per request) ---------


async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> tuple[int, bytes]:
    writer.write(head + body)
    await writer.drain()
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v)
    return status, await reader.readexactly(length)


def request_bytes(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def load(port: int, head: bytes, body: bytes, clients: int, requests: int, time_limit: float) -> dict:
    # this process holds torch and the ceiling's Predictor: a full collection of all that in the
    # middle of a run would stall every client at once (the server does the same at start)
    gc.collect()
    gc.freeze()
    issued = 0
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    deadline = time.perf_counter() + time_limit

    async def client() -> None:
        nonlocal issued, errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while issued < requests and time.perf_counter() < deadline:
                issued += 1
                t = time.perf_counter()
                try:
                    status, _ = await http(reader, writer, head, body)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    errors += 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(HOST, port)
                    continue
                latencies.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    ok = statuses.get(200, 0)
    lat = np.asarray(latencies) * 1e3
    return {"clients": clients, "requests": len(latencies), "seconds": round(seconds, 3), "ok": ok, "_lat": lat,
            "errors": errors + sum(v for k, v in statuses.items() if k != 200), "statuses": statuses,
            "throughput": round(ok / seconds, 1), "client_cpu_ms": cpu / max(len(latencies), 1) * 1e3,
            **{f"p{q}_ms": round(float(np.percentile(lat, q)), 2) if len(lat) else None for q in (50, 90, 99)}}  # fmt: skip


# --- the pieces -----------------------------------------------------------------------------------


def ceiling(onnx: Path, seconds: float = 2.0, threads: int | None = None, callers: int = 1) -> dict:
    """In-process images/s per batch size: ``callers`` threads calling ``run`` on one Predictor at once.

    The default (one caller, the engine's threads) is the Predictor's own best; a server
    layout (``--workers`` calls of ``--threads`` threads each) is measured the same way so
    that the report can say what the same layout does without HTTP.
    """
    import concurrent.futures

    from mobilenets.auto import load_predictor

    p = load_predictor(weights=onnx, backend="onnxruntime", threads=threads)
    out, cpu = {}, {}
    with concurrent.futures.ThreadPoolExecutor(callers) as pool:
        for b in (1, 2, 4, 8, 16, 32):
            x = np.random.default_rng(0).uniform(-1, 1, (b, *p.cfg.input_size)).astype(np.float32)
            for _ in range(3):
                p.run(x)
            t, c = time.perf_counter(), time.process_time()

            def loop(x: np.ndarray = x, t: float = t) -> int:
                n = 0
                while time.perf_counter() - t < seconds:
                    p.run(x)
                    n += len(x)
                return n

            n = sum(pool.map(lambda _: loop(), range(callers)))
            out[b] = round(n / (time.perf_counter() - t), 1)
            cpu[b] = round((time.process_time() - c) / n * 1e3, 3)
    best = max(out, key=out.get)
    return {"per_batch": out, "best_batch": best, "images_per_s": out[best], "cpu_ms_per_image": cpu}


def start_server(onnx: Path, port: int, max_batch: int, max_wait_ms: float, workers: int,
                 threads: int | None = None, processes: int = 1) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mobilenets", "serve", "--weights", str(onnx), "--backend", "onnxruntime",
           "--host", HOST, "--port", str(port), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms),
           "--workers", str(workers), "--body-timeout-s", "5", "--no-access-log",
           "--processes", str(processes), *(["--threads", str(threads)] if threads else [])]  # fmt: skip
    return launch(cmd, lambda: ready(port), "server", 120)


def launch(cmd: list[str], up: Callable[[], bool], what: str, limit_s: float) -> subprocess.Popen:
    """Start ``cmd`` and wait until ``up()``; a process that exits or never comes up is an error."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {proc.stderr.read().decode()[-2000:]}")
        if up():
            return proc
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{what} did not come up")


def start_floor(port: int) -> subprocess.Popen:
    """uvicorn with `serve_floor.app` (no FastAPI, no model), as `mobilenets serve` runs it (uvloop, httptools)."""
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE), "serve_floor:app", "--host", HOST, "--port",
           str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log"]  # fmt: skip

    def listening() -> bool:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return True
        except OSError:
            return False

    return launch(cmd, listening, "floor server", 60)


def stop_server(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return -9


def payloads(name: str, size: tuple[int, int, int]) -> dict[str, tuple[bytes, bytes]]:
    x = np.random.default_rng(0).uniform(-1, 1, (1, *size)).astype(np.float32)
    path = f"/v2/models/{name}/infer"
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    binary = header + x.tobytes()
    js = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                 "data": x.ravel().tolist()}], "outputs": [{"name": "probabilities"}]}).encode()  # fmt: skip
    jpeg = (SHARED / "images" / "burger.jpg").read_bytes()
    return {
        "binary": (request_bytes(path, binary, {"Content-Type": "application/octet-stream",
                                                "Inference-Header-Content-Length": str(len(header))}), binary),
        "json": (request_bytes(path, js, {"Content-Type": "application/json"}), js),
        "image": (request_bytes("/v1/classify?top_k=5", jpeg, {"Content-Type": "image/jpeg"}), jpeg),
    }


def export_onnx(out: Path) -> Path:
    from mobilenets.auto import build_torch_model
    from mobilenets.export import export_model

    if not out.is_file():
        export_model(build_torch_model(None, WEIGHTS), "onnx", out, parity=False)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of the server so far, all its processes together."""
    total = 0
    for p in (pid, *children(pid)):
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def median_run(runs: list[dict]) -> dict:
    """One row from repeated rounds: median throughput, latency percentiles over every request."""
    lat = np.concatenate([r.pop("_lat") for r in runs]) if runs else np.zeros(0)
    tp = [r["throughput"] for r in runs]
    row = {k: runs[0][k] for k in ("mode", "max_batch", "processes", "payload", "clients")}
    row.update(rounds=len(runs), requests=sum(r["requests"] for r in runs), ok=sum(r["ok"] for r in runs),
               errors=sum(r["errors"] for r in runs), throughput=round(float(np.median(tp)), 1),
               throughput_rounds=tp, server_cpu_ms_per_request=round(float(np.median([r["cpu_ms"] for r in runs])), 3),
               client_cpu_ms_per_request=round(float(np.median([r["client_cpu_ms"] for r in runs])), 3))
    row.update({f"p{q}_ms": round(float(np.percentile(lat, q)), 2) if len(lat) else None for q in (50, 90, 99)})
    # ratios against the ceiling measured in the same round, then the median over the rounds
    row["of_ceiling_rounds"] = [round(r["throughput"] / r["ceiling_round"], 3) for r in runs]
    row["of_ceiling"] = round(float(np.median(row["of_ceiling_rounds"])), 3)
    row["of_attainable"] = round(float(np.median([r["throughput"] / r["ceiling_round_attainable"] for r in runs])), 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", default="1,8,16", help="comma-separated concurrency levels")
    ap.add_argument("--requests", type=int, default=1500, help="requests per run at most")
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per run at most")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (medians are reported)")
    ap.add_argument("--payloads", default="binary,image", help="binary, json, image")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-wait-ms", type=float, default=2.0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="threads per inference call (default: the server's)")
    ap.add_argument("--processes", type=int, default=1, help="server processes (serve --processes)")
    ap.add_argument("--also-processes", type=int, default=2,
                    help="also run both servers as this many processes of 1 engine thread each, in the same rounds "
                    "(0: not)")  # fmt: skip
    ap.add_argument("--no-attack", action="store_true", help="skip the 2,000 hostile requests run")
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the HTTP floor (binary payload against a bare uvicorn app with no model)")
    ap.add_argument("--out", default=str(HERE / "serve_load"), help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    from mobilenets.runtime import read_artifact_info
    from mobilenets.utils import machine_id

    clients = [int(c) for c in args.clients.split(",")]
    kinds = args.payloads.split(",")
    # server name -> (max batch, processes, threads per inference call)
    modes = {"batched": (args.max_batch, args.processes, args.threads), "unbatched": (1, args.processes, args.threads)}
    if args.also_processes:
        n = args.also_processes
        modes.update({f"batched, {n} processes": (args.max_batch, n, 1), f"unbatched, {n} processes": (1, n, 1)})
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(Path(tmp) / "mobilenet_v1_0.25_224.onnx")
        info = read_artifact_info(onnx)
        result = {"machine": machine_id(), "python": platform.python_version(), "loadavg_start": os.getloadavg(),
                  "model": info.name, "weights": WEIGHTS.name, "backend": "onnxruntime",
                  "settings": {"requests": args.requests, "time_limit_s": args.time_limit, "rounds": args.rounds,
                               "max_wait_ms": args.max_wait_ms, "workers": args.workers, "threads": args.threads,
                               "processes": args.processes, "also_processes": args.also_processes,
                               "body_timeout_s": 5}}  # fmt: skip
        servers = {m: (free_port(), None) for m in modes}
        procs = {}
        floor = None if args.no_floor or "binary" not in kinds else "HTTP floor: bare uvicorn, no model"
        try:
            if floor:
                servers[floor] = (free_port(), None)
                procs[floor] = start_floor(servers[floor][0])
            for m, (mb, nproc, threads) in modes.items():
                port = servers[m][0]
                procs[m] = start_server(onnx, port, mb, args.max_wait_ms, args.workers, threads, nproc)
            bodies = payloads(info.name, info.cfg.input_size)
            for m in servers:  # warm-up
                for kind in kinds if m != floor else ["binary"]:
                    asyncio.run(load(servers[m][0], *bodies[kind], 4, 100, 10))
            ceilings, layouts, raw = [], [], {}
            # the layout besides the Predictor's own default that is also measured in-process:
            # (processes, workers, threads); its calls at once, all processes together, call one Predictor
            layout = None
            if args.workers * args.processes > 1 or args.threads is not None:
                layout = (args.processes, args.workers, args.threads)
            elif args.also_processes:
                layout = (args.also_processes, 1, 1)
            for rnd in range(args.rounds):
                ceilings.append(ceiling(onnx, 1.0))  # servers idle meanwhile
                print("ceiling", ceilings[-1], flush=True)
                if layout:
                    layouts.append(ceiling(onnx, 1.0, layout[2], layout[0] * layout[1]))
                    print("ceiling, server layout", layouts[-1], flush=True)
                for kind in kinds:
                    for c in clients:
                        for m, (mb, nproc, _) in [*modes.items(), *([(floor, (1, 1, None))] if floor and kind == "binary" else [])]:
                            port, pid = servers[m][0], procs[m].pid
                            c0 = cpu_seconds(pid)
                            r = asyncio.run(load(port, *bodies[kind], c, args.requests, args.time_limit))
                            r["cpu_ms"] = (cpu_seconds(pid) - c0) / max(r["requests"], 1) * 1e3
                            r.update(mode=m, max_batch=mb, processes=nproc, payload=kind)
                            # this round's ceiling (the machine's speed drifts between rounds): best overall,
                            # and best at a batch this server can form (<= its max batch and its clients)
                            per_b = ceilings[-1]["per_batch"]
                            r["ceiling_round"] = ceilings[-1]["images_per_s"]
                            r["ceiling_round_attainable"] = max(v for b, v in per_b.items() if b <= min(mb, c))
                            raw.setdefault((kind, c, m), []).append(r)
                            print(rnd, kind, c, m, r["throughput"], r["p99_ms"], r["errors"], flush=True)
            if not args.no_attack:  # tests/test_serve_attack.py's run, against the batched server
                from tests.test_serve_attack import attack_images, run_attack

                pid = procs["batched"].pid
                rss0 = round(peak_rss_mb(pid), 1)
                attack = asyncio.run(run_attack(servers["batched"][0], info.name, attack_images(), pid=pid))
                attack.pop("by_kind")
                attack.update(peak_rss_mb_before=rss0, peak_rss_mb_after=round(peak_rss_mb(pid), 1),
                              ready_after=ready(servers["batched"][0]))  # fmt: skip
                result["attack"] = attack
                print("attack", attack, flush=True)
        finally:
            result["servers"] = {}
            for m, proc in procs.items():
                rss = round(peak_rss_mb(proc.pid), 1)
                code = stop_server(proc)  # uvicorn itself re-raises SIGTERM: the floor ends by the signal
                if m != floor:
                    result["servers"][m] = {"peak_rss_mb": rss, "exit_code": code}
        best = [c["images_per_s"] for c in ceilings]
        result["ceiling"] = {"images_per_s": round(float(np.median(best)), 1), "rounds": best,
                             "per_batch": ceilings[int(np.argsort(best)[len(best) // 2])]["per_batch"],
                             "best_batch": ceilings[int(np.argsort(best)[len(best) // 2])]["best_batch"],
                             "cpu_ms_per_image": {b: round(float(np.median([c["cpu_ms_per_image"][b] for c in ceilings])), 3)
                                                  for b in ceilings[0]["cpu_ms_per_image"]}}  # fmt: skip
        if layouts:
            tops = [c["images_per_s"] for c in layouts]
            result["ceiling_server_layout"] = {"processes": layout[0], "workers": layout[1], "threads": layout[2],
                                               "images_per_s": round(float(np.median(tops)), 1), "rounds": tops,
                                               "per_batch": layouts[int(np.argsort(tops)[len(tops) // 2])]["per_batch"]}  # fmt: skip
        result["runs"] = []
        for runs in raw.values():
            row = median_run(runs)
            if layouts and row["processes"] == layout[0]:
                row["of_layout_ceiling"] = round(row["throughput"] / result["ceiling_server_layout"]["images_per_s"], 3)
            # load-robust: the Predictor's own CPU per image (at this server's batch size) over the server's per request
            cpu_b = result["ceiling"]["cpu_ms_per_image"][min(row["max_batch"], 8)]
            row["cpu_efficiency"] = None if row["mode"] == floor else round(cpu_b / max(row["server_cpu_ms_per_request"], 1e-9), 3)
            result["runs"].append(row)
        result["loadavg_end"] = os.getloadavg()
    write(result, Path(args.out))


def write(result: dict, out: Path) -> None:
    from mobilenets.utils import atomic_write

    def run(mode: str, kind: str, c: int) -> dict | None:
        return next((r for r in result["runs"] if (r["mode"], r["payload"], r["clients"]) == (mode, kind, c)), None)

    checks = []
    n = result["settings"].get("also_processes")
    for suffix in ("", *([f", {n} processes"] if n else [])):
        b8, b16, u16 = (run(f"batched{suffix}", "binary", 8), run(f"batched{suffix}", "binary", 16),
                        run(f"unbatched{suffix}", "binary", 16))  # fmt: skip
        if b8:
            checks.append((f"8 clients, batched{suffix}: >= 70% of the Predictor's best batch throughput, 0 errors",
                           f"{b8['of_ceiling']:.0%}, {b8['errors']} errors", b8["of_ceiling"] >= 0.7 and b8["errors"] == 0))  # fmt: skip
        if b16 and u16:
            ratio = b16["throughput"] / max(u16["throughput"], 1e-9)
            result[f"batching_speedup_16{suffix.replace(', ', '_').replace(' ', '_')}"] = round(ratio, 3)
            checks.append((f"16 clients{suffix}: batched >= 1.5x unbatched", f"{ratio:.2f}x", ratio >= 1.5))
    result["checks"] = [{"check": c, "measured": m, "pass": bool(p)} for c, m, p in checks]
    with atomic_write(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    ceil = result["ceiling"]
    per_round = ", ".join(f"{v:.0f}" for v in ceil["rounds"])
    per_batch = ", ".join(f"{b}: {v:.0f}" for b, v in ceil["per_batch"].items())
    cpu_per = ", ".join(f"{b}: {v:.2f}" for b, v in ceil["cpu_ms_per_image"].items())
    lines = [
        f"# serve under load: {result['model']} ({result['backend']})",
        "",
        (f"Machine: {result['machine']}; load average at start {result['loadavg_start'][0]:.1f}, at end "
         f"{result['loadavg_end'][0]:.1f}. Loopback only; client and server share the cores. "
         "Made by `python benchmarks/serve_load.py`."),
        "",
        (f"Ceiling (in-process Predictor, best batch size, median of {len(ceil['rounds'])} rounds measured between "
         f"the load runs): **{ceil['images_per_s']:.0f} images/s** (rounds: {per_round}; per batch size in the "
         f"median round: {per_batch}; CPU ms per image: {cpu_per})."),
        "",
        *([(f"Server layout: {lay.get('processes', 1)} process(es), each with {lay['workers']} inference call(s) at "
           f"once of {lay['threads'] or 'the engine default'} thread(s). The same number of calls in-process (that "
           "many threads calling one Predictor) reaches "
           f"**{lay['images_per_s']:.0f} images/s** (rounds: {', '.join(f'{v:.0f}' for v in lay['rounds'])}; per "
           f"batch size: {', '.join(f'{b}: {v:.0f}' for b, v in lay['per_batch'].items())}); the bar is against the "
           "Predictor's own ceiling above, and each row's share of this one is in the JSON (`of_layout_ceiling`)."), ""]
          if (lay := result.get("ceiling_server_layout")) else []),
        "| payload | server | clients | requests | ok/s | of ceiling | of best at a batch it can form | p50 ms | p90 ms | p99 ms | errors | server CPU ms/req | client CPU ms/req | CPU efficiency |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        server = r["mode"] if r["cpu_efficiency"] is None else f"{r['mode']} (max batch {r['max_batch']})"
        lines.append(f"| {r['payload']} | {server} | {r['clients']} | {r['requests']} | "
                     f"{r['throughput']:.0f} | {r['of_ceiling']:.0%} | {r['of_attainable']:.0%} | {r['p50_ms']} | {r['p90_ms']} | {r['p99_ms']} | "
                     f"{r['errors']} | {r['server_cpu_ms_per_request']} | {r.get('client_cpu_ms_per_request', '')} | "
                     f"{'' if r['cpu_efficiency'] is None else format(r['cpu_efficiency'], '.0%')} |")  # fmt: skip
    lines += ["", ("ok/s: median over the rounds; of ceiling: the median over the rounds of ok/s over that round's ceiling "
                   "(the machine's speed drifts from round to round); of best at a batch it can form: the same against "
                   "the round's best batch size no larger than the server's max batch and its clients (8 clients with "
                   "one request each never make a batch of 16); percentiles over every request of every round; server CPU ms/req: "
                   "the server process's CPU time per request (median over the rounds); CPU efficiency: the in-process "
                   "Predictor's CPU ms per image (at batch 8 for the batched server, 1 for the unbatched) over the "
                   "server's CPU ms per request: how much of the server's CPU is the model, a figure that other load "
                   "on the machine moves far less than throughput; client CPU ms/req: the load generator's own; the HTTP "
                   "floor: the same binary requests to a bare ASGI app on uvicorn (`serve_floor.py`: reads the body, "
                   "answers a response of the real size, no FastAPI, no model), what HTTP alone costs here."), "",
              "| check | measured | pass |", "|---|---|---|"]
    lines += [f"| {c['check']} | {c['measured']} | {'yes' if c['pass'] else 'NO'} |" for c in result["checks"]]
    attack = result.get("attack")
    if attack:
        bad = sum(n for st, n in attack["statuses"].items() if not 400 <= int(st) < 500)
        passed = not bad and attack["ready_after"] and set(attack["good"]) == {200}
        measured = (f"{attack['requests']} in {attack['seconds']} s, statuses {attack['statuses']}, correct "
                    f"{attack['good']}, ready after: {attack['ready_after']}, peak RSS {attack['peak_rss_mb_before']} "
                    f"-> {attack['peak_rss_mb_after']} MB")  # fmt: skip
        check = "2,000 hostile requests: 4xx only, still ready, correct ones interleaved all 200"
        lines.append(f"| {check} | {measured} | {'yes' if passed else 'NO'} |")
    servers = result.get("servers", {})
    lines += ["", "Server peak RSS: " + ", ".join(f"{k} {v['peak_rss_mb']} MB (exit {v['exit_code']})"
                                                  for k, v in servers.items())]  # fmt: skip
    with atomic_write(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
