"""Embeddings (pooled pre-logits features) and cosine nearest neighbours over a gallery.

A gallery's embeddings are cached beside it (``DIR/.mobilenets-gallery-<key>.npz``, or in
the user cache when the folder is read-only). The key covers the predictor (name, backend,
resolution, crop) and the *content* of its weights file; each row is keyed by the sha256
of its image file's bytes, so an edited image is embedded again even when its size and
modification time are unchanged. The cache is validated on read (shapes, dtype, finite,
unit norm); a damaged or foreign cache is rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import ImageError, MobilenetsError
from ..runtime import Predictor
from ..utils import atomic_write, cache_dir, sha256_file
from . import Skipped, expand_images

_CACHE_VERSION = 2


def embed_files(predictor: Predictor, paths: list[Path], l2: bool = False, batch_size: int = 16,
                progress: bool = True, strict: bool = False,
                skipped: Skipped | None = None) -> tuple[np.ndarray, list[Path]]:  # fmt: skip
    """``(N x C float32 embeddings, the N paths they belong to)``; unreadable images go to ``skipped``.

    With ``strict`` (or no ``skipped``) the first unreadable image raises its `ImageError`.
    """
    from . import preprocess_batches

    chunks, kept = [], []
    with tqdm(total=len(paths), unit="img", desc="embed", disable=None if progress else True, file=sys.stderr) as bar:
        for batch_paths, batch in preprocess_batches(paths, predictor.transform, batch_size,
                                                     strict=strict or skipped is None, skipped=skipped):  # fmt: skip
            chunks.append(predictor.embed(batch).astype(np.float32))
            kept.extend(batch_paths)
            bar.update(len(batch_paths))
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return (l2_normalize(emb) if l2 else emb), kept


def embed_images(predictor: Predictor, paths: list[Path], l2: bool = False, batch_size: int = 16,
                 progress: bool = True, strict: bool = True,
                 skipped: Skipped | None = None) -> tuple[np.ndarray, list[Path]]:  # fmt: skip
    """`embed_files`, strict by default: ``(embeddings, paths)``; the first bad image raises `ImageError`."""
    return embed_files(predictor, paths, l2, batch_size, progress, strict, skipped)


def rows_file(output: str | os.PathLike) -> Path:
    """The text file beside an embeddings ``.npy`` that names the image of each row (``X.npy`` -> ``X.txt``)."""
    out = Path(output)
    return out.with_name(out.name + ".txt") if out.suffix.lower() != ".npy" else out.with_suffix(".txt")


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cache_key(predictor: Predictor) -> str:
    source = predictor.info.get("source") or predictor.cfg.source
    weights = None
    if source and Path(str(source)).is_file():
        weights = sha256_file(source)  # the weights' content, not their path: a replaced file is a new key
    ident = {"v": _CACHE_VERSION, "name": predictor.name, "backend": predictor.backend,
             "engine": predictor.info.get("engine"), "resolution": predictor.resolution,
             "crop": predictor.crop_fraction, "source": str(source), "weights_sha256": weights,
             "sha256": predictor.info.get("sha256") or predictor.cfg.sha256}  # fmt: skip
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cache_file(gallery: Path, key: str) -> Path:
    beside = gallery / f".mobilenets-gallery-{key}.npz"
    if os.access(gallery, os.W_OK):
        return beside
    home = cache_dir()
    folder_id = hashlib.sha256(str(gallery.resolve()).encode()).hexdigest()[:16]
    return home / "galleries" / f"{folder_id}-{key}.npz"


def read_gallery_cache(cache: Path) -> dict[str, np.ndarray]:
    """``{image sha256: unit-norm embedding}`` from a cache file; empty when it is missing or fails validation."""
    if not cache.is_file():
        return {}
    try:
        with np.load(cache, allow_pickle=False) as z:
            digests, emb = z["digests"], z["embeddings"]
            version = int(z["version"])
    except (OSError, ValueError, KeyError, EOFError, TypeError):
        return {}
    ok = (version == _CACHE_VERSION and emb.ndim == 2 and emb.dtype == np.float32 and digests.ndim == 1
          and len(digests) == len(emb) and np.isfinite(emb).all()
          and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-3))  # fmt: skip
    return {str(d): e for d, e in zip(digests, emb)} if ok else {}


def gallery_embeddings(predictor: Predictor, gallery: str | os.PathLike, progress: bool = True,
                       skipped: Skipped | None = None) -> tuple[list[Path], np.ndarray]:  # fmt: skip
    """L2-normalised embeddings of every readable image under ``gallery`` (and those paths), cached by content.

    Unreadable images are left out and recorded in ``skipped`` (raised without it).
    """
    gallery = Path(gallery)
    if not gallery.is_dir():
        raise MobilenetsError(f"{gallery}: no such gallery folder")
    paths = expand_images([gallery])
    cache = _cache_file(gallery, _cache_key(predictor))
    digests = []
    for p in paths:
        try:
            digests.append(sha256_file(p))
        except OSError as e:
            if skipped is None:
                raise ImageError(f"{p}: cannot read ({e.strerror or e})") from None
            digests.append(None)
    known = read_gallery_cache(cache)
    todo = [i for i, d in enumerate(digests) if d is not None and d not in known]
    local = Skipped([]) if skipped is not None else None
    fresh, done = embed_files(predictor, [paths[i] for i in todo], l2=True, progress=progress,
                              strict=skipped is None, skipped=local)  # fmt: skip
    row = {p: j for j, p in enumerate(done)}
    keep, rows = [], []
    for i, (p, d) in enumerate(zip(paths, digests)):
        if d is None:
            continue
        if d in known:
            keep.append(p)
            rows.append(known[d])
        elif p in row:
            keep.append(p)
            rows.append(fresh[row[p]])
            known[d] = fresh[row[p]]
    if skipped is not None:
        skipped.errors.extend(local.errors)
        skipped.errors.extend((p, f"{p}: cannot read") for p, d in zip(paths, digests) if d is None)
    if not rows:
        raise MobilenetsError(f"{gallery}: none of the {len(paths)} images could be read")
    emb = np.stack(rows).astype(np.float32)
    if todo:
        current = {d: known[d] for d in digests if d is not None and d in known}  # images gone from the folder drop out
        try:
            with atomic_write(cache) as tmp, open(tmp, "wb") as f:
                np.savez(f, version=np.array(_CACHE_VERSION), digests=np.array(list(current)),
                         embeddings=np.stack(list(current.values())).astype(np.float32))  # fmt: skip
        except OSError:
            pass  # an unwritable cache only costs the embedding next time
    return keep, emb


def nearest(query: np.ndarray, gallery: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and cosine similarities of the ``k`` gallery rows closest to ``query`` (both L2-normalised)."""
    if not np.isfinite(query).all() or not np.isfinite(gallery).all():
        raise MobilenetsError("embeddings hold NaN or Inf: the weights are broken")
    sims = gallery @ query
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in order]
