"""The HTTP shell: FastAPI routes over one `Predictor` (which knows nothing of HTTP).

`create_app(predictor, ServeConfig(...))` gives an ASGI app with

- the Open Inference Protocol v2: ``GET /v2``, ``/v2/health/live``, ``/v2/health/ready``,
  ``/v2/models/{name}[/versions/{v}]``, ``.../ready``, ``POST .../infer`` (`protocol`);
- ``POST /v1/classify|embed|detect|segment``: an image as the raw body (``image/*`` or
  ``application/octet-stream``) or as a multipart file; JSON like the CLI's ``--json``
  (`handlers`); ``GET /v1/info`` describes the model for the page at ``/``;
- ``GET /metrics`` (Prometheus) and a JSON access log line per request (logger
  ``mobilenets.serve.access``).

Every inference goes through one `MicroBatcher`; decoding and preprocessing run in a
thread pool, never on the event loop. Guards, in the order a request meets them: at most
``queue_size`` inference requests admitted at once (503 + ``Retry-After`` beyond), the body
limit (413, from ``Content-Length`` before reading or while streaming), the body deadline
(408), content types (415), then the protocol's own checks (400). Errors are
``{"error": "..."}``; an unexpected exception is logged with its traceback and answered
500 with a one-line body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.staticfiles import StaticFiles

from ..errors import ImageError, MobilenetsError
from ..utils import all_finite
from .batching import BatchedPredictor, MicroBatcher, QueueFull, Stopped
from .handlers import TaskHandler, task_handlers
from .metrics import CONTENT_TYPE as METRICS_TYPE
from .metrics import ServerMetrics, SharedMetrics
from .protocol import HEADER, InferRequest, ProtocolError, encode_infer_response, oip_datatype, parse_infer_request

access_log = logging.getLogger("mobilenets.serve.access")
error_log = logging.getLogger("mobilenets.serve")

MODEL_VERSION = "1"
IMAGE_INPUT = "image"  # the BYTES input: encoded images, preprocessed by the server
TENSOR_INPUT = "input"  # the FP32 input: preprocessed N x C x H x W
IMAGE_TYPES = ("image/", "application/octet-stream")
INFER_TYPES = ("application/json", "application/octet-stream")


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches and what it refuses.

    Args:
        model_name: the name in ``/v2/models/{name}`` (default: the predictor's).
        task: the task the page shows (default: the weights' own, ``predictor.task``).
        max_batch: rows per ``predictor.run`` at most (1 turns batching off).
        max_wait_ms: how long a request waits for others to join its batch.
        queue_size: inference requests admitted at once; more get 503 with Retry-After.
        workers: ``predictor.run`` calls that may run at once.
        max_body: request body limit in bytes (413 above it).
        body_timeout_s: the whole body must arrive within this (408 after).
        max_pixels: decoded image size limit (a small file can be a huge image).
        max_images: images (or rows) in one request at most.
        metrics_dir: a directory shared with the other processes serving the same port
            (``serve --processes N``): ``/metrics`` then answers the sum over all of them.
    """

    model_name: str | None = None
    task: str | None = None
    max_batch: int = 8
    max_wait_ms: float = 5.0
    queue_size: int = 64
    workers: int = 1
    max_body: int = 20 * 1024 * 1024
    body_timeout_s: float = 30.0
    max_pixels: int = 40_000_000
    max_images: int = 64
    metrics_dir: str | None = None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class ModelServer:
    """The predictor, its batcher and thread pool, and the state the routes share."""

    def __init__(self, predictor: Any, config: ServeConfig) -> None:
        self.predictor, self.config = predictor, config
        self.name = config.model_name or predictor.name
        self.task = config.task or predictor.task
        self.handlers: dict[str, TaskHandler] = task_handlers()
        self.metrics = ServerMetrics(lambda: self.batcher.depth, lambda: self.in_flight, config.max_batch)
        self.shared = SharedMetrics(self.metrics, config.metrics_dir) if config.metrics_dir else None
        self._writer: asyncio.Task | None = None
        self.batcher = MicroBatcher(predictor.run, config.max_batch, config.max_wait_ms, config.queue_size,
                                    config.workers, self._on_batch, self._expected)  # fmt: skip
        self.batched = BatchedPredictor(predictor, self.batcher)
        # Preprocessing and task code run here; a thread may wait on its batch, so one per admitted request.
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.in_flight = 0
        self.draining = False

    def _expected(self) -> int:
        """Admitted requests that have not reached the batcher yet (reading, parsing, decoding)."""
        return self.in_flight - self.batcher.outstanding

    def _on_batch(self, rows: int, seconds: float) -> None:
        self.metrics.batch_size.observe(rows)
        self.metrics.batch_seconds.observe(seconds)

    @property
    def ready(self) -> bool:
        return self.batcher.running and self.batcher.accepting and not self.draining

    async def start(self) -> None:
        self.pool = concurrent.futures.ThreadPoolExecutor(self.config.queue_size + 2, thread_name_prefix="mobilenets-pre")
        await self.batcher.start()
        if self.shared is not None:
            self._writer = asyncio.create_task(self._write_metrics(), name="mobilenets-metrics")

    async def _write_metrics(self) -> None:
        assert self.shared is not None
        while True:
            try:
                self.shared.write()
            except OSError as e:  # a full disk must not stop the server; the next second tries again
                error_log.warning("cannot write the shared metrics: %s", e)
            await asyncio.sleep(1.0)

    def metrics_text(self) -> str:
        return self.shared.render() if self.shared is not None else self.metrics.render()

    async def stop(self) -> None:
        self.draining = True
        await self.batcher.stop()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self._writer is not None:
            self._writer.cancel()
            self.shared.write()  # the final counts stay in the other processes' sums

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """One inference request's slot; 503 when ``queue_size`` are already in."""
        if self.draining or not self.batcher.accepting:
            raise HTTPError(503, "the server is shutting down", {"Retry-After": "1"})
        if self.in_flight >= self.config.queue_size:
            raise HTTPError(503, f"server busy: {self.in_flight} requests in flight", {"Retry-After": "1"})
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def in_pool(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # --- preprocessing (pool threads) ------------------------------------------------------

    def decode(self, images: list[bytes]) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Encoded images -> the model's preprocessed batch and each image's (height, width)."""
        from PIL import Image

        transform = self.predictor.transform
        arrays, sizes = [], []
        for k, data in enumerate(images):
            what = "the image" if len(images) == 1 else f"image {k}"
            try:
                with Image.open(io.BytesIO(data)) as probe:  # reads the header only
                    w, h = probe.size
                if w * h > self.config.max_pixels:
                    raise HTTPError(413, f"{what} is {w} x {h} pixels; the limit is {self.config.max_pixels}")
            except Image.DecompressionBombError:
                raise HTTPError(413, f"{what} has too many pixels to decode (a decompression bomb?)") from None
            except (OSError, ValueError, SyntaxError):
                pass  # not recognised from its header: the decoder gives the real reason below
            try:
                img = transform.load(data)
                x = transform(img).numpy()
            except ImageError as e:
                raise HTTPError(400, f"{what}: {str(e).replace('image bytes: ', '')}") from None
            except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
                raise HTTPError(400, f"{what} cannot be decoded ({type(e).__name__})") from None
            arrays.append(x)
            sizes.append((img.height, img.width))
        return np.stack(arrays), sizes

    def run_task(self, handler: TaskHandler, images: list[bytes], params: dict[str, str]) -> list:
        batch, sizes = self.decode(images)
        return handler.run(handler.fn, self.batched, batch, sizes, params)

    # --- the OIP infer request -------------------------------------------------------------

    def parse_infer(self, body: bytes, header: str | None) -> tuple[InferRequest, np.ndarray]:
        return self.prepare_infer(parse_infer_request(body, header))

    def prepare_infer(self, req: InferRequest) -> tuple[InferRequest, np.ndarray]:
        """The model's input batch for a parsed request (BYTES images decoded and preprocessed)."""
        if len(req.inputs) != 1:
            raise ProtocolError(f"{self.name} takes one input ({TENSOR_INPUT!r} FP32 or {IMAGE_INPUT!r} BYTES), "
                                f"got {len(req.inputs)}")  # fmt: skip
        inp = req.inputs[0]
        c, h, w = self.predictor.cfg.input_size
        if inp.name not in (TENSOR_INPUT, IMAGE_INPUT):
            raise ProtocolError(f"{self.name} has no input {inp.name[:40]!r} (inputs: {TENSOR_INPUT!r} FP32 "
                                f"[-1, {c}, {h}, {w}], {IMAGE_INPUT!r} BYTES [-1])")  # fmt: skip
        if req.outputs is not None:
            unknown = [n for n in req.outputs if n not in self.predictor.output_names]
            if unknown:
                raise ProtocolError(f"{self.name} has no output {unknown[0][:40]!r} "
                                    f"(outputs: {', '.join(self.predictor.output_names)})")  # fmt: skip
        if inp.name == IMAGE_INPUT:
            if inp.datatype != "BYTES":
                raise ProtocolError(f"input {IMAGE_INPUT!r} is BYTES (encoded images), got {inp.datatype}")
            if len(inp.shape) not in (1, 2) or (len(inp.shape) == 2 and inp.shape[1] != 1) or not inp.shape[0]:
                raise ProtocolError(f"input {IMAGE_INPUT!r} has shape [N] or [N, 1], got {list(inp.shape)}")
            if len(inp.data) > self.config.max_images:
                raise ProtocolError(f"at most {self.config.max_images} images per request, got {len(inp.data)}")
            return req, self.decode(inp.data)[0]
        if inp.datatype not in ("FP32", "FP16", "FP64"):
            raise ProtocolError(f"input {TENSOR_INPUT!r} is FP32, got {inp.datatype}")
        if len(inp.shape) != 4 or inp.shape[1:] != (c, h, w) or not inp.shape[0]:
            raise ProtocolError(f"input {TENSOR_INPUT!r} has shape [N, {c}, {h}, {w}], got {list(inp.shape)}")
        if inp.shape[0] > self.config.max_images:
            raise ProtocolError(f"at most {self.config.max_images} rows per request, got {inp.shape[0]}")
        x = np.ascontiguousarray(inp.data, dtype=np.float32)
        if not all_finite(x):
            raise ProtocolError(f"input {TENSOR_INPUT!r} holds NaN or Inf")
        return req, x

    def encode_infer(self, req: InferRequest, out: dict[str, np.ndarray]) -> tuple[bytes, dict[str, str]]:
        names = req.outputs if req.outputs is not None else list(self.predictor.output_names)
        specs = {o.name: o for o in self.predictor.outputs}
        typed = {}
        for n in names:
            y = out[n]
            try:
                dt = np.dtype(specs[n].dtype)
            except TypeError:
                dt = y.dtype
            typed[n] = y.astype(dt, copy=False)
        return encode_infer_response(self.name, typed, req, MODEL_VERSION)

    def metadata(self) -> dict[str, Any]:
        c, h, w = self.predictor.cfg.input_size
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": f"mobilenets_{self.predictor.backend}",
            "inputs": [{"name": TENSOR_INPUT, "datatype": "FP32", "shape": [-1, c, h, w]},
                       {"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
            "outputs": [{"name": o.name, "datatype": oip_datatype(o.dtype), "shape": list(o.shape)}
                        for o in self.predictor.outputs],
            "parameters": {"task": self.predictor.task, "note": f"send one input: {TENSOR_INPUT!r} (preprocessed) "
                           f"or {IMAGE_INPUT!r} (encoded images, base64 in JSON)"},
        }

    def info(self) -> dict[str, Any]:
        p = self.predictor
        tasks = {t: (h.missing or "ok") for t, h in self.handlers.items()
                 if all(o in p.output_names for o in h.outputs)}  # fmt: skip
        return {**p.describe(), "name": self.name, "task": self.task, "tasks": tasks,
                "input_size": list(p.cfg.input_size), "outputs": [o.as_dict() for o in p.outputs],
                "max_batch": self.config.max_batch, "max_body": self.config.max_body,
                "labels": p.labels if p.labels and len(p.labels) <= 256 else None}  # fmt: skip


# --- the guard: limits, metrics, access log, last-resort errors --------------------------------------


class BodyTooLarge(Exception):
    pass


class BodyTimeout(Exception):
    pass


def _route_of(scope: dict) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "other"  # unmatched paths share one label (bounded cardinality)


class Guard:
    """Pure ASGI middleware around every HTTP request (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: Any, server: ModelServer) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cfg = self.server.config
        start = time.perf_counter()
        state = {"status": 0, "out": 0, "in": 0, "started": False}
        length = next((v for k, v in scope.get("headers", ()) if k == b"content-length"), None)

        async def send_w(message: dict) -> None:
            if message["type"] == "http.response.start":
                state["status"], state["started"] = message["status"], True
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        body_done = False
        deadline = start + cfg.body_timeout_s

        async def receive_w() -> dict:
            nonlocal body_done
            if body_done:
                return await receive()
            task = asyncio.current_task()
            left = deadline - time.perf_counter()
            expired = False

            def expire() -> None:
                nonlocal expired
                expired = True
                task.cancel()

            # one timer per wait instead of asyncio.wait_for (which makes a task per chunk). Whether
            # it fired is what says timeout: the loop's clock may run the timer a little before
            # ``deadline`` by perf_counter, and a cancellation that is ours must not escape as one.
            timer = asyncio.get_running_loop().call_later(max(0.0, left), expire) if task else None
            try:
                message = await receive()
            except asyncio.CancelledError:
                if expired:
                    if hasattr(task, "uncancel"):  # Python 3.11+ counts cancellations: this one is consumed here
                        task.uncancel()
                    raise BodyTimeout(f"the request body did not arrive within {cfg.body_timeout_s:g} s") from None
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            if message["type"] == "http.request":
                state["in"] += len(message.get("body", b""))
                if state["in"] > cfg.max_body:
                    raise BodyTooLarge(f"the request body is over the {cfg.max_body} byte limit")
                body_done = not message.get("more_body", False)
            return message

        try:
            if length is not None:
                try:
                    n = int(length)
                except ValueError:
                    n = -1
                if n < 0:
                    await error_response(400, "invalid Content-Length")(scope, receive, send_w)
                    return
                if n > cfg.max_body:
                    await error_response(413, f"the request body ({n} bytes) is over the {cfg.max_body} byte limit",
                                         {"Connection": "close"})(scope, receive, send_w)  # fmt: skip
                    return
            await self.app(scope, receive_w, send_w)
        except ClientDisconnect:
            pass  # the client went away mid-body: nobody to answer (logged as 499)
        except Exception:  # noqa: BLE001 - the last resort: log the traceback, answer one line
            error_log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not state["started"]:
                await error_response(500, "internal server error (logged on the server)")(scope, receive, send_w)
        finally:
            seconds = time.perf_counter() - start
            route = _route_of(scope)
            status = state["status"] or 499  # 499: the client went away before an answer
            m = self.server.metrics
            m.requests.inc(route, scope.get("method", ""), str(status))
            m.latency.observe(seconds, route)
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client") or ("", 0)
                access_log.info(json.dumps({"ts": round(time.time(), 3), "client": f"{client[0]}:{client[1]}",
                                            "method": scope.get("method"), "path": scope.get("path"),
                                            "route": route, "status": status, "ms": round(seconds * 1e3, 3),
                                            "bytes_in": state["in"], "bytes_out": state["out"]}))  # fmt: skip


# --- the app ---------------------------------------------------------------------------------------


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _image_bodies(request: Request, max_images: int) -> list[bytes]:
    """The uploaded image(s): the raw body, or the files of a multipart form."""
    ctype = _content_type(request)
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_images, max_fields=16)
        except (BodyTooLarge, BodyTimeout):
            raise
        except Exception as e:  # noqa: BLE001 - Starlette/multipart parse errors of every kind
            raise HTTPError(400, f"malformed multipart body ({type(e).__name__}: {str(e)[:100]})") from None
        try:
            files = [v for _, v in form.multi_items() if hasattr(v, "read")]
            if not files:
                raise HTTPError(400, "the multipart form has no file (send the image as a file field)")
            return [await f.read() for f in files]
        finally:
            await form.close()
    if ctype and not ctype.startswith(IMAGE_TYPES):
        raise HTTPError(415, f"unsupported Content-Type {ctype[:60]!r}: send the image as the body with image/* "
                        "or application/octet-stream, or as a multipart/form-data file")  # fmt: skip
    body = await request.body()
    if not body:
        raise HTTPError(400, "the request body is empty: send an encoded image")
    return [body]


def create_app(predictor: Any, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``predictor`` (see the module docstring for the routes)."""
    config = config or ServeConfig()
    server = ModelServer(predictor, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="mobilenets", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError) -> JSONResponse:
        return error_response(e.status, str(e), e.headers)

    @app.exception_handler(ProtocolError)
    async def _protocol_error(request: Request, e: ProtocolError) -> JSONResponse:
        return error_response(e.status, str(e))

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, e: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(e), {"Connection": "close"})

    @app.exception_handler(BodyTimeout)
    async def _timeout(request: Request, e: BodyTimeout) -> JSONResponse:
        return error_response(408, str(e), {"Connection": "close"})

    @app.exception_handler(QueueFull)
    async def _full(request: Request, e: QueueFull) -> JSONResponse:
        return error_response(503, f"server busy: {e}", {"Retry-After": "1"})

    @app.exception_handler(Stopped)
    async def _stopped(request: Request, e: Stopped) -> JSONResponse:
        return error_response(503, str(e), {"Retry-After": "1"})

    @app.exception_handler(MobilenetsError)
    async def _user_error(request: Request, e: MobilenetsError) -> JSONResponse:
        return error_response(400, str(e).splitlines()[0] if str(e) else type(e).__name__)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return error_response(e.status_code, str(e.detail), getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        return error_response(400, "invalid request parameters")

    def check_model(name: str, version: str | None = None) -> None:
        if name != server.name:
            raise HTTPError(404, f"unknown model {name[:60]!r} (this server has {server.name!r})")
        if version is not None and version != MODEL_VERSION:
            raise HTTPError(404, f"model {name!r} has no version {version[:20]!r} (versions: {MODEL_VERSION})")

    # --- Open Inference Protocol v2 ---

    @app.get("/v2")
    async def server_metadata() -> dict:
        from ..version import __version__

        return {"name": "mobilenets", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> JSONResponse:
        return JSONResponse({"ready": server.ready}, status_code=200 if server.ready else 400)  # the spec: 4xx = false

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict:
        check_model(name)
        return server.metadata()

    @app.get("/v2/models/{name}/versions/{version}")
    async def model_version_metadata(name: str, version: str) -> dict:
        check_model(name, version)
        return server.metadata()

    async def model_ready_answer(name: str, version: str | None) -> JSONResponse:
        check_model(name, version)
        return JSONResponse({"name": server.name, "ready": server.ready}, status_code=200 if server.ready else 400)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> JSONResponse:
        return await model_ready_answer(name, None)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_version_ready(name: str, version: str) -> JSONResponse:
        return await model_ready_answer(name, version)

    async def infer_answer(request: Request, name: str, version: str | None) -> Response:
        check_model(name, version)
        ctype = _content_type(request)
        if ctype and ctype not in INFER_TYPES:
            raise HTTPError(415, f"unsupported Content-Type {ctype[:60]!r} for infer: application/json "
                            "(or application/octet-stream with the binary tensor extension)")  # fmt: skip
        async with server.admit():
            body = await request.body()
            header = request.headers.get(HEADER)
            small = len(body) < 65536 or (header is not None and header.isdigit() and int(header) < 65536)
            if small:  # a small JSON document (binary tensors are only copied): not worth a thread hop
                req = parse_infer_request(body, header)
                if req.inputs and req.inputs[0].datatype == "BYTES":
                    req, x = await server.in_pool(server.prepare_infer, req)  # decoding images
                else:
                    req, x = server.prepare_infer(req)
            else:
                req, x = await server.in_pool(server.parse_infer, body, header)
            out = await server.batcher.submit(x)
            if x.shape[0] * sum(v[0].size for v in out.values()) > 50_000 and not (req.binary_all or req.binary):
                payload, headers = await server.in_pool(server.encode_infer, req, out)
            else:
                payload, headers = server.encode_infer(req, out)
        media = "application/octet-stream" if headers else "application/json"
        return Response(payload, media_type=media, headers=headers)

    @app.post("/v2/models/{name}/infer")
    async def infer(request: Request, name: str) -> Response:
        return await infer_answer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer_version(request: Request, name: str, version: str) -> Response:
        return await infer_answer(request, name, version)

    # --- convenience routes, the page, metrics ---

    async def task_answer(request: Request, task: str) -> Response:
        handler = server.handlers[task]
        if handler.missing:
            raise HTTPError(501, handler.missing)
        if not all(o in predictor.output_names for o in handler.outputs):
            raise HTTPError(400, f"{server.name} is a {predictor.task} model (outputs: "
                            f"{', '.join(predictor.output_names)}); /v1/{task} needs {', '.join(handler.outputs)}")  # fmt: skip
        params = dict(request.query_params)
        wants_png = task == "segment" and "image/png" in request.headers.get("accept", "")
        async with server.admit():
            images = await _image_bodies(request, 1)
            start = time.perf_counter()
            answers = await server.in_pool(server.run_task, handler, images, params)
            answer = answers[0]
            if wants_png and answer.png is not None:
                return Response(await server.in_pool(answer.png), media_type="image/png")
        doc = {**answer.json, "model": server.name, "backend": predictor.backend,
               "ms": round((time.perf_counter() - start) * 1e3, 3)}  # fmt: skip
        return JSONResponse(doc)

    def add_task_route(task: str) -> None:
        async def route(request: Request) -> Response:
            return await task_answer(request, task)

        app.add_api_route(f"/v1/{task}", route, methods=["POST"], name=f"v1_{task}")

    for task in server.handlers:
        add_task_route(task)

    @app.get("/v1/info")
    async def info() -> dict:
        return server.info()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics_text(), media_type=METRICS_TYPE)

    static = resources.files("mobilenets.serve") / "static"

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    app.mount("/static", StaticFiles(packages=[("mobilenets.serve", "static")]), name="static")
    app.add_middleware(Guard, server=server)
    return app


# --- running it --------------------------------------------------------------------------------------


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def uvicorn_config(app: Any, host: str = "127.0.0.1", port: int = 8080, **kw: Any) -> Any:
    """The uvicorn settings the server runs with (uvicorn's own access log off: ours is JSON)."""
    import uvicorn

    opts = {"log_level": "warning", "access_log": False, "timeout_graceful_shutdown": 30, "timeout_keep_alive": 5,
            "limit_concurrency": 512, "lifespan": "on", "server_header": False}  # fmt: skip
    opts.update(kw)
    return uvicorn.Config(app, host=host, port=port, **opts)


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int | None = None, timeout: float = 60.0,
                    **kw: Any) -> Iterator[str]:  # fmt: skip
    """Run ``app`` on uvicorn in a background thread; yields its base URL, stops it on exit (tests, benchmarks)."""
    import uvicorn

    port = port or free_port(host)
    server = uvicorn.Server(uvicorn_config(app, host, port, **kw))
    thread = threading.Thread(target=server.run, name="mobilenets-serve", daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > timeout:
            server.should_exit = True
            raise RuntimeError(f"the server did not start on {host}:{port}")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(5)

