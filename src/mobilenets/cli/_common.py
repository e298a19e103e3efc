"""Helpers shared by the CLI modules: the ONE argument validation layer, output-path checks, output.

Every number a command takes goes through a type here, so a bad value is a one-line usage
error (exit 2) before any work starts, never a traceback from deep inside a library:

==================  ===========================================  =====================
what                type                                          range
==================  ===========================================  =====================
threads             `threads_int`                                 1 .. `MAX_THREADS`
batch size          `batch_int`                                   1 .. `MAX_BATCH`
DataLoader workers  `workers_int`                                 0 .. `MAX_WORKERS`
input resolution    `resolution_int`                              32 .. `MAX_RESOLUTION`
width multiplier    `alpha_float`                                 finite, (0, `MAX_ALPHA`]
crop fraction       `crop_float`                                  finite, (0, 1]
counts (top-k ...)  `int_at_least` / `positive_int`               >= 1 (or as given)
times (ms)          `positive_float`                              finite, > 0
==================  ===========================================  =====================

Files a command writes are checked by `check_output` before the work that produces them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError

MAX_THREADS = 1024
MAX_BATCH = 4096
MAX_WORKERS = 256
# 2048 x 2048 needs ~0.5 GiB per activation at alpha 1 (batch 1); larger inputs only exhaust memory.
MAX_RESOLUTION = 2048
MAX_ALPHA = 4.0  # 4096 channels in the last layer; the published widths are 0.25 .. 1.0


def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None


def positive_float(text: str) -> float:
    """A finite float > 0."""
    value = _number(text, float, "a number")
    if not math.isfinite(value) or not value > 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def int_in(minimum: int, maximum: int | None = None, what: str = "integer"):
    """An argparse type: an integer in ``[minimum, maximum]``, with a one-line message otherwise."""

    def parse(text: str) -> int:
        value = _number(text.strip(), int, "an integer")
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its own errors
    return parse


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    return int_in(minimum)


def float_in(low: float, high: float, what: str, low_open: bool = True):
    """An argparse type: a finite float in ``(low, high]`` (``[low, high]`` with ``low_open=False``)."""

    def parse(text: str) -> float:
        value = _number(text, float, "a number")
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not ok:
            raise argparse.ArgumentTypeError(f"{what} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {text}")
        return value

    parse.__name__ = what
    return parse


positive_int = int_in(1)
threads_int = int_in(1, MAX_THREADS, "threads")
batch_int = int_in(1, MAX_BATCH, "batch size")
workers_int = int_in(0, MAX_WORKERS, "workers")
resolution_int = int_in(32, MAX_RESOLUTION, "resolution")
alpha_float = float_in(0.0, MAX_ALPHA, "alpha")
crop_float = float_in(0.0, 1.0, "crop fraction")


def path_arg(text: str) -> str:
    """A file or folder argument: refuses '' (which would silently mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path")
    return text


path_arg.__name__ = "path"


def list_of(item_type, what: str = "values"):
    """An argparse type for ``nargs='+'`` options that also accept comma-separated items: ``1 2`` == ``1,2``."""

    def parse(text: str) -> list:
        items = [t for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return [item_type(t.strip()) for t in items]

    parse.__name__ = what
    return parse


def flatten(values: list | None) -> list | None:
    """``[[1, 2], [4]] -> [1, 2, 4]`` without repeats (what `list_of` with ``nargs='+'`` gives)."""
    if values is None:
        return None
    out: list = []
    for v in values:
        for x in v if isinstance(v, list) else [v]:
            if x not in out:
                out.append(x)
    return out


# --- files a command writes -------------------------------------------------------------------


def check_output(path: str | os.PathLike, flag: str = "-o", suffixes: tuple[str, ...] = ()) -> Path:
    """`ConfigError` (one line) unless ``path`` can be written as a file; run it before the work.

    Refused: a path naming a directory (or ending in a separator), a parent that is a file,
    a folder where a file cannot be created (permissions, read-only file system), and, when
    ``suffixes`` are given, a known model suffix other than those (``-o x.onnx`` for a .tflite).
    """
    text = os.fspath(path)
    p = Path(text)
    if not text or text.endswith((os.sep, "/")) or p.is_dir():
        raise ConfigError(f"{flag} {text}: is a directory; give the file to write (e.g. {Path(text) / ('out' + (suffixes[0] if suffixes else ''))})")
    if suffixes:
        known = {".onnx", ".tflite", ".safetensors", ".npy", ".npz", ".json", ".png"}
        suffix = p.suffix.lower()
        if suffix in known and suffix not in suffixes:
            raise ConfigError(f"{flag} {text}: the file would be {'/'.join(suffixes)} but is named {suffix}; "
                              f"name it {p.with_suffix(suffixes[0]).name}")  # fmt: skip
    parent = p.parent
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {text}: {existing} is not a folder")
    if existing == parent:
        try:  # os.access says yes to root on a read-only file system: try it
            fd, probe = tempfile.mkstemp(prefix=f".{p.name[:40]}.", suffix=".probe", dir=parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ConfigError(f"{flag} {text}: cannot write in {parent} ({e.strerror or e})") from None
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {text}: cannot create {parent} (no write permission in {existing})")
    return p


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=None if isinstance(obj, dict) else 1)
    sys.stdout.write("\n")


def format_table(headers: list[str], rows: list[list[Any]], align: str | None = None) -> str:
    """A plain-text table; ``align`` is one 'l'/'r' per column (default: first left, rest right)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    align = align or "l" + "r" * (len(headers) - 1)

    def fmt(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    lines = [fmt(headers), "  ".join("-" * w for w in widths)]
    lines += [fmt(r) for r in cells]
    return "\n".join(lines)


class HelpFormatter(argparse.HelpFormatter):
    """``--help`` shows each option's default (when it has one worth showing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, argparse.SUPPRESS) or action.option_strings == []
                or isinstance(action, (argparse._HelpAction, argparse._VersionAction))):  # fmt: skip
            return text
        if isinstance(default, list):
            shown = " ".join(str(v) for v in flatten(default) or [])
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})" if text else f"(default: {shown.replace('%', '%%')})"
