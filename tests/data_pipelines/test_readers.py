"""Readers: every input format, ids and metadata, and the repair/skip/fail rules for bad input."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.curate.readers import ReaderOptions, ReadStats, read_documents, resolve_inputs


def _read(inputs, **kw):
    stats = ReadStats()
    docs = list(read_documents([str(i) for i in inputs], ReaderOptions(**kw), stats))
    return docs, stats


def test_text_with_separator_and_one_doc_per_file(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("First story.\n<|endoftext|>\nSecond story.\n<|endoftext|>\n", encoding="utf-8")
    docs, _ = _read([p])
    assert [d.text for d in docs] == ["First story.", "Second story."]
    assert [d.id for d in docs] == ["a.txt:0", "a.txt:1"]
    assert docs[0].source == str(p)
    docs, _ = _read([p], separator="")
    assert len(docs) == 1 and docs[0].id == "a.txt"


def test_jsonl_ids_metadata_and_malformed_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    lines = [
        json.dumps({"id": "x1", "text": "hello", "label": 1, "url": "u"}),
        "{not json",
        json.dumps({"text": "no id here", "label": 0}),
        "",
        "[1, 2]",
        json.dumps({"body": "custom field", "id": 7}),
    ]
    p.write_text("\n".join(lines[:5]) + "\n", encoding="utf-8")
    docs, stats = _read([p])
    assert [d.id for d in docs] == ["x1", "d.jsonl:3"]
    assert docs[0].metadata == {"label": 1, "url": "u"}
    assert stats.malformed_lines[str(p)] == {"count": 2, "first_lines": [2, 5]}
    q = tmp_path / "c.jsonl"
    q.write_text(lines[5] + "\n", encoding="utf-8")
    docs, _ = _read([q], text_field="body")
    assert docs[0].text == "custom field" and docs[0].id == "7"


def test_missing_text_field_names_the_file(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(json.dumps({"content": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"text_field: .*bad\.jsonl line 1 has no field 'text'.*content"):
        _read([p])


def test_invalid_utf8_is_replaced_and_counted(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good \xff\xfe text\n<|endoftext|>\nclean \xef\xbf\xbd kept\n")
    docs, stats = _read([p])
    assert docs[0].text == "good \ufffd\ufffd text"
    assert stats.invalid_utf8_chars == 2  # the genuine U+FFFD in the input is not counted
    assert stats.invalid_utf8_docs == 1
    j = tmp_path / "bad.jsonl"
    j.write_bytes(b'{"text": "caf\xe9"}\n')
    docs, stats = _read([j])
    assert docs[0].text == "caf\ufffd" and stats.invalid_utf8_chars == 1


def test_compressed_parquet_and_globs(tmp_path):
    import zstandard

    rec = {"text": "zipped doc", "id": "z"}
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress((json.dumps(rec) + "\n").encode()))
    (tmp_path / "b.jsonl.zst").write_bytes(
        zstandard.ZstdCompressor().compress((json.dumps(rec) + "\n").encode())
    )
    pq.write_table(pa.table({"text": ["p0", "p1"], "score": [0.5, 0.7]}), tmp_path / "c.parquet")
    docs, _ = _read([tmp_path / "*.jsonl.*", tmp_path / "c.parquet"])
    assert [d.text for d in docs] == ["zipped doc", "zipped doc", "p0", "p1"]
    assert docs[3].id == "c.parquet:1" and docs[3].metadata == {"score": 0.7}
    # a folder expands to its files; a glob matching nothing is an error
    assert len(resolve_inputs([str(tmp_path)])) == 3
    with pytest.raises(ValueError, match="inputs: no file matches"):
        resolve_inputs([str(tmp_path / "*.nothing")])


def test_save_to_disk_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": ["a b c", "d e f"], "id": ["i0", "i1"], "lang": ["en", "en"]})
    ds.save_to_disk(str(tmp_path / "ds"))
    docs, _ = _read([tmp_path / "ds"])
    assert [(d.id, d.text, d.metadata) for d in docs] == [
        ("i0", "a b c", {"lang": "en"}),
        ("i1", "d e f", {"lang": "en"}),
    ]


def test_real_jsonl_gz_and_warc(shared_data):
    docs, stats = _read([shared_data / "web" / "provided_documents_000.json.gz"])
    assert len(docs) == 10 and all(d.text for d in docs)
    assert not stats.malformed_lines
    pytest.importorskip("resiliparse", reason="WARC extraction needs resiliparse/fastwarc")
    docs, _ = _read([shared_data / "web" / "sample-0000.warc.gz"])
    assert len(docs) >= 15
    assert all(d.id.startswith("urn:uuid:") for d in docs)
    assert all(d.metadata["url"].startswith("http") for d in docs)
    assert "<html" not in docs[0].text.lower() and len(docs[0].text) > 100
