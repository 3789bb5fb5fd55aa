"""Reading text files: the one place that decides how bytes become documents.

Used by curation (data_pipelines/curate/readers.py), tokenization (data_pipelines/tokenize/sources.py)
and held-out evaluation (train/eval/loss.py), so the three read a file the same way.

Rules
- Compression: `.gz` and `.zst` / `.zstd` are decompressed on the fly (`open_binary`).
- Invalid UTF-8 never stops a run: each bad byte sequence becomes U+FFFD (Python's ``errors="replace"``)
  and is counted (`Utf8Stats`: replaced characters, documents with any). Curation reports the counts in
  stats.json (`read`); tokenization and evaluation warn once per file, naming it and the first row.
  Raw web text has stray bytes, and one must not cost a whole run; the count keeps them visible.
- Separators: a text file holds documents separated by a separator string (default `<|endoftext|>`,
  the TinyStories convention), recognized wherever it occurs. The line break right before a separator
  and the one right after it belong to the separator (`\\n` or `\\r\\n`, one each; a separator that
  holds line breaks itself, such as `"\\n\\n"`, owns no others); nothing else is
  stripped, so a document's own whitespace is kept. An empty separator makes the whole file one
  document. The last block is a document only if it has any bytes; an empty block between two
  separators is yielded (as ""), and callers decide: curation skips and counts it, tokenization keeps
  the row, evaluation drops whitespace-only documents.
- Offsets: each block comes with the byte offset where it starts in the (uncompressed) file, so a
  reader can seek straight back to it (`iter_blocks(path, sep, offset)` resumes there).
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

EOS_SEPARATOR = "<|endoftext|>"
COMPRESSED_SUFFIXES = (".gz", ".zst", ".zstd")


@dataclass
class Utf8Stats:
    """Invalid UTF-8 repaired while decoding."""

    invalid_utf8_chars: int = 0
    """U+FFFD characters inserted for invalid byte sequences."""
    invalid_utf8_docs: int = 0
    """Documents (or lines) that had at least one."""


def is_compressed(path: str | Path) -> bool:
    """True for names ending in a compression suffix we decompress (`.gz`, `.zst`, `.zstd`)."""
    return str(path).lower().endswith(COMPRESSED_SUFFIXES)


def open_binary(path: str | Path) -> IO[bytes]:
    """The file's bytes, decompressed on the fly for `.gz` / `.zst` / `.zstd`."""
    name = str(path).lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith((".zst", ".zstd")):
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


def decode_utf8(raw: bytes, stats: Utf8Stats | None = None) -> str:
    """UTF-8 text of `raw`; invalid sequences become U+FFFD and are counted in `stats` (genuine U+FFFD
    characters in the input are not counted)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")
        if stats is not None:
            stats.invalid_utf8_chars += text.count("\ufffd") - raw.decode("utf-8", errors="ignore").count("\ufffd")
            stats.invalid_utf8_docs += 1
        return text


_WARNED: set[str] = set()


def decode_utf8_warn(raw: bytes, path: str | Path, row: int) -> str:
    """`decode_utf8`, warning once per file (naming it and the row) when bytes had to be replaced."""
    stats = Utf8Stats()
    text = decode_utf8(raw, stats)
    if stats.invalid_utf8_chars and str(path) not in _WARNED:
        _WARNED.add(str(path))
        warnings.warn(
            f"{path}: row {row} is not valid UTF-8; invalid bytes were replaced by U+FFFD "
            "(further rows of this file are not reported)",
            stacklevel=2,
        )
    return text


def _drop_line_break(block: bytes) -> bytes:
    if block.endswith(b"\r\n"):
        return block[:-2]
    return block[:-1] if block.endswith(b"\n") else block


def _split_whole(data: bytes, sep: bytes, offset: int) -> Iterator[tuple[int, bytes]]:
    """`iter_blocks` for a separator that holds line breaks itself (it then owns no others): the whole
    (remaining) file in memory."""
    start = 0
    while (k := data.find(sep, start)) >= 0:
        yield offset + start, data[start:k]
        start = k + len(sep)
    if start < len(data):
        yield offset + start, data[start:]


def iter_blocks(path: str | Path, separator: str = EOS_SEPARATOR, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(start offset, raw bytes) of every separator-delimited block from byte `offset` (0 for compressed
    files, which cannot seek), streaming line by line; see the module docstring for the rules."""
    sep = separator.encode("utf-8")
    with open_binary(path) as f:
        if offset > 0:
            f.seek(offset)
        if not sep:
            data = f.read()
            if data:
                yield offset, data
            return
        if b"\n" in sep:
            yield from _split_whole(f.read(), sep, offset)
            return
        start = pos = offset
        parts: list[bytes] = []
        for line in f:
            begin = 0
            while (k := line.find(sep, begin)) >= 0:
                parts.append(line[begin:k])
                yield start, _drop_line_break(b"".join(parts))
                parts = []
                begin = k + len(sep)
                if line[begin:] in (b"\n", b"\r\n"):  # the separator's own line break
                    begin = len(line)
                start = pos + begin
            parts.append(line[begin:])
            pos += len(line)
        tail = b"".join(parts)
        if tail:
            yield start, tail


def iter_lines(path: str | Path, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """(byte offset, raw line) pairs from `offset` (0 for compressed files), for line-based formats (JSONL)."""
    with open_binary(path) as f:
        if offset > 0:
            f.seek(offset)
        pos = max(offset, 0)
        for line in f:
            yield pos, line
            pos += len(line)


def read_text_documents(path: str | Path, separator: str = EOS_SEPARATOR) -> list[str]:
    """Every document of a text file (blocks as `iter_blocks`, decoded as `decode_utf8_warn`), whitespace-only
    ones dropped: the simple whole-file reader for evaluation and tools."""
    docs = []
    for row, (_off, raw) in enumerate(iter_blocks(path, separator)):
        text = decode_utf8_warn(raw, path, row)
        if text.strip():
            docs.append(text)
    return docs
