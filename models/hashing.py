"""sha256 of a file: how tokenize, train and compress tell whether two tokenizer files (or any artefacts) are the same.

Streamed in 1 MiB chunks, so hashing a large file never holds it in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
