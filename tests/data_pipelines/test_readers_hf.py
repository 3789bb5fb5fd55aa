"""`hf:` inputs are streamed (`datasets.load_dataset(..., streaming=True)`), tested offline on a local
dataset folder that `datasets` resolves like a Hub repository."""

from __future__ import annotations

import json

import pytest

from data_pipelines.curate.readers import ReaderOptions, ReadStats, read_source, resolve_inputs

datasets = pytest.importorskip("datasets")


def _folder(tmp_path, n=25):
    d = tmp_path / "my_dataset"
    d.mkdir()
    rows = [{"id": f"r{i}", "text": f"Document number {i}.", "lang": "en"} for i in range(n)]
    (d / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return d


def test_hf_input_streams_rows_without_converting_the_dataset(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    calls = []
    real = datasets.load_dataset

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    folder = _folder(tmp_path)
    source = f"hf:{folder}"
    assert resolve_inputs([source]) == [source]
    docs = read_source(source, ReaderOptions(), ReadStats())
    first = next(docs)
    assert calls and calls[0]["streaming"] is True and calls[0]["split"] == "train"
    assert (first.id, first.text, first.metadata) == ("r0", "Document number 0.", {"lang": "en"})
    rest = list(docs)
    assert [d.id for d in rest] == [f"r{i}" for i in range(1, 25)]
    assert all(d.source == source for d in rest)
    assert not list(cache.rglob("*.arrow"))  # nothing was materialized in the cache


def test_hf_input_errors_name_the_source_and_field(tmp_path):
    folder = _folder(tmp_path, n=2)
    with pytest.raises(ValueError, match=r"text_field: hf:.* row 0 has no field 'body'"):
        list(read_source(f"hf:{folder}", ReaderOptions(text_field="body"), ReadStats()))
    with pytest.raises(ValueError, match=r"inputs: could not stream 'hf:"):
        list(read_source(f"hf:{tmp_path / 'missing'}", ReaderOptions(), ReadStats()))
