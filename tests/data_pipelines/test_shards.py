"""ShardIndex: reading a shards folder, and clear errors that name the file on a missing or corrupt one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.tokenize.shards import FORMAT, VERSION, ShardIndex


def _write(root: Path, dtype: str = "uint16") -> dict:
    """A hand-made two-shard folder: train [5 6 2 7 2] + [9 2], val [4 4 2]."""
    root.mkdir(parents=True, exist_ok=True)
    arrays = {"train_00000.bin": [5, 6, 2, 7, 2], "train_00001.bin": [9, 2], "val_00000.bin": [4, 4, 2]}
    for name, ids in arrays.items():
        np.asarray(ids, dtype=dtype).tofile(root / name)
    index = {
        "format": FORMAT, "version": VERSION, "dtype": dtype, "vocab_size": 10, "eos_id": 2, "bos_id": 1,
        "pad_id": 0, "add_bos": False, "tokenizer_sha256": "ab" * 32,
        "splits": {
            "train": {"num_docs": 3, "num_tokens": 7, "num_bytes": 21, "bytes_per_token": 3.0, "shards": [
                {"file": "train_00000.bin", "num_tokens": 5, "num_docs": 2},
                {"file": "train_00001.bin", "num_tokens": 2, "num_docs": 1}]},
            "val": {"num_docs": 1, "num_tokens": 3, "num_bytes": 6, "bytes_per_token": 2.0, "shards": [
                {"file": "val_00000.bin", "num_tokens": 3, "num_docs": 1}]},
        },
    }
    (root / "index.json").write_text(json.dumps(index), encoding="utf-8")
    return index


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_load_and_open(tmp_path: Path, dtype: str) -> None:
    _write(tmp_path, dtype)
    idx = ShardIndex.load(tmp_path)
    assert (idx.dtype, idx.vocab_size, idx.eos_id, idx.bos_id, idx.pad_id) == (dtype, 10, 2, 1, 0)
    assert idx.tokenizer_sha256 == "ab" * 32 and not idx.add_bos
    train = idx.open("train")
    assert all(isinstance(a, np.memmap) and a.dtype == np.dtype(dtype) for a in train)
    assert [a.tolist() for a in train] == [[5, 6, 2, 7, 2], [9, 2]]
    assert idx.open("val")[0].tolist() == [4, 4, 2]
    assert idx.bytes_per_token("train") == 3.0 and idx.bytes_per_token("val") == 2.0
    assert idx.splits["train"].num_docs == 3 and idx.splits["train"]["num_tokens"] == 7 == idx.num_tokens("train")
    with pytest.raises(ValueError, match="split: must be one of"):
        idx.open("test")


def test_missing_index_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"{tmp_path / 'index.json'}: shard index not found"):
        ShardIndex.load(tmp_path)


def test_corrupt_index_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path)
    (tmp_path / "index.json").write_text('{"format": "tinyfoundry-tok', encoding="utf-8")
    with pytest.raises(ValueError, match=r"index\.json: corrupt shard index"):
        ShardIndex.load(tmp_path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("dtype"), r"index\.json: corrupt shard index \(missing or bad field 'dtype'\)"),
        (lambda d: d.update(dtype="int64"), r"index\.json: dtype must be one of"),
        (lambda d: d.update(version=99), r"index\.json: unknown shard index format"),
        (lambda d: d["splits"]["train"].update(num_tokens=8), r"index\.json: split 'train' totals do not match"),
        (lambda d: d["splits"].pop("val"), r"index\.json: corrupt shard index"),
    ],
)
def test_bad_index_fields_name_the_file(tmp_path: Path, edit, match: str) -> None:
    index = _write(tmp_path)
    edit(index)
    (tmp_path / "index.json").write_text(json.dumps(index), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        ShardIndex.load(tmp_path)


def test_missing_or_truncated_shard_names_the_shard(tmp_path: Path) -> None:
    _write(tmp_path)
    with open(tmp_path / "train_00001.bin", "r+b") as f:
        f.truncate(2)
    with pytest.raises(ValueError, match=r"train_00001\.bin: shard has 2 bytes, index says 2 x 2 = 4"):
        ShardIndex.load(tmp_path)
    (tmp_path / "train_00001.bin").unlink()
    with pytest.raises(ValueError, match=r"train_00001\.bin: shard file listed in .* is missing"):
        ShardIndex.load(tmp_path)
