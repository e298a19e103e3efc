"""Hypothesis profiles for the fuzz suite.

``ci`` (default): a fixed number of examples per test, derandomized (the same inputs on
every run), no example database written; the whole suite is >= 5,000 mutated inputs in
under 3 minutes on 2 cores. ``long``: ten times the examples, random, for a soak run:

    HYPOTHESIS_PROFILE=long pytest tests/fuzz
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PER_CASE_S = 10.0  # every single input is handled (result or one-line error) within this

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                                        HealthCheck.data_too_large], "database": None}  # fmt: skip
settings.register_profile("ci", derandomize=True, print_blob=True, **_common)
settings.register_profile("long", derandomize=False, print_blob=True, **_common)
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)


def examples(n: int) -> int:
    """``n`` examples in CI, 10 x ``n`` under the long profile."""
    return n * 10 if PROFILE == "long" else n


# --- mutation of real files -------------------------------------------------------------------

import time
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from mobilenets.errors import MobilenetsError

_EXTREMES = (0, 1, 0x7F, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


class Mutated(bytes):
    """Mutated file bytes whose repr (in a failure report) is the list of edits, not megabytes of data."""

    ops: list

    def __repr__(self) -> str:
        return f"Mutated(len={len(self)}, edits={self.ops})"


@st.composite
def mutations(draw, data: bytes, hot: list[tuple[int, int]] | None = None) -> Mutated:
    """``data`` with 1-4 edits: truncation, bit flips, random or extreme bytes, deleted or repeated ranges.

    Positions fall in ``hot`` ranges (the file's structure: headers, tables, offsets) half the time.
    """
    out = bytearray(data)
    ops = []
    for _ in range(draw(st.integers(1, 4))):
        if not out:
            break
        n = len(out)
        ranges = [(a, min(b, n)) for a, b in (hot or []) if a < min(b, n)]
        if ranges and draw(st.booleans()):
            a, b = ranges[draw(st.integers(0, len(ranges) - 1))]
            pos = draw(st.integers(a, b - 1))
        else:
            pos = draw(st.integers(0, n - 1))
        op = draw(st.sampled_from(["truncate", "flip", "random", "extreme", "delete", "repeat"]))
        ops.append((op, pos))
        if op == "truncate":
            del out[pos:]
        elif op == "flip":
            out[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "random":
            k = draw(st.integers(1, 8))
            out[pos : pos + k] = draw(st.binary(min_size=k, max_size=k))
        elif op == "extreme":
            value = draw(st.sampled_from(_EXTREMES + (n, n + 1, n - pos)))
            out[pos : pos + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        elif op == "delete":
            del out[pos : pos + draw(st.integers(1, 64))]
        else:
            k = draw(st.integers(1, 64))
            out[pos:pos] = out[pos : pos + k]
    result = Mutated(bytes(out))
    result.ops = ops
    return result


COUNT = {"inputs": 0, "seconds": 0.0}


def pytest_terminal_summary(terminalreporter) -> None:
    if COUNT["inputs"]:
        terminalreporter.write_line(f"fuzz: {COUNT['inputs']} inputs (mutated files and argument lists), "
                                    f"{COUNT['seconds']:.0f} s in the code under test, profile {PROFILE}")  # fmt: skip


def one_outcome(fn: Callable[[], Any], count: bool = True) -> Any:
    """``fn()``'s result, or None when it raised a one-line `MobilenetsError`; anything else fails the test.

    Also bounds the time of the single case (`PER_CASE_S`).
    """
    COUNT["inputs"] += count
    start = time.perf_counter()
    try:
        result = fn()
    except MobilenetsError as e:
        assert "\n" not in str(e).strip(), f"multi-line error: {e!r}"
        result = None
    elapsed = time.perf_counter() - start
    COUNT["seconds"] += elapsed
    assert elapsed < PER_CASE_S, f"one input took {elapsed:.1f} s"
    return result


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """``mobilenets.cli.main(argv)`` in this process: (exit code, stdout, stderr); checks the exit contract.

    Exit 0 (a result) or 2 with exactly one line on stderr; never a traceback; within `PER_CASE_S`.
    """
    from mobilenets.cli import main

    capsys.readouterr()
    COUNT["inputs"] += 1
    start = time.perf_counter()
    rc = main(argv)
    elapsed = time.perf_counter() - start
    COUNT["seconds"] += elapsed
    out, err = capsys.readouterr()
    assert elapsed < PER_CASE_S, f"{argv} took {elapsed:.1f} s"
    assert "Traceback" not in err, err
    assert rc in (0, 2), (rc, argv, err[-2000:])
    if rc == 2:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, (argv, err)
    return rc, out, err
