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

Integrity. A file whose sha256 is pinned in `PINNED_SHA256` is refused when its bytes
differ, whether downloaded or put in ``downloads/`` by hand. The release ``.tgz`` and
Keras ``.h5`` files have no published digests and no copy was available to verify, so
none are pinned yet; for those the first file seen is trusted and its sha256 recorded
(``downloads/SHA256SUMS``, and in the converted file's ``sha256``): a later file under the
same name with other bytes is refused until the record line is removed. The converted
``<name>.safetensors`` is validated on every read (its tensor digest, and the recorded
download sha256 against the pin); a cache entry that fails is converted again.
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

# sha256 of published files, by the file name of their URL; only digests checked against a real
# copy belong here (Google publishes none for the 2018 .tgz releases or the Keras .h5 files).
PINNED_SHA256: dict[str, str] = {}

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


def _convert(entry: WeightsEntry, raw: Path, url: str, out: Path, sha256: str | None = None) -> Path:
    """Read a downloaded file, check it against the catalog entry and save it as our safetensors."""
    from . import build_model, read_weights, save_weights

    w = read_weights(raw)
    if abs(w.alpha - entry.alpha) > 1e-6:
        raise WeightsError(f"{raw}: has alpha={w.alpha:g}, but {entry.name} is alpha={entry.alpha:g}")
    model = build_model(w, resolution=entry.resolution)
    e = entry.cfg
    return save_weights(model, out, metrics=e.metrics, tag=e.tag, recipe=e.recipe, quantization=e.quantization,
                        url=url, source=url, sha256=sha256 or sha256_file(raw), format=w.format,
                        input_quantization=w.meta.get("input_quantization"))  # fmt: skip


def _sums_file() -> Path:
    return cache_dir() / "downloads" / "SHA256SUMS"


def recorded_sha256() -> dict[str, str]:
    """``{file name: sha256}`` of downloads seen before (trust on first use), from ``downloads/SHA256SUMS``."""
    try:
        lines = _sums_file().read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    out = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and len(parts[0]) == 64:
            out[parts[1]] = parts[0]
    return out


def _record_sha256(file_name: str, digest: str) -> None:
    from ..utils import atomic_write

    sums = {**recorded_sha256(), file_name: digest}
    try:
        with atomic_write(_sums_file()) as tmp:
            tmp.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())))
    except OSError:
        pass  # a read-only cache: the pin, where there is one, still applies


def expected_sha256(url: str) -> tuple[str | None, str]:
    """(the sha256 a download must have, where that comes from: 'pinned' or 'recorded'), or (None, '')."""
    name = download_path(url).name
    if name in PINNED_SHA256:
        return PINNED_SHA256[name], "pinned"
    if name in recorded_sha256():
        return recorded_sha256()[name], "recorded"
    return None, ""


def check_download(url: str, raw: Path) -> str:
    """The sha256 of ``raw``; `WeightsError` when it differs from the pinned (or first recorded) digest."""
    digest = sha256_file(raw)
    want, how = expected_sha256(url)
    if want is not None and digest != want:
        hint = "" if how == "pinned" else f" (recorded on first use in {_sums_file()}; remove that line to accept it)"
        raise WeightsError(f"{raw}: sha256 {digest[:16]}... differs from the {how} {want[:16]}... for {url}{hint}")
    return digest


def _valid_cache(out: Path) -> bool:
    """Whether a converted cache file reads back whole (tensor digest) and matches any pinned download digest."""
    from . import read_weights

    try:
        w = read_weights(out)
    except WeightsError:
        return False
    url = w.cfg.url if w.cfg is not None else None
    if url and download_path(url).name in PINNED_SHA256:
        return w.cfg.sha256 == PINNED_SHA256[download_path(url).name]
    return True


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
        if _valid_cache(out):
            return out
        out.unlink(missing_ok=True)  # damaged or stale: converted again below
    failures = []
    for url in entry.urls:
        raw = download_path(url)
        fetched = not raw.is_file()
        try:
            if fetched:
                download(url, raw, progress)
            digest = check_download(url, raw)
            converted = _convert(entry, raw, url, out, digest)
            if expected_sha256(url)[0] is None:
                _record_sha256(raw.name, digest)  # trust on first use, once the file proved readable
            return converted
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
