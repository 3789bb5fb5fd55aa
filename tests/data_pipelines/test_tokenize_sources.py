"""Document readers of the tokenize stage: document boundaries, keys, byte lengths, and seeking to a row."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.tokenize import sources


def _scan(path: Path, **kw) -> tuple[list[str], list[int], list[int]]:
    keys, lens, offsets = [], [], []
    for k, ln, first, off in sources.scan(path, **kw):
        assert first == len(keys)
        keys += k
        lens += ln.tolist()
        offsets += off.tolist()
    return keys, lens, offsets


def _read_all(path: Path, start: sources.Position, n: int, **kw) -> list[str]:
    return [t for batch in sources.read(path, start, n, batch_rows=2, **kw) for t in batch]


def test_txt_separator_lines(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    docs = ["Once upon a time…\nthe end.", "naïve “quoted” line\r\nsecond", "", "last one\n"]
    p.write_bytes("\n<|endoftext|>\n".join(docs[:2]).encode() + b"\r\n<|endoftext|>\r\n"
                  + b"\n<|endoftext|>\n" + docs[3].encode())
    keys, lens, offsets = _scan(p)
    want = [docs[0], docs[1], docs[2], docs[3]]
    assert _read_all(p, sources.Position(0, 0), 4) == want
    assert keys == [f"a.txt:{i}" for i in range(4)]
    assert lens == [len(d.encode()) for d in want]
    # seeking by byte offset lands on the same documents
    for i in range(4):
        assert _read_all(p, sources.Position(i, offsets[i]), 4 - i) == want[i:]
    assert _read_all(p, sources.Position(1, offsets[1]), 2) == want[1:3]


def test_txt_without_separator_is_one_document(tmp_path: Path) -> None:
    p = tmp_path / "play.txt"
    p.write_text("ROMEO:\nBut soft!\n\nJULIET:\nAy me.\n", encoding="utf-8")
    assert _read_all(p, sources.Position(0, 0), 1) == [p.read_text(encoding="utf-8")]


def test_jsonl_and_gz_keys_lengths_seek(tmp_path: Path) -> None:
    rows = [{"text": "héllo", "id": "x1"}, {"text": "wörld"}, {"text": "日本語", "id": 7}]
    plain, gz = tmp_path / "d.jsonl", tmp_path / "d.jsonl.gz"
    body = "\n\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    plain.write_text(body, encoding="utf-8")
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(body)
    for p in (plain, gz):
        keys, lens, offsets = _scan(p)
        assert keys == ["x1", f"{p.name}:1", "7"]
        assert lens == [6, 6, 9]
        assert (offsets[0] >= 0) == (p is plain) and (all(o == -1 for o in offsets) == (p is gz))
        assert _read_all(p, sources.Position(1, offsets[1]), 2) == ["wörld", "日本語"]
    with pytest.raises(ValueError, match=r"d\.jsonl: row 0 has no string field 'body'"):
        _scan(plain, text_field="body")


def test_parquet_row_groups_nulls_and_ids(tmp_path: Path) -> None:
    p = tmp_path / "d.parquet"
    texts = [f"doc {i} ü" for i in range(10)]
    texts[3] = None
    pq.write_table(pa.table({"text": texts, "id": [f"id{i}" for i in range(10)]}), p, row_group_size=3)
    keys, lens, offsets = _scan(p)
    assert keys == [f"id{i}" for i in range(10)]
    assert lens[3] == 0 and lens[0] == len("doc 0 ü".encode())
    assert all(o == -1 for o in offsets)
    got = _read_all(p, sources.Position(2), 6)  # starts inside row group 0, crosses two row groups
    assert got == [texts[2], "", *texts[4:8]]
    no_id = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), no_id)
    assert _scan(no_id)[0] == ["n.parquet:0", "n.parquet:1"]
    assert np.array_equal(_scan(no_id)[1], [1, 1])


def test_invalid_utf8_is_replaced_with_a_warning_naming_the_file(tmp_path: Path) -> None:
    # one rule with curate and eval (data_pipelines/text_files.py): U+FFFD, counted or warned, never fatal
    p = tmp_path / "bad.txt"
    p.write_bytes(b"ok\n<|endoftext|>\nbad \xff byte\n")
    with pytest.warns(UserWarning, match=r"bad\.txt: row 1 is not valid UTF-8"):
        keys, lens, _ = _scan(p)
    assert keys == ["bad.txt:0", "bad.txt:1"] and lens == [2, len("bad \ufffd byte\n".encode())]
    j = tmp_path / "bad.jsonl"
    j.write_bytes(b'{"text": "caf\xe9"}\n')
    with pytest.warns(UserWarning, match=r"bad\.jsonl: row 0"):
        assert _read_all(j, sources.Position(0, 0), 1) == ["caf\ufffd"]


def test_separator_inside_a_line_and_at_the_end(tmp_path: Path) -> None:
    p = tmp_path / "inline.txt"
    p.write_bytes(b"first story.<|endoftext|>second\n<|endoftext|>\n")
    keys, _, offsets = _scan(p)
    assert _read_all(p, sources.Position(0, 0), 5) == ["first story.", "second"]
    assert _read_all(p, sources.Position(1, offsets[1]), 1) == ["second"]
