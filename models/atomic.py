"""Atomic, umask-respecting writes: the one helper every writer in models/ (and launch/) uses.

Why not `tempfile.mkstemp` / `mkdtemp`: they create 0600 files and 0700 folders whatever the umask, so an
exported GGUF or HF folder could not be read by a llama.cpp or vLLM container running as another user.
Here a temporary sibling is created with `os.open(..., 0o666)` / `os.mkdir(..., 0o777)`, which the kernel
masks with the process umask exactly as for any ordinary file (0644 / 0755 under umask 022), written,
given the umask's mode again (a library that writes through its own 0600 temporary file, as safetensors does,
would otherwise leave 0600), fsynced and renamed over the final name: a reader never sees a half-written file
under the final name.

- `atomic_file(path)`: context manager yielding a temporary path beside `path` (same folder, so the rename
  is atomic); on success it is fsynced and renamed to `path`, on error removed.
- `atomic_dir(path)`: the same for a folder: build it under a temporary name, then it replaces `path`.
- `atomic_write_bytes / _text / _json`, `atomic_copy`: the common cases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _tmp_name(path: Path, kind: str) -> Path:
    return path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _settle(path: Path, mask: int) -> None:
    """fsync a finished file and give it the umask's mode: some writers (safetensors) create their own 0600
    temporary file and rename it, so the mode we created the file with is not always the one it ends with."""
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~mask)
    if path.is_file():
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file path (created empty, umask-respecting mode) that replaces `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _settle(tmp, _umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a new empty temporary folder that is swapped in for `path` (replacing an existing one) on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path, "tmpdir")
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        mask = _umask()
        for f in tmp.rglob("*"):
            _settle(f, mask)
        old = None
        if path.exists():
            old = _tmp_name(path, "old")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def atomic_copy(src: str | Path, dst: str | Path) -> None:
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


def read_json_or_empty(path: str | Path) -> Any:
    """A JSON file that is optional to its reader (a cache, an earlier summary, a tokenizer_config.json), or {} when it
    is absent or unreadable: the caller then goes on with its defaults."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def update_json_cache(path: str | Path, key: str, value: Any, sort_keys: bool = False) -> None:
    """Set one entry of a JSON cache file (read, modify, then an atomic rename): the per-machine measurement caches."""
    path = Path(path)
    cache = read_json_or_empty(path)
    cache[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, cache, sort_keys=sort_keys)
