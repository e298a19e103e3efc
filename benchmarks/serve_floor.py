"""The HTTP floor for `serve_load.py`: a bare ASGI app on uvicorn (no FastAPI, no model).

It reads the whole request body and answers an OIP binary response of one 1 x 1001 FP32
tensor (the size the real server sends), so the load generator measures what uvicorn and the
loopback cost per request before any of the server's own work.

    python -m uvicorn --app-dir benchmarks serve_floor:app --loop uvloop --http httptools
"""

from __future__ import annotations

import json

_TENSOR = bytes(1001 * 4)
_HEADER = json.dumps({"model_name": "floor", "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [1, 1001],
                                                          "parameters": {"binary_data_size": len(_TENSOR)}}]}).encode()  # fmt: skip
_BODY = _HEADER + _TENSOR
_HEADERS = [(b"content-type", b"application/octet-stream"), (b"content-length", str(len(_BODY)).encode()),
            (b"inference-header-content-length", str(len(_HEADER)).encode())]  # fmt: skip


async def app(scope: dict, receive, send) -> None:
    if scope["type"] != "http":
        return
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    await send({"type": "http.response.start", "status": 200 if body else 400, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})
