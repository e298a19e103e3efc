"""Small shared helpers: the cache folder, atomic writes, file digests, machine identity, quiet native code,
a cheap finiteness test."""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float array is finite, in one pass and without a temporary.

    A finite sum proves it; only a sum that is not (NaN, Inf, or finite values overflowing
    it) needs the element-wise check.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        total = x.sum()
    return bool(np.isfinite(total)) or bool(np.isfinite(x).all())


def cache_dir() -> Path:
    """The package's cache: ``$MOBILENETS_HOME``, else ``~/.cache/mobilenets`` (weights, exports, bench results)."""
    return Path(os.environ.get("MOBILENETS_HOME") or Path.home() / ".cache" / "mobilenets").expanduser()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    On any error the temporary file is removed and ``path`` is left as it was, so a crash
    or Ctrl-C never leaves a half-written file under the real name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def file_key(path: str | os.PathLike) -> str:
    """A short content key for caches (the first 16 hex digits of the file's sha256)."""
    return sha256_file(path)[:16]


# instruction sets that change which backend is fastest and by how much (VNNI: int8 dot products;
# native bf16: what OpenVINO and autocast do)
MACHINE_ISA = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


INT8_DOT_ISA = ("avx512_vnni", "avx_vnni", "amx_int8")


def x86_without_vnni() -> bool:
    """An x86 CPU whose int8 dot products go through VPMADDUBSW (int16 sums that can saturate)."""
    flags = cpu_flags()
    return "avx2" in flags and not any(f in flags for f in INT8_DOT_ISA)


def machine_id() -> str:
    """CPU model, count and the instruction sets that matter: what latency measurements are only valid for.

    Cloud CPUs often report only a family name ("AMD EPYC"), shared by machines with and
    without AVX-512; the flags keep their measurements and `auto` choices apart.
    """
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    isa = [f for f in MACHINE_ISA if f in cpu_flags()]
    return f"{cpu} x{os.cpu_count()}" + (f" ({','.join(isa)})" if isa else "")


@contextlib.contextmanager
def quiet_native(replay: bool = True) -> Iterator[None]:
    """Silence C++/absl output written straight to fds 1 and 2; replay it if the block fails (``replay``).

    This redirects the file descriptors of the whole process, so it is for the CLI and for
    one-off conversions only; never around calls a server makes from several threads.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            if replay:
                log.seek(0)
                sys.stderr.write(log.read()[-4000:].decode("utf-8", "replace"))
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
