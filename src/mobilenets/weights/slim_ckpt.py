"""Read TF-Slim MobileNet v1 checkpoints (TensorFlow's V2 tensor bundle) without TensorFlow.

A checkpoint ``X`` is two files. ``X.index`` is a LevelDB-style sorted table (blocks of
prefix-compressed key/value entries, each block followed by a type byte and a masked
CRC32C; a 48-byte footer holds the index block's handle and a magic number). Its key ""
holds a ``BundleHeaderProto`` (shard count, endianness); every other key is a variable
name whose value is a ``BundleEntryProto`` (dtype, shape, shard, offset, size, masked
CRC32C of the bytes). ``X.data-0000k-of-0000n`` holds the raw little-endian tensors.
The few protobuf fields needed are decoded here directly; every block and every tensor
read is checked against its size and CRC32C, so truncation and corruption are errors.
`open_checkpoint` gives that reader (`Checkpoint`); `ssd_ckpt` reads detection-zoo files with it.

Variables are matched by inverting ``slim_name_map`` (`models.mobilenet_v1`): slim's
HWIO conv kernels become OIHW, depthwise HWIM kernels (C*M, 1, kh, kw), and a missing
``BatchNorm/gamma`` (slim's ``scale=False``) becomes 1.0. Optimizer slots, ``global_step``
and quantization ``min``/``max`` variables are never read.

Exponential moving averages: when a variable has a ``<name>/ExponentialMovingAverage``
shadow, the shadow is used by default, because TF-Slim's eval restores the averaged
values (``ExponentialMovingAverage.variables_to_restore``) and the published accuracies
come from them; ``use_ema=False`` reads the raw training values instead.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import WeightsError
from ..models.mobilenet_v1 import MobileNetV1, slim_name_map
from . import LoadedWeights, infer_alpha

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48  # two block handles padded to 40 bytes, then the 8-byte magic
_BLOCK_TRAILER = 5  # compression type byte + masked CRC32C
EMA_SUFFIX = "/ExponentialMovingAverage"
# TensorFlow DataType enum -> numpy dtype, for the float types weights come in.
_FLOAT_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 19: np.dtype("<f2")}  # DT_FLOAT, DT_DOUBLE, DT_HALF
_SHARD_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")


# --- CRC32C (Castagnoli), vectorised with numpy --------------------------------------------


def _crc_table() -> np.ndarray:
    t = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        t = np.where(t & 1, (t >> 1) ^ np.uint32(0x82F63B78), t >> 1).astype(np.uint32)
    return t


_CRC_TABLE = _crc_table()


def _feed(regs: np.ndarray, data: np.ndarray) -> np.ndarray:
    """Advance one CRC register per row of ``data`` (lanes x n bytes) by that row's bytes."""
    for column in np.asfortranarray(data).T:
        regs = _CRC_TABLE[(regs ^ column) & 0xFF] ^ (regs >> 8)
    return regs


def _apply(cols: np.ndarray, regs: np.ndarray) -> np.ndarray:
    """The GF(2)-linear map with columns ``cols`` (32,) applied to each register in ``regs``."""
    bits = (regs[:, None] >> np.arange(32, dtype=np.uint32)) & 1
    return np.bitwise_xor.reduce(np.where(bits.astype(bool), cols[None, :], np.uint32(0)), axis=1)


@functools.lru_cache(maxsize=256)
def _zero_maps(lanes: int, width: int) -> tuple[np.ndarray, ...]:
    """The join matrices of each tree level for ``lanes`` lanes of ``width`` bytes (the same for every call)."""
    maps = []
    zeros = _feed(np.uint32(1) << np.arange(32, dtype=np.uint32), np.zeros((32, width), np.uint8))
    while lanes > 1:
        maps.append(zeros)
        zeros, lanes = _apply(zeros, zeros), lanes // 2
    return tuple(maps)


def crc32c(data: bytes) -> int:
    """CRC32C of ``data``.

    A byte-at-a-time CRC is a serial chain, so the bytes are cut into 2^k equal lanes fed in
    parallel, then joined pairwise: CRC registers are linear, so the register after ``a + b``
    is ``Z(reg(a)) ^ reg(b)``, where ``Z`` (the effect of len(b) zero bytes) is a 32x32 bit
    matrix, squared at each level of the tree.
    """
    buf = np.frombuffer(data, dtype=np.uint8)
    lanes = 1 << min(12, max(0, (len(buf) // 64).bit_length() - 1))
    width = len(buf) // lanes
    regs = np.zeros(lanes, np.uint32)
    regs[0] = 0xFFFFFFFF
    regs = _feed(regs, buf[: lanes * width].reshape(lanes, width))
    for zeros in _zero_maps(lanes, width):
        regs = _apply(zeros, regs[0::2]) ^ regs[1::2]
    reg = _feed(regs, buf[lanes * width :][None, :])
    return int(reg[0]) ^ 0xFFFFFFFF


def _unmask(masked: int) -> int:
    """Undo LevelDB/TF's CRC masking (``rot15(crc) + 0xa282ead8``)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# --- protobuf wire format, just enough for BundleEntryProto / BundleHeaderProto -----------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("bad varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs of a serialized protobuf message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        wire = tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if pos + n > len(buf):
                raise ValueError("truncated fixed field")
            value, pos = int.from_bytes(buf[pos : pos + n], "little"), pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            value, pos = buf[pos : pos + n], pos + n
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield tag >> 3, value


@dataclass
class _Entry:
    """The fields of a ``BundleEntryProto`` this reader uses."""

    dtype: int = 0
    shape: tuple[int, ...] = ()
    shard: int = 0
    offset: int = 0
    size: int = 0
    crc: int | None = None
    sliced: bool = False


def _parse_entry(value: bytes) -> _Entry:
    e = _Entry()
    for num, v in _fields(value):
        if num == 1:
            e.dtype = v
        elif num == 2:  # TensorShapeProto: repeated Dim dim = 2 { int64 size = 1 }
            e.shape = tuple(next((s for n, s in _fields(d) if n == 1), 0) for n, d in _fields(v) if n == 2)
        elif num == 3:
            e.shard = v
        elif num == 4:
            e.offset = v
        elif num == 5:
            e.size = v
        elif num == 6:
            e.crc = _unmask(v)
        elif num == 7:
            e.sliced = True
    return e


# --- the .index table --------------------------------------------------------------------


def _block(data: bytes, handle: bytes, path: Path) -> bytes:
    """The contents of the block a BlockHandle (varint offset, varint size) points to, checked."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    end = offset + size + _BLOCK_TRAILER
    if end > len(data) - _FOOTER_SIZE:
        raise WeightsError(f"{path}: truncated checkpoint index (block at {offset} runs past the end)")
    contents, kind = data[offset : offset + size], data[offset + size]
    if kind != 0:
        raise WeightsError(f"{path}: compressed checkpoint index (type {kind}) is not supported")
    stored = int.from_bytes(data[offset + size + 1 : end], "little")
    if crc32c(data[offset : offset + size + 1]) != _unmask(stored):
        raise WeightsError(f"{path}: corrupt checkpoint index (block at {offset} fails its CRC32C check)")
    return contents


def _block_items(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of a table block (keys share prefixes with their predecessor)."""
    restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * restarts
    if end < 0:
        raise ValueError("bad restart array")
    pos, key = 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > end:
            raise ValueError("bad block entry")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + vlen]
        pos += vlen


def _read_index(path: Path) -> tuple[int, dict[str, _Entry]]:
    """(number of data shards, {variable name: entry}) from a checkpoint's ``.index`` file."""
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE or int.from_bytes(data[-8:], "little") != _TABLE_MAGIC:
        raise WeightsError(f"{path}: not a TensorFlow checkpoint index (bad or missing footer; truncated?)")
    try:
        footer = data[-_FOOTER_SIZE:-8]
        _, pos = _varint(footer, _varint(footer, 0)[1])  # skip the metaindex handle
        index = _block(data, footer[pos:], path)
        entries: dict[str, _Entry] = {}
        num_shards = None
        for _, handle in _block_items(index):
            for key, value in _block_items(_block(data, handle, path)):
                if key == b"":
                    header = dict(_fields(value))
                    if header.get(2, 0) != 0:
                        raise WeightsError(f"{path}: big-endian checkpoints are not supported")
                    num_shards = header.get(1, 1)
                else:
                    entries[key.decode("utf-8", "replace")] = _parse_entry(value)
    except ValueError as e:
        raise WeightsError(f"{path}: corrupt checkpoint index ({e})") from None
    if num_shards is None:
        raise WeightsError(f"{path}: checkpoint index has no header entry")
    return num_shards, entries


# --- variables -> our state dict -------------------------------------------------------------


def _prefix(path: Path) -> Path:
    """The checkpoint prefix for ``X``, ``X.index`` or ``X.data-0000k-of-0000n``."""
    if path.name.endswith(".index"):
        return path.with_name(path.name[: -len(".index")])
    m = _SHARD_RE.search(path.name)
    return path.with_name(path.name[: m.start()]) if m else path


class Checkpoint:
    """An opened V2 checkpoint: its variables' entries, and single tensors read and checked on demand.

    ``open_checkpoint`` makes one; `read_slim_checkpoint` and `ssd_ckpt.read_ssd_checkpoint` share it.
    """

    def __init__(self, prefix: Path, index: Path, num_shards: int, entries: dict[str, _Entry]) -> None:
        self.prefix, self.index, self.num_shards, self.entries = prefix, index, num_shards, entries

    def shard(self, i: int) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}.data-{i:05d}-of-{self.num_shards:05d}")

    def shape(self, name: str) -> tuple[int, ...]:
        """The shape the index records for variable ``name``."""
        return self.entries[name].shape

    def read(self, name: str) -> np.ndarray:
        """Variable ``name`` as float32, checked against its recorded size and CRC32C."""
        e = self.entries[name]
        dtype = _FLOAT_DTYPES.get(e.dtype)
        if dtype is None or e.sliced:
            what = "a partitioned variable" if e.sliced else f"of TF dtype {e.dtype}"
            raise WeightsError(f"{self.prefix}: {name} is {what}; expected a float tensor")
        count = int(np.prod(e.shape, dtype=np.int64))
        shard = self.shard(e.shard)
        if e.size != count * dtype.itemsize:
            raise WeightsError(
                f"{self.prefix}.index: {name} records {e.size} bytes for shape {list(e.shape)} (corrupt)"
            )
        try:
            with open(shard, "rb") as f:
                f.seek(e.offset)
                raw = f.read(e.size)
        except OSError as err:
            raise WeightsError(f"{shard}: cannot read checkpoint data ({err.strerror or err})") from None
        if len(raw) != e.size:
            end = e.offset + len(raw)
            raise WeightsError(
                f"{shard}: truncated checkpoint data ({name} ends at byte {e.offset + e.size}, the file at {end})"
            )
        if e.crc is not None and crc32c(raw) != e.crc:
            raise WeightsError(f"{shard}: corrupt checkpoint data ({name} fails its CRC32C check)")
        return np.frombuffer(raw, dtype=dtype).astype(np.float32).reshape(e.shape)

    def read_averaged(self, name: str, use_ema: bool) -> tuple[np.ndarray, bool]:
        """``(value, averaged)``: the ``ExponentialMovingAverage`` shadow of ``name`` when asked and present."""
        if use_ema and name + EMA_SUFFIX in self.entries:
            shadow = self.entries[name + EMA_SUFFIX].shape
            if shadow != self.entries[name].shape:
                raise WeightsError(f"{self.index}: {name}{EMA_SUFFIX} has shape {list(shadow)}, its variable "
                                   f"{list(self.entries[name].shape)} (corrupt)")  # fmt: skip
            return self.read(name + EMA_SUFFIX), True
        return self.read(name), False


def open_checkpoint(path: str | Path) -> Checkpoint:
    """The checkpoint at ``path`` (its prefix ``X``, ``X.index`` or a data shard), index read and checked."""
    path = Path(path)
    prefix = _prefix(path)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise WeightsError(f"{path}: no such checkpoint (expected {index} and its .data-* shard(s))")
    num_shards, entries = _read_index(index)
    return Checkpoint(prefix, index, num_shards, entries)


def tf_to_torch(name: str, value: np.ndarray) -> torch.Tensor:
    """TF layout -> PyTorch layout, by variable name: HWIO -> OIHW, depthwise HWCM -> (C*M, 1, kh, kw)."""
    if name.endswith("depthwise_weights"):  # (kh, kw, C, M) -> (C*M, 1, kh, kw)
        kh, kw = value.shape[:2]
        value = value.transpose(2, 3, 0, 1).reshape(-1, 1, kh, kw)
    elif value.ndim == 4:  # HWIO -> OIHW
        value = value.transpose(3, 2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(value))


def read_slim_checkpoint(path: str | Path | Checkpoint, use_ema: bool = True) -> LoadedWeights:
    """Weights of a TF-Slim MobileNet v1 checkpoint as our state dict (see module docstring).

    Args:
        path: the checkpoint prefix ``X.ckpt``, its ``X.ckpt.index``, a data shard, or an opened `Checkpoint`.
        use_ema: read ``ExponentialMovingAverage`` shadows where the checkpoint has them.
    """
    ckpt = path if isinstance(path, Checkpoint) else open_checkpoint(path)
    entries, index = ckpt.entries, ckpt.index

    with torch.device("meta"):  # only the key set is needed, never the tensors
        names = slim_name_map(MobileNetV1(num_classes=1))
    if names["features.Conv2d_0.conv.weight"] not in entries:
        if any(k.startswith("FeatureExtractor/") for k in entries):
            raise WeightsError(f"{index}: a TF Object Detection API checkpoint (FeatureExtractor/... variables), "
                               "not a TF-Slim MobileNet v1 classifier")  # fmt: skip
        sample = ", ".join(sorted(entries)[:3]) or "no variables"
        raise WeightsError(
            f"{index}: not a TF-Slim MobileNet v1 checkpoint (no MobilenetV1/Conv2d_0/weights; has {sample})"
        )
    has_head = [names[k] in entries for k in ("classifier.weight", "classifier.bias")]
    if any(has_head) and not all(has_head):
        raise WeightsError(f"{index}: logits layer has weights or biases but not both")

    state: dict[str, torch.Tensor] = {}
    missing, averaged = [], 0
    for ours, slim in names.items():
        if slim in entries:
            value, shadow = ckpt.read_averaged(slim, use_ema)
            averaged += shadow
            state[ours] = tf_to_torch(slim, value)
        elif not (ours.endswith("bn.weight") or ours.startswith("classifier.")):
            missing.append(slim)
    if missing:
        raise WeightsError(f"{index}: MobileNet v1 variables missing from the checkpoint: {', '.join(missing[:3])}"
                           + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))  # fmt: skip
    for key in [k for k in names if k.endswith("bn.bias")]:
        gamma = key[: -len("bias")] + "weight"
        state.setdefault(gamma, torch.ones_like(state[key]))  # slim's scale=False: gamma is 1

    alpha = infer_alpha(state, index)
    num_classes = int(state["classifier.weight"].shape[0]) if all(has_head) else 0
    meta = {"ema": averaged > 0, "ema_tensors": averaged}
    return LoadedWeights(state, alpha, num_classes, None, str(ckpt.prefix), "slim-ckpt", None, meta)
