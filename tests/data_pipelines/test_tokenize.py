"""Tokenizer: config validation, the GPT-2 byte-level recipe, exact round trips on every shared data file,
and id parity with transformers' PreTrainedTokenizerFast."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from data_pipelines.tokenize import TokenizeConfig
from data_pipelines.tokenize.bpe import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
)


def _read_text(path: Path) -> str:
    """Whole file as text; .gz files (gzipped JSONL and multi-member WARC) are decompressed first."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.decode("utf-8")


def _jsonl_texts(path: Path) -> list[str]:
    text = _read_text(path)
    out = []
    for line in text.splitlines():
        if line.strip():
            obj = json.loads(line)
            out.extend(v for k, v in obj.items() if k in ("text", "story") and isinstance(v, str))
    return out


@pytest.fixture(scope="module")
def tok_dir(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024-token BPE trained on TinyStories + web pages, saved like the stage saves it."""
    stories = _read_text(shared_data / "tinystories" / "tinystories_2000.txt").split("\n<|endoftext|>\n")[:600]
    web = _jsonl_texts(shared_data / "web" / "dclm_labeled_499.jsonl")[:150]
    tok = train_tokenizer([stories, web], vocab_size=1024)
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(tok, out)
    return out


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"vocab_size": 511}, "vocab_size"),
        ({"vocab_size": 65537}, "vocab_size"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"min_frequency": 0}, "min_frequency"),
        ({"shard_bytes": 0}, "shard_bytes"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        TokenizeConfig(**kwargs)


def test_config_accepts_vocab_range_ends() -> None:
    assert TokenizeConfig(vocab_size=512).vocab_size == 512
    assert TokenizeConfig(vocab_size=65536).vocab_size == 65536


def test_tokenizer_json_is_the_gpt2_byte_level_recipe(tok_dir: Path) -> None:
    spec = json.loads((tok_dir / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["normalizer"] is None
    assert spec["pre_tokenizer"]["type"] == "ByteLevel"
    assert spec["pre_tokenizer"]["add_prefix_space"] is False
    assert spec["pre_tokenizer"]["use_regex"] is True
    assert spec["decoder"]["type"] == "ByteLevel"
    assert spec["model"]["type"] == "BPE"
    vocab = spec["model"]["vocab"]
    assert len(vocab) == 1024
    assert (vocab["<|pad|>"], vocab["<|bos|>"], vocab["<|endoftext|>"]) == (PAD_ID, BOS_ID, EOS_ID) == (0, 1, 2)
    specials = {t["content"]: t["id"] for t in spec["added_tokens"] if t["special"]}
    assert specials == {"<|pad|>": 0, "<|bos|>": 1, "<|endoftext|>": 2}
    # every byte has a symbol, so any text encodes without unk
    tok = load_tokenizer(tok_dir)
    assert tok.get_vocab_size() == 1024
    assert all(tok.token_to_id(ch) is not None for ch in ("Ā", "ġ", "Ġ", "ÿ"))


def test_round_trip_every_shared_data_file(tok_dir: Path, shared_data: Path) -> None:
    """decode(encode(text)) == text for the whole (decompressed) content of every file, and for every document
    of the JSONL files (whose raw lines escape non-ASCII as \\uXXXX)."""
    tok = load_tokenizer(tok_dir)
    files = sorted(p for p in shared_data.rglob("*") if p.is_file() and p.name != "SOURCES.md")
    assert len(files) >= 9
    texts: list[tuple[str, str]] = [(str(p), _read_text(p)) for p in files]
    for p in files:
        if ".jsonl" in p.name or ".json" in p.name:
            texts += [(f"{p}#doc{i}", t) for i, t in enumerate(_jsonl_texts(p))]
    assert any(any(ord(c) > 127 for c in t) for _, t in texts), "no non-ASCII text: the test would be weak"
    assert any(ord(c) > 0x2000 for _, t in texts for c in t), "no multi-byte punctuation/CJK/emoji"
    encs = tok.encode_batch_fast([t for _, t in texts], add_special_tokens=False)
    for (name, text), enc in zip(texts, encs):
        assert tok.decode(enc.ids, skip_special_tokens=False) == text, name
        if "<|endoftext|>" in text:  # literal special strings are text while packing, never the EOS id
            assert EOS_ID not in enc.ids, name


def test_train_is_deterministic(shared_data: Path) -> None:
    texts = _read_text(shared_data / "tinyshakespeare" / "input.txt").split("\n\n")[:2000]
    a = train_tokenizer([texts], vocab_size=600).to_str()
    b = train_tokenizer([texts], vocab_size=600).to_str()
    assert a == b


def test_transformers_gives_the_same_ids(tok_dir: Path, shared_data: Path) -> None:
    transformers = pytest.importorskip("transformers", reason="transformers (extra 'hf') not installed")
    tok = load_tokenizer(tok_dir)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    assert (auto.pad_token_id, auto.bos_token_id, auto.eos_token_id) == (0, 1, 2)
    texts = _jsonl_texts(shared_data / "web" / "dclm_labeled_499.jsonl")[:120]
    texts += _jsonl_texts(shared_data / "synthetic" / "gpt4o_tinystories_prompt_50.jsonl")[:20]
    texts += ["  leading spaces\tand tabs\n\n\nnewlines  ", "naïve café — “quotes” 日本語 🙂", "don't I'll we've 12345"]
    assert any(any(ord(c) > 127 for c in t) for t in texts)
    ours = [e.ids for e in tok.encode_batch_fast(texts, add_special_tokens=False)]
    assert hf(texts)["input_ids"] == ours
    assert auto(texts)["input_ids"] == ours
    for ids, text in zip(ours, texts):
        assert auto.decode(ids) == text
