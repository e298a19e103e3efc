"""``mobilenets serve``: an inference server over the same `Predictor` the CLI uses.

    from mobilenets import load_predictor
    from mobilenets.serve import ServeConfig, create_app
    app = create_app(load_predictor(weights="model.onnx"), ServeConfig(max_batch=8))  # any ASGI server runs it

Layout (KServe's Python model server is the style anchor: a thin FastAPI layer over a
model object that knows nothing of HTTP):

- `serve.protocol`: the Open Inference Protocol v2 as data (parse, encode), no HTTP;
- `serve.batching`: `MicroBatcher` (concurrent requests -> one ``predictor.run``);
- `serve.handlers`: the ``/v1/<task>`` answers, each a task module's function;
- `serve.metrics`: Prometheus text format;
- `serve.app`: the routes, limits and logs; ``static/``: the page at ``/``.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).
"""

from __future__ import annotations

from typing import Any

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name: str) -> Any:  # FastAPI is imported only when the app is asked for
    if name in __all__:
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
