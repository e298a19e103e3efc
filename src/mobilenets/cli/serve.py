"""``mobilenets serve``: the Open Inference Protocol, ``/v1/<task>`` routes and a page, over one Predictor."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import TYPE_CHECKING, Any

from ..auto import CHOICES
from ._common import crop_float, float_in, int_at_least, positive_float, resolution_int

if TYPE_CHECKING:
    from ..runtime import Predictor
    from ..serve.app import ServeConfig

TASK_CHOICES = ("classify", "embed", "detect", "segment")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP inference server (Open Inference Protocol v2, /v1/<task>, a page at /)")
    p.add_argument("--weights", required=True, help="weights file or exported artifact (.onnx, .tflite, .safetensors, "
                   "...), or 'imagenet' with --model")  # fmt: skip
    p.add_argument("--model", help="registered name (default: read from --weights)")
    p.add_argument("--task", choices=TASK_CHOICES, help="default: the weights' own (their contract's task)")
    p.add_argument("--backend", choices=CHOICES, help="default: follows the file (.tflite: litert, which runs one "
                   "image at a time; .onnx: onnxruntime; weights: auto). For batching use an .onnx or auto")  # fmt: skip
    p.add_argument("--resolution", type=resolution_int, help="input size (weights only; default: the model's)")
    p.add_argument("--crop", type=crop_float, help="central crop fraction (default: the weights' own)")
    p.add_argument("--threads", type=int_at_least(1), help="CPU threads per inference call (default: the engine's)")
    p.add_argument("--name", help="model name in /v2/models/{name} (default: the predictor's)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int_at_least(0), default=8080)
    p.add_argument("--max-batch", type=int_at_least(1), default=8, help="images per inference call (1: no batching)")
    p.add_argument("--max-wait-ms", type=float_in(0.0, 10_000.0, "max wait (ms)", low_open=False), default=5.0, help="how long a request waits for a batch to fill")
    p.add_argument("--workers", type=int_at_least(1), default=1, help="inference calls running at once (threads)")
    p.add_argument("--processes", type=int_at_least(1), default=1,
                   help="server processes sharing the port, each with its own model and batcher; /metrics sums them (more "
                   "than 1 pays when the HTTP side costs as much CPU as a small model; then --threads 1)")  # fmt: skip
    p.add_argument("--queue-size", type=int_at_least(1), default=64,
                   help="inference requests admitted at once; more get 503 + Retry-After")  # fmt: skip
    p.add_argument("--max-body-mb", type=positive_float, default=20.0, help="request body limit (413 above)")
    p.add_argument("--body-timeout-s", type=positive_float, default=30.0,
                   help="the whole request body must arrive within this (408 after; slow clients)")  # fmt: skip
    p.add_argument("--no-access-log", action="store_true", help="no JSON access log lines on stderr")
    p.set_defaults(func=cmd_serve)


ENV_ARGS = "MOBILENETS_SERVE_ARGS"  # the parsed arguments, for the processes of --processes N


def _serve_settings(args: argparse.Namespace) -> tuple[Predictor, ServeConfig]:
    from ..serve.app import ServeConfig
    from ..tasks import check_task
    from .tasks import predictor_from_args

    predictor = predictor_from_args(args)
    task = args.task or predictor.task
    check_task(predictor, task)
    config = ServeConfig(model_name=args.name, task=task, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                         queue_size=args.queue_size, workers=args.workers,
                         max_body=int(args.max_body_mb * 1024 * 1024), body_timeout_s=args.body_timeout_s,
                         metrics_dir=getattr(args, "metrics_dir", None))  # fmt: skip
    return predictor, config


def _setup_logging(args: argparse.Namespace) -> None:
    log = logging.getLogger("mobilenets.serve")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.WARNING if args.no_access_log else logging.INFO)
    log.propagate = False


def _freeze_startup_objects() -> None:
    # Everything loaded so far (torch, the predictor, FastAPI) lives as long as the process: moved
    # out of the collector's sight, a full collection scans only what requests allocate (~200k
    # objects took 120 ms per collection, stalling every request in flight).
    gc.collect()
    gc.freeze()


def app_from_environment() -> Any:
    """The app of one process of ``serve --processes N`` (a uvicorn factory; arguments in ``MOBILENETS_SERVE_ARGS``)."""
    from ..serve.app import create_app

    args = argparse.Namespace(**json.loads(os.environ[ENV_ARGS]))
    _setup_logging(args)
    app = create_app(*_serve_settings(args))
    _freeze_startup_objects()
    return app


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..serve.app import create_app, uvicorn_config
    except ImportError as e:
        from ..errors import MobilenetsError

        raise MobilenetsError(f"serving needs the serve extra ({e.name} is missing): pip install 'mobilenets[serve]'") from None
    from ..errors import ConfigError

    if args.max_wait_ms < 0:
        raise ConfigError(f"--max-wait-ms must be >= 0, got {args.max_wait_ms}")
    if args.crop is not None and not 0 < args.crop <= 1:
        raise ConfigError(f"--crop must be in (0, 1], got {args.crop}")
    predictor, config = _serve_settings(args)  # in every case: bad arguments fail here, in one line
    app = create_app(predictor, config)
    name = app.state.server.name
    banner = (f"mobilenets: serving {name} ({config.task}, {predictor.describe()['backend']}, max batch "
              f"{args.max_batch}{f', {args.processes} processes' if args.processes > 1 else ''}) on "
              f"http://{args.host}:{args.port}/  (OIP: /v2/models/{name}/infer)")  # fmt: skip
    if args.processes > 1:
        del app, predictor  # each process builds its own
        gc.collect()
        return _serve_processes(args, banner)
    _setup_logging(args)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            app.state.server.draining = True  # /v2/health/ready says no at once; in-flight requests finish
            super().handle_exit(sig, frame)

    # uvicorn re-raises the signal it stopped on once it has shut down; with this handler in
    # place that is a no-op, so a SIGTERM ends in a clean exit 0 instead of death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server = Server(uvicorn_config(app, args.host, args.port))
    print(banner, file=sys.stderr)
    _freeze_startup_objects()
    server.run()
    return 0


def _serve_processes(args: argparse.Namespace, banner: str) -> int:
    """``--processes N``: uvicorn's supervisor binds the port once and runs N processes on it.

    Each process builds its own predictor from the same arguments (the one built here only
    checked them) and shares its metrics through a temporary directory, so that a scrape of
    ``/metrics`` counts every process. SIGTERM or SIGINT to this process stops the processes,
    each finishing its in-flight requests, and then this one exits 0.
    """
    from uvicorn.supervisors import Multiprocess

    from ..serve.app import uvicorn_config

    metrics_dir = tempfile.mkdtemp(prefix="mobilenets-metrics-")  # /metrics of any process sums them all
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    os.environ[ENV_ARGS] = json.dumps({**settings, "metrics_dir": metrics_dir}, default=str)
    config = uvicorn_config(f"{__name__}:app_from_environment", args.host, args.port, factory=True,
                            workers=args.processes)  # fmt: skip
    try:
        sock = config.bind_socket()
        print(banner, file=sys.stderr)
        try:
            Multiprocess(config, sockets=[sock]).run()
        finally:
            sock.close()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
