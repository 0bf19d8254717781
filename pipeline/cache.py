"""Processed data sets cached under ``$LDSM_HOME`` (default ``~/.cache/ldsm``), keyed by content.

The key is a SHA-256 over the bytes of every source file (names relative to their folder, so a
moved copy hits the same entry), the dataset card and :data:`FORMAT_VERSION`: editing a source
file, the card or the parser format gives a new key, anything else reads the cache. An entry is
one ``torch.save`` file of plain tensors, lists, strings and numbers, loaded back with
``torch.load(weights_only=True)`` (no pickled code is executed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

# Bump when the stored layout or the parsers' output changes, so old entries are not reused.
FORMAT_VERSION = 1
CHUNK = 1 << 22


def ldsm_home() -> Path:
    """``$LDSM_HOME``, default ``~/.cache/ldsm`` (never inside the repository)."""
    return Path(os.environ.get("LDSM_HOME", Path.home() / ".cache" / "ldsm"))


def content_hash(files: Iterable[Path], extra: dict | None = None) -> str:
    """Hex SHA-256 of the files' names and bytes (in the given order) plus ``extra`` as JSON."""
    digest = hashlib.sha256(f"ldsm-ingest-v{FORMAT_VERSION}".encode())
    digest.update(json.dumps(extra or {}, sort_keys=True).encode())
    for path in files:
        path = Path(path)
        digest.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    return digest.hexdigest()


def cache_file(name: str, digest: str) -> Path:
    """Where the entry of data set ``name`` with content hash ``digest`` lives."""
    return ldsm_home() / "ingest" / f"{name}-{digest[:20]}.pt"


def save(path: Path, payload: dict) -> Path:
    """Write ``payload`` atomically (a crash never leaves a half-written entry that later loads)."""
    import torch  # here, not at the top: the screen reads ldsm_home() without loading torch

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".pt.part")
    torch.save({"format_version": FORMAT_VERSION, **payload}, partial)
    partial.replace(path)
    return path


def load(path: Path) -> dict | None:
    """The payload at ``path``, or None when there is none or it is from another format version."""
    import torch

    if not path.exists():
        return None
    payload = torch.load(path, weights_only=True)
    if payload.get("format_version") != FORMAT_VERSION:
        return None
    return payload
