"""Download, convert and cache the official weights: ``create_model(name, weights="imagenet")``.

The cache lives in ``$MOBILENETS_HOME``, else ``~/.cache/mobilenets``:

    downloads/<file name of the URL>   the file as published (``.part`` while incomplete)
    <catalog name>.safetensors         converted, with its contract; what later calls reuse

A download goes into ``<file>.part`` and is renamed into place only once complete, so a
file under its real name is always whole. A transfer cut midway is resumed with an HTTP
``Range`` request (a few times within the call; the ``.part`` is kept so the next call
resumes too). A download that turns out unreadable is deleted; the converted file is
written atomically. The catalog's URLs are tried in order (release ``.tgz``, then the Keras
``.h5``). When none can be fetched, the error names the URLs and the exact path where a
file downloaded by hand is picked up.
"""

from __future__ import annotations

import difflib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import WeightsError
from ..models.registry import CATALOG, WeightsEntry
from ..utils import cache_dir, sha256_file

CHUNK = 1 << 20
RESUME_ATTEMPTS = 5
TIMEOUT_S = 30.0


def download_path(url: str) -> Path:
    """Where the file behind ``url`` is kept (and where a copy downloaded by hand is picked up)."""
    return cache_dir() / "downloads" / url.rstrip("/").rsplit("/", 1)[-1]


class DownloadError(Exception):
    """One URL could not be fetched (the caller decides whether that is fatal)."""


def download(url: str, dest: Path, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` through ``dest.part``, resuming with HTTP Range after a cut connection."""
    from tqdm import tqdm

    from ..version import __version__

    part = dest.with_name(dest.name + ".part")
    for _ in range(RESUME_ATTEMPTS):
        have = part.stat().st_size if part.exists() else 0
        headers = {"User-Agent": f"mobilenets/{__version__}", **({"Range": f"bytes={have}-"} if have else {})}
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S) as resp:
                if have and getattr(resp, "status", None) != 206:
                    have = 0  # the server ignored the range: start over
                length = resp.headers.get("Content-Length")
                total = have + int(length) if length and length.isdigit() else None
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(part, "ab" if have else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                    disable=None if progress else True, leave=False,
                ) as bar:  # fmt: skip
                    while chunk := resp.read(CHUNK):
                        f.write(chunk)
                        bar.update(len(chunk))
            got = part.stat().st_size
            if total is not None and got != total:
                raise ConnectionError(f"connection closed after {got} of {total} bytes")
            os.replace(part, dest)
            return dest
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # our partial file does not fit the server's: start over
                part.unlink()
                continue
            raise DownloadError(f"HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = getattr(e, "reason", None) or e
            if part.exists() and part.stat().st_size > have:
                continue  # progress was made: resume from where it stopped
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            raise DownloadError(f"{type(e).__name__}: {reason}") from None
    raise DownloadError(f"transfer kept breaking off; partial download kept at {part}, run again to resume")


def _convert(entry: WeightsEntry, raw: Path, url: str, out: Path) -> Path:
    """Read a downloaded file, check it against the catalog entry and save it as our safetensors."""
    from . import build_model, read_weights, save_weights

    w = read_weights(raw)
    if abs(w.alpha - entry.alpha) > 1e-6:
        raise WeightsError(f"{raw}: has alpha={w.alpha:g}, but {entry.name} is alpha={entry.alpha:g}")
    model = build_model(w, resolution=entry.resolution)
    e = entry.cfg
    return save_weights(model, out, metrics=e.metrics, tag=e.tag, recipe=e.recipe, quantization=e.quantization,
                        url=url, source=url, sha256=sha256_file(raw), format=w.format,
                        input_quantization=w.meta.get("input_quantization"))  # fmt: skip


def fetch_official(name: str, progress: bool = True) -> Path:
    """The converted weights of catalog entry ``name`` (e.g. ``mobilenet_v1_1.0_224[_quant]``), downloading once."""
    entry = CATALOG.get(name)
    if entry is None:
        close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.5)
        raise WeightsError(
            f"no official weights named {name!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
        )
    out = cache_dir() / f"{name}.safetensors"
    if out.is_file():
        return out
    failures = []
    for url in entry.urls:
        raw = download_path(url)
        fetched = not raw.is_file()
        try:
            if fetched:
                download(url, raw, progress)
            return _convert(entry, raw, url, out)
        except DownloadError as e:
            failures.append(f"{url} ({e})")
        except WeightsError as e:
            if fetched:  # a damaged download must not be reused; a file put there by hand is the user's
                raw.unlink(missing_ok=True)
            failures.append(f"{url} (file unusable: {e})")
    by_hand = " or ".join(str(download_path(u)) for u in entry.urls)
    raise WeightsError(
        f"cannot get weights {name}: {'; '.join(failures)}. Download a file by hand to {by_hand} and retry, or pass --weights FILE (.tgz, .ckpt, .h5, .tflite or .safetensors)"
    )
