"""The Open Inference Protocol v2 (KServe / Triton REST), as data: parse requests, build answers.

No HTTP here: `parse_infer_request` takes the body bytes (and the
``Inference-Header-Content-Length`` header of the binary tensor extension) and gives
`InferInput` s; `encode_infer_response` turns named arrays back into a body. Every mistake a
client can make raises `ProtocolError` (an HTTP status and one line), never anything else.

Tensors in JSON (the spec's "tensor data" convention): ``data`` is the row-major flattened
(or nested) list of values, ``shape`` its dimensions. ``BYTES`` elements are strings; an
encoded image does not survive as UTF-8 text, so a JSON ``BYTES`` element is the image
base64-encoded (``{"b64": "..."}`` is taken too). With the binary tensor extension
(``parameters.binary_data_size`` on the input) the bytes after the JSON header are the
tensor: raw little-endian values, or for ``BYTES`` each element as a 4-byte little-endian
length and then its bytes; outputs come back the same way when asked
(``parameters.binary_data`` on a requested output, or ``binary_data_output`` on the request).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MobilenetsError

#: OIP datatype name -> numpy dtype (BYTES: Python bytes objects)
DATATYPES: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
    "FP32": np.float32, "FP64": np.float64, "BYTES": object,
}  # fmt: skip
_NUMPY_TO_OIP = {np.dtype(v): k for k, v in DATATYPES.items() if v is not object}
MAX_ELEMENTS = 1 << 26  # a shape whose product is above this is refused before anything is allocated
HEADER = "Inference-Header-Content-Length"


class ProtocolError(MobilenetsError):
    """A request the protocol (or this model) cannot take: ``status`` and a one-line message."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferInput:
    name: str
    datatype: str
    shape: tuple[int, ...]
    data: np.ndarray | list[bytes]  # a numeric array of ``shape``, or BYTES elements (flattened)


@dataclass
class InferRequest:
    id: str | None
    inputs: list[InferInput]
    outputs: list[str] | None  # None: every declared output
    binary: set[str] = field(default_factory=set)  # outputs to return as binary data
    binary_all: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def oip_datatype(dtype: str | np.dtype) -> str:
    """The OIP name of a numpy dtype ("float32" -> "FP32")."""
    try:
        return _NUMPY_TO_OIP[np.dtype(dtype)]
    except (KeyError, TypeError):
        return "BYTES"


def _obj(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        raise ProtocolError(f"{what}.shape must be a list of integers")
    if any(d < 0 for d in value):
        raise ProtocolError(f"{what}.shape has a negative dimension: {value}")
    if math.prod(value) > MAX_ELEMENTS:
        raise ProtocolError(f"{what}.shape {value} is too large", 413)
    return tuple(value)


def _flatten(data: Any, what: str) -> list:
    """A nested JSON list flattened row-major (the spec allows both forms)."""
    if not isinstance(data, list):
        raise ProtocolError(f"{what}.data must be a list")
    if not data or not isinstance(data[0], list):
        return data
    out: list = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _bytes_element(item: Any, what: str) -> bytes:
    if isinstance(item, dict) and isinstance(item.get("b64"), str):
        item = item["b64"]
    if not isinstance(item, str):
        raise ProtocolError(f"{what}: BYTES elements in JSON must be base64 strings")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"{what}: a BYTES element is not valid base64 (encode images as base64 in JSON, "
                            "or send them as binary data)") from None  # fmt: skip


def _numeric_from_json(values: list, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    if len(values) != math.prod(shape):
        raise ProtocolError(f"{what}: {len(values)} values do not fill shape {list(shape)}")
    kinds = (bool,) if datatype == "BOOL" else (int, float)
    for v in values:  # reject strings, nulls and booleans posing as numbers (numpy would coerce them)
        if not isinstance(v, kinds) or (datatype != "BOOL" and isinstance(v, bool)):
            raise ProtocolError(f"{what}: {datatype} data holds a {type(v).__name__} ({str(v)[:20]!r})")
    try:
        arr = np.asarray(values, dtype=np.float64 if datatype.startswith("FP") else None)
        return arr.astype(DATATYPES[datatype], casting="unsafe").reshape(shape)
    except (ValueError, OverflowError, TypeError):
        raise ProtocolError(f"{what}: data does not fit {datatype}") from None


def _split_bytes(raw: memoryview, what: str) -> list[bytes]:
    out, i = [], 0
    while i < len(raw):
        if i + 4 > len(raw):
            raise ProtocolError(f"{what}: binary BYTES data ends inside a length prefix")
        n = int.from_bytes(raw[i : i + 4], "little")
        i += 4
        if i + n > len(raw):
            raise ProtocolError(f"{what}: binary BYTES element of {n} bytes runs past the data")
        out.append(bytes(raw[i : i + n]))
        i += n
    return out


def parse_infer_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """An `InferRequest` from an ``/infer`` body (JSON, or JSON + binary tensors with ``header_length``)."""
    binary = memoryview(b"")
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise ProtocolError(f"{HEADER} must be an integer, got {header_length[:20]!r}") from None
        if not 0 <= n <= len(body):
            raise ProtocolError(f"{HEADER} {n} is outside the body ({len(body)} bytes)")
        binary, body = memoryview(body)[n:], body[:n]
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise ProtocolError("the request body is not valid JSON") from None
    doc = _obj(doc, "the request")
    params = doc.get("parameters") or {}
    params = _obj(params, "parameters")
    inputs_doc = doc.get("inputs")
    if not isinstance(inputs_doc, list) or not inputs_doc:
        raise ProtocolError("the request needs a non-empty 'inputs' list")
    offset = 0
    inputs = []
    for k, item in enumerate(inputs_doc):
        item = _obj(item, f"inputs[{k}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise ProtocolError(f"inputs[{k}].name must be a string")
        what = f"input {name[:40]!r}"
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise ProtocolError(f"{what}: unknown datatype {str(datatype)[:20]!r} (one of {', '.join(DATATYPES)})")
        shape = _shape(item.get("shape"), what)
        ip = _obj(item.get("parameters") or {}, f"{what}.parameters")
        size = ip.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size < 0 or offset + size > len(binary):
                raise ProtocolError(f"{what}: binary_data_size {size!r} does not fit the binary data sent")
            raw = binary[offset : offset + size]
            offset += size
            if datatype == "BYTES":
                data: Any = _split_bytes(raw, what)
                if len(data) != math.prod(shape):
                    raise ProtocolError(f"{what}: {len(data)} BYTES elements do not fill shape {list(shape)}")
            else:
                dt = np.dtype(DATATYPES[datatype]).newbyteorder("<")
                if len(raw) != math.prod(shape) * dt.itemsize:
                    raise ProtocolError(f"{what}: {len(raw)} bytes do not fill {datatype} shape {list(shape)}")
                data = np.frombuffer(raw, dt).reshape(shape)  # a read-only view of the body: no copy
                if not dt.isnative:
                    data = data.astype(dt.newbyteorder("="))
        else:
            if "data" not in item:
                raise ProtocolError(f"{what} has no 'data' (nor parameters.binary_data_size)")
            values = _flatten(item["data"], what)
            if datatype == "BYTES":
                if len(values) != math.prod(shape):
                    raise ProtocolError(f"{what}: {len(values)} BYTES elements do not fill shape {list(shape)}")
                data = [_bytes_element(v, what) for v in values]
            else:
                data = _numeric_from_json(values, datatype, shape, what)
        inputs.append(InferInput(name, datatype, shape, data))
    if offset != len(binary):
        raise ProtocolError(f"{len(binary) - offset} bytes of binary data are not claimed by any input")
    outputs, wanted_binary = None, set()
    if doc.get("outputs") is not None:
        if not isinstance(doc["outputs"], list):
            raise ProtocolError("'outputs' must be a list")
        outputs = []
        for k, item in enumerate(doc["outputs"]):
            item = _obj(item, f"outputs[{k}]")
            if not isinstance(item.get("name"), str):
                raise ProtocolError(f"outputs[{k}].name must be a string")
            outputs.append(item["name"])
            if _obj(item.get("parameters") or {}, f"outputs[{k}].parameters").get("binary_data"):
                wanted_binary.add(item["name"])
    rid = doc.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError("'id' must be a string")
    return InferRequest(rid, inputs, outputs, wanted_binary, bool(params.get("binary_data_output")), params)


def encode_infer_response(model_name: str, outputs: dict[str, np.ndarray], request: InferRequest,
                          version: str | None = None) -> tuple[bytes, dict[str, str]]:  # fmt: skip
    """The ``/infer`` answer body and its extra headers (binary tensors when the request asked)."""
    docs, chunks = [], []
    for name, y in outputs.items():
        y = np.asarray(y)
        d: dict[str, Any] = {"name": name, "datatype": oip_datatype(y.dtype), "shape": list(y.shape)}
        if request.binary_all or name in request.binary:
            raw = np.ascontiguousarray(y, y.dtype.newbyteorder("<")).tobytes()
            d["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            d["data"] = y.reshape(-1).tolist()
        docs.append(d)
    doc: dict[str, Any] = {"model_name": model_name, "outputs": docs}
    if version is not None:
        doc["model_version"] = version
    if request.id is not None:
        doc["id"] = request.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return head, {}
    return head + b"".join(chunks), {HEADER: str(len(head))}


def tensor_metadata(name: str, datatype: str, shape: tuple[int, ...] | list[int]) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": list(shape)}
