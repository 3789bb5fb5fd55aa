"""One tokenizer lookup (models/tokenizer_lookup.py) and one file hash (models/hashing.py) for every room."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from models.hashing import file_sha256
from models.tokenizer_lookup import find_tokenizer, require_tokenizer


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc" * (1 << 19))  # > one 1 MiB chunk
    assert file_sha256(f) == hashlib.sha256(f.read_bytes()).hexdigest()


def test_documented_order_hint_folder_then_run_dir(tmp_path: Path) -> None:
    run = tmp_path / "run"
    final = run / "checkpoints" / "final"
    final.mkdir(parents=True)
    (run / "tokenizer").mkdir()
    run_tok = run / "tokenizer" / "tokenizer.json"
    run_tok.write_text('{"run": 1}')
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    assert find_tokenizer(final) == run_tok  # a model under checkpoints/ finds its run's tokenizer
    assert find_tokenizer(ckpt) == run_tok
    own = final / "tokenizer.json"
    own.write_text('{"own": 1}')
    assert find_tokenizer(final) == own  # a model dir's own tokenizer comes first
    hint = tmp_path / "hint.json"
    hint.write_text("{}")
    assert find_tokenizer(final, hint=hint) == hint
    # with a hash, a nearer tokenizer that did not write the data is skipped
    assert find_tokenizer(final, sha256=file_sha256(run_tok)) == run_tok


def test_missing_tokenizer_names_the_places(tmp_path: Path) -> None:
    d = tmp_path / "a" / "b"
    d.mkdir(parents=True)
    assert find_tokenizer(d) is None
    with pytest.raises(ValueError, match=r"^model: no tokenizer.json for .*looked in .*b/tokenizer.json"):
        require_tokenizer(d)
