"""Embeddings (pooled pre-logits features) and cosine nearest neighbours over a gallery.

A gallery's embeddings are cached beside it (``DIR/.mobilenets-gallery-<key>.npz``, or in
the user cache when the folder is read-only), keyed by the predictor and preprocessing;
files whose size and mtime are unchanged are not embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..errors import MobilenetsError
from ..runtime import Predictor
from ..utils import atomic_write, cache_dir
from . import expand_images


def embed_images(predictor: Predictor, paths: list[Path], l2: bool = False, batch_size: int = 16,
                 progress: bool = True) -> np.ndarray:  # fmt: skip
    """N x C float32 embeddings of ``paths`` (bad images raise `ImageError`)."""
    transform = predictor.transform
    chunks = []
    with tqdm(total=len(paths), unit="img", desc="embed", disable=not progress, file=sys.stderr) as bar:
        for i in range(0, len(paths), batch_size):
            batch = np.stack([transform(p).numpy() for p in paths[i : i + batch_size]])
            chunks.append(predictor.embed(batch).astype(np.float32))
            bar.update(len(batch))
    emb = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    return l2_normalize(emb) if l2 else emb


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _cache_key(predictor: Predictor) -> str:
    ident = {"name": predictor.name, "backend": predictor.backend, "resolution": predictor.resolution,
             "crop": predictor.crop_fraction, "source": str(predictor.info.get("source")),
             "sha256": predictor.info.get("sha256")}  # fmt: skip
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _cache_file(gallery: Path, key: str) -> Path:
    beside = gallery / f".mobilenets-gallery-{key}.npz"
    if os.access(gallery, os.W_OK):
        return beside
    home = cache_dir()
    folder_id = hashlib.sha256(str(gallery.resolve()).encode()).hexdigest()[:16]
    return home / "galleries" / f"{folder_id}-{key}.npz"


def gallery_embeddings(predictor: Predictor, gallery: str | os.PathLike, progress: bool = True) -> tuple[list[Path], np.ndarray]:
    """L2-normalised embeddings of every image under ``gallery``, reusing the cache where valid."""
    gallery = Path(gallery)
    if not gallery.is_dir():
        raise MobilenetsError(f"{gallery}: no such gallery folder")
    paths = expand_images([gallery])
    cache = _cache_file(gallery, _cache_key(predictor))
    stamps = [f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths]
    known: dict[tuple[str, str], np.ndarray] = {}
    if cache.exists():
        try:
            with np.load(cache, allow_pickle=False) as z:
                known = {(p, s): e for p, s, e in zip(z["paths"], z["stamps"], z["embeddings"])}
        except (OSError, ValueError, KeyError):
            known = {}  # unreadable cache: rebuild it
    rel = [str(p.relative_to(gallery)) for p in paths]
    todo = [i for i, key in enumerate(zip(rel, stamps)) if key not in known]
    fresh = embed_images(predictor, [paths[i] for i in todo], l2=True, progress=progress) if todo else None
    row = {i: j for j, i in enumerate(todo)}
    emb_arr = np.stack([fresh[row[i]] if i in row else known[key] for i, key in enumerate(zip(rel, stamps))])
    emb_arr = emb_arr.astype(np.float32)
    if todo or len(known) != len(paths):
        with atomic_write(cache) as tmp, open(tmp, "wb") as f:
            np.savez(f, paths=np.array(rel), stamps=np.array(stamps), embeddings=emb_arr)
    return paths, emb_arr


def nearest(query: np.ndarray, gallery: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indices and cosine similarities of the ``k`` gallery rows closest to ``query`` (both L2-normalised)."""
    sims = gallery @ query
    order = np.argsort(-sims, kind="stable")[:k]
    return [(int(i), float(sims[i])) for i in order]
