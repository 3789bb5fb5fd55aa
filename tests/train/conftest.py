"""Fixtures for the train tests: tiny real token shards (TinyStories through the tokenize stage) and a tiny model."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest


def _stories(shared_data: Path, n: int) -> list[str]:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:n]


@pytest.fixture(scope="session")
def tiny_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(shards_dir, tokenizer.json) for 300 TinyStories with a 512-token BPE, built by run_tokenize."""
    from data_pipelines.tokenize import TokenizeConfig, run_tokenize

    root = tmp_path_factory.mktemp("tiny_data")
    stories = _stories(shared_data, 300)
    pq.write_table(pa.table({"text": stories, "id": [f"s{i}" for i in range(len(stories))]}), root / "docs.parquet")
    run_tokenize(TokenizeConfig(vocab_size=512, val_fraction=0.1, progress=False), [root / "docs.parquet"],
                 root / "tokenizer", root / "shards", seed=0)
    return root / "shards", root / "tokenizer" / "tokenizer.json"


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured CPU matmul peak is cached under a temp folder, never in the user's home."""
    monkeypatch.setenv("TINYFOUNDRY_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
