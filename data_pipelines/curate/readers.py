"""Readers: turn paths, globs and dataset names into a stream of `Document`s.

Design
------
``resolve_inputs`` expands every input spec into a sorted list of *sources* (files, ``hf:`` names,
``save_to_disk`` folders) so that sharding and resume see the same list on every machine.
``read_source`` yields documents from one source; the format is chosen from the name
(``.jsonl/.json/.ndjson``, ``.parquet``, ``.warc[.gz]``, anything else is text), with ``.gz`` and
``.zst`` decompressed on the fly. ``hf:<name>[:<config>]`` is streamed with ``datasets``
(``streaming=True``): rows arrive as the files are read, nothing is downloaded or converted first.

Invariants
- Every document has a non-empty string id: the input's own (``id_field``) when present, otherwise
  a stable ``<file name>:<line or index>`` (the same on every rerun and every shard).
- Input metadata (all fields other than the text and the id) is kept as-is in ``Document.metadata``.
- Text files, compression and invalid UTF-8 follow data_pipelines/text_files.py (the rules shared with
  tokenize and eval): invalid bytes become U+FFFD and are counted in ``ReadStats``.
- A malformed JSONL line is skipped and counted (with its line number); a record without the text
  field is a ``ValueError`` naming the file and line, because it means the wrong ``text_field``.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..text_files import COMPRESSED_SUFFIXES, Utf8Stats, decode_utf8, iter_blocks, open_binary
from .documents import Document

MAX_REPORTED_LINES = 10
_JSONL = (".jsonl", ".json", ".ndjson")


@dataclass
class ReadStats(Utf8Stats):
    """What the readers had to repair or skip (merged across workers and shards)."""

    malformed_lines: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {count, first_lines}
    empty_docs: int = 0

    def note_malformed(self, source: str, line_no: int) -> None:
        entry = self.malformed_lines.setdefault(source, {"count": 0, "first_lines": []})
        entry["count"] += 1
        if len(entry["first_lines"]) < MAX_REPORTED_LINES:
            entry["first_lines"].append(line_no)

    def merge(self, other: ReadStats | dict[str, Any]) -> None:
        o = other if isinstance(other, ReadStats) else ReadStats(**other)
        self.invalid_utf8_chars += o.invalid_utf8_chars
        self.invalid_utf8_docs += o.invalid_utf8_docs
        self.empty_docs += o.empty_docs
        for src, e in o.malformed_lines.items():
            mine = self.malformed_lines.setdefault(src, {"count": 0, "first_lines": []})
            mine["count"] += e["count"]
            mine["first_lines"] = sorted(mine["first_lines"] + e["first_lines"])[:MAX_REPORTED_LINES]

    def to_dict(self) -> dict[str, Any]:
        return {
            "invalid_utf8_chars": self.invalid_utf8_chars,
            "invalid_utf8_docs": self.invalid_utf8_docs,
            "malformed_lines": self.malformed_lines,
            "empty_docs": self.empty_docs,
        }


@dataclass(frozen=True)
class ReaderOptions:
    """The reader knobs of `CurateConfig`, passed on their own to worker processes."""

    text_field: str = "text"
    id_field: str = "id"
    separator: str = "<|endoftext|>"
    hf_split: str = "train"


def decode(data: bytes, stats: ReadStats) -> str:
    """UTF-8 decode; invalid bytes become U+FFFD and are counted (data_pipelines/text_files.py)."""
    return decode_utf8(data, stats)


def _is_save_to_disk(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_info.json").exists() and (path / "state.json").exists()


def _is_dataset_dict(path: Path) -> bool:
    return path.is_dir() and (path / "dataset_dict.json").exists()


def resolve_inputs(inputs: list[str]) -> list[str]:
    """Expand paths/globs/folders into a sorted, de-duplicated list of sources.

    ``hf:<name>`` specs are kept as they are. A folder written by ``save_to_disk`` is one source; any
    other folder contributes its files recursively. A glob or path matching nothing is a ValueError.
    """
    out: list[str] = []
    for spec in inputs:
        if spec.startswith("hf:"):
            out.append(spec)
            continue
        p = Path(spec).expanduser()
        if p.is_dir():
            if _is_save_to_disk(p) or _is_dataset_dict(p):
                out.append(str(p))
            else:
                files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
                if not files:
                    raise ValueError(f"inputs: folder {spec!r} holds no files")
                out.extend(files)
        elif p.is_file():
            out.append(str(p))
        else:
            matches = sorted(
                m for m in glob.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(m)
            )
            if not matches:
                raise ValueError(f"inputs: no file matches {spec!r}")
            out.extend(matches)
    seen: set[str] = set()
    return [s for s in out if not (s in seen or seen.add(s))]


def _base_suffix(path: str) -> str:
    name = path.lower()
    for c in COMPRESSED_SUFFIXES:
        if name.endswith(c):
            name = name[: -len(c)]
            break
    return os.path.splitext(name)[1]


def source_format(source: str) -> str:
    """'hf' | 'disk' | 'jsonl' | 'parquet' | 'warc' | 'text'."""
    if source.startswith("hf:"):
        return "hf"
    if os.path.isdir(source):
        return "disk"
    suffix = _base_suffix(source)
    if suffix in _JSONL:
        return "jsonl"
    if suffix == ".parquet":
        return "parquet"
    if suffix in (".warc", ".arc"):
        return "warc"
    return "text"


def _split_record(rec: dict[str, Any], opts: ReaderOptions, fallback_id: str, where: str) -> Document:
    if opts.text_field not in rec:
        keys = ", ".join(sorted(map(str, rec)))[:200]
        raise ValueError(f"text_field: {where} has no field {opts.text_field!r} (fields: {keys})")
    text = rec[opts.text_field]
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise ValueError(
            f"text_field: {where} field {opts.text_field!r} is {type(text).__name__}, not a string"
        )
    raw_id = rec.get(opts.id_field)
    doc_id = str(raw_id) if raw_id not in (None, "") else fallback_id
    meta = {k: v for k, v in rec.items() if k != opts.text_field and k != opts.id_field}
    return Document(text=text, id=doc_id, metadata=meta)


def _read_jsonl(path: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    name = os.path.basename(path)
    with open_binary(path) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            line = decode(raw, stats)
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                stats.note_malformed(path, line_no)
                continue
            if not isinstance(rec, dict):
                stats.note_malformed(path, line_no)
                continue
            yield _split_record(rec, opts, f"{name}:{line_no}", f"{path} line {line_no}")


def _read_text(path: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    """Separator-delimited documents, streamed (data_pipelines/text_files.py has the rules); ids are
    `<file>:<block index>`, or the file name when the whole file is one document. Empty blocks between
    separators are skipped and counted."""
    name = os.path.basename(path)
    blocks = iter_blocks(path, opts.separator)
    for i, (_offset, raw) in enumerate(blocks):
        text = decode_utf8(raw, stats)
        if not text.strip():
            stats.empty_docs += 1
            continue
        yield Document(text=text, id=f"{name}:{i}" if opts.separator else name)


def _iter_table_rows(batches: Iterator[Any], path: str, opts: ReaderOptions) -> Iterator[Document]:
    name = os.path.basename(path.rstrip("/")) or path
    row = 0
    for batch in batches:
        if opts.text_field not in batch.schema.names:
            raise ValueError(
                f"text_field: {path} has no column {opts.text_field!r} (columns: {', '.join(batch.schema.names)})"
            )
        for rec in batch.to_pylist():
            yield _split_record(rec, opts, f"{name}:{row}", f"{path} row {row}")
            row += 1


def _read_parquet(path: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    yield from _iter_table_rows(pq.ParquetFile(path).iter_batches(batch_size=4096), path, opts)


def _iter_records(records: Iterator[dict[str, Any]], source: str, opts: ReaderOptions) -> Iterator[Document]:
    name = os.path.basename(source.rstrip("/")) or source
    for row, rec in enumerate(records):
        yield _split_record(rec, opts, f"{name}:{row}", f"{source} row {row}")


def _stream_hf(source: str, opts: ReaderOptions) -> Iterator[dict[str, Any]]:
    """Rows of `hf:<name>[:<config>]`, streamed: `datasets.load_dataset(..., streaming=True)` reads the
    files as it goes (Hub datasets over HTTP, local folders and builders from disk) and never downloads
    or converts the whole dataset first, so the first documents arrive at once and disk use stays flat."""
    import datasets

    name, _, config = source[3:].partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=opts.hf_split, streaming=True)
        yield from ds
    except (ConnectionError, OSError) as e:  # offline, unknown name, no such split/config
        raise ValueError(f"inputs: could not stream {source!r} with datasets.load_dataset: {e}") from e


def _read_hf(source: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    """`hf:` specs are streamed; a `save_to_disk` folder is memory-mapped arrow already and read by batch."""
    import datasets

    if source.startswith("hf:"):
        yield from _iter_records(_stream_hf(source, opts), source, opts)
        return
    ds = datasets.load_from_disk(source)
    if isinstance(ds, datasets.DatasetDict):
        if opts.hf_split not in ds:
            raise ValueError(f"hf_split: {source} has splits {list(ds)}, not {opts.hf_split!r}")
        ds = ds[opts.hf_split]
    yield from _iter_table_rows(ds.data.to_batches(max_chunksize=4096), source, opts)


def _read_warc(path: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    from fastwarc.warc import ArchiveIterator, WarcRecordType
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.encoding import bytes_to_str, detect_encoding

    with open(path, "rb") as f:
        for rec in ArchiveIterator(f, record_types=WarcRecordType.response, parse_http=True):
            ctype = (rec.http_headers.get("Content-Type") or "") if rec.http_headers else ""
            if "html" not in ctype.lower():
                continue
            body = rec.reader.read()
            html = bytes_to_str(body, detect_encoding(body))
            text = extract_plain_text(html, main_content=True, alt_texts=False)
            url = (rec.headers.get("WARC-Target-URI") or "").strip("<>")
            yield Document(
                text=text,
                id=rec.record_id.strip("<>"),
                metadata={"url": url, "date": rec.headers.get("WARC-Date") or ""},
            )


_READERS = {
    "jsonl": _read_jsonl,
    "text": _read_text,
    "parquet": _read_parquet,
    "hf": _read_hf,
    "disk": _read_hf,
    "warc": _read_warc,
}


def read_source(source: str, opts: ReaderOptions, stats: ReadStats) -> Iterator[Document]:
    """Documents of one source, each tagged with ``source``."""
    for doc in _READERS[source_format(source)](source, opts, stats):
        doc.source = source
        yield doc


def read_documents(
    inputs: list[str], opts: ReaderOptions | None = None, stats: ReadStats | None = None
) -> Iterator[Document]:
    """Documents of every input spec, in resolved order."""
    opts = opts or ReaderOptions()
    stats = stats if stats is not None else ReadStats()
    for source in resolve_inputs(inputs):
        yield from read_source(source, opts, stats)
