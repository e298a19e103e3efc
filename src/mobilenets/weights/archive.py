"""Read the official release archives, ``mobilenet_v1_<a>_<res>[_quant].tgz``.

An archive holds a TF-Slim checkpoint (``.ckpt.index`` / ``.ckpt.data-*`` / ``.ckpt.meta``),
a frozen graph (``.pb``), a ``.tflite``, ``_info.txt`` and ``_eval.pbtxt``. The checkpoint is
preferred (float weights with the BatchNorm statistics unfolded); the ``.tflite`` is the
fallback. The input resolution comes from the member's name.

Archives are untrusted: every member is checked before anything is written (no absolute
paths, no ``..``, no links leading outside, no device files or FIFOs; at most
``MAX_MEMBERS`` members and ``MAX_BYTES`` in all), only the regular files needed are
copied out, under their base names, into a temporary directory that is always removed.
"""

from __future__ import annotations

import posixpath
import re
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from ..errors import WeightsError
from . import LoadedWeights

MAX_MEMBERS = 10_000
MAX_BYTES = 1 << 30  # 1 GiB, summed over all members
_RES_RE = re.compile(r"mobilenet_v1_[\d.]+_(\d+)")


def _check_members(tar: tarfile.TarFile, path: Path) -> list[tarfile.TarInfo]:
    """All members, or `WeightsError` on the first one that is unsafe to extract."""
    members, total = [], 0
    for m in tar:
        members.append(m)
        total += m.size
        if len(members) > MAX_MEMBERS or total > MAX_BYTES:
            raise WeightsError(f"{path}: archive is too large (over {MAX_MEMBERS} members or {MAX_BYTES >> 20} MiB)")
        name = m.name.replace("\\", "/")
        if name.startswith("/") or re.match(r"^[A-Za-z]:", name) or ".." in name.split("/"):
            raise WeightsError(f"{path}: unsafe archive member {m.name!r} (absolute path or '..')")
        if m.issym() or m.islnk():
            target = posixpath.normpath(posixpath.join(posixpath.dirname(name) if m.issym() else "", m.linkname))
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                raise WeightsError(
                    f"{path}: unsafe archive member {m.name!r} (link to {m.linkname!r} outside the archive)"
                )
        elif not (m.isfile() or m.isdir()):
            raise WeightsError(f"{path}: unsafe archive member {m.name!r} (device file or FIFO)")
    return members


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, dest: Path) -> Path:
    """Copy one regular member to ``dest/<basename>``."""
    out = dest / posixpath.basename(member.name)
    src = tar.extractfile(member)
    assert src is not None  # regular files always have data
    with src, open(out, "wb") as f:
        shutil.copyfileobj(src, f)
    return out


def read_release_archive(path: str | Path) -> LoadedWeights:
    """Weights from an official ``.tgz`` (or ``.tar``/``.tar.gz``): its checkpoint, else its ``.tflite``.

    Also a TF1 detection-zoo tarball (``ssd_mobilenet_v1_coco_2018_01_28.tar.gz``): its
    ``model.ckpt`` is an Object Detection API checkpoint, read by `ssd_ckpt.read_ssd_checkpoint`.
    """
    from .slim_ckpt import open_checkpoint, read_slim_checkpoint
    from .ssd_ckpt import is_od_api_checkpoint, is_ssd_checkpoint, read_ssd_checkpoint
    from .tflite import read_tflite

    def read_checkpoint(index: Path) -> LoadedWeights:
        ckpt = open_checkpoint(index)  # the variable names say which network it is
        if is_ssd_checkpoint(ckpt.entries) or is_od_api_checkpoint(ckpt.entries):
            return read_ssd_checkpoint(ckpt)
        return read_slim_checkpoint(ckpt)

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such file")
    with tempfile.TemporaryDirectory(prefix="mobilenets-") as tmp:
        try:
            with tarfile.open(path, "r:*") as tar:
                files = [m for m in _check_members(tar, path) if m.isfile()]
                index = [m for m in files if m.name.endswith(".ckpt.index")]
                if index:
                    prefix = index[0].name[: -len(".index")]
                    chosen = [index[0]] + [m for m in files if m.name.startswith(prefix + ".data-")]
                else:
                    chosen = [m for m in files if m.name.endswith(".tflite")][:1]
                if not chosen:
                    raise WeightsError(f"{path}: archive holds no TF-Slim checkpoint (.ckpt.index) or .tflite file")
                local = [_extract(tar, m, Path(tmp)) for m in chosen]
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:  # gzip/bz2/xz errors are OSErrors
            reason = str(e).splitlines()[0].rstrip(":")  # tarfile's "could not be opened" lists every method
            raise WeightsError(
                f"{path}: corrupt, truncated or unreadable archive ({type(e).__name__}: {reason})"
            ) from None
        try:
            w = read_checkpoint(local[0]) if index else read_tflite(local[0])
        except WeightsError as e:  # name the member inside the archive, not the temporary copy
            raise WeightsError(str(e).replace(f"{tmp}/", f"{path}:")) from None
    member = chosen[0].name
    m = _RES_RE.search(posixpath.basename(member))
    w.resolution = w.resolution or (int(m.group(1)) if m else None)
    w.source = f"{path}:{member}"
    w.meta["archive_member"] = member
    return w
