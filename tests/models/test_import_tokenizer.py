"""A foreign tokenizer (special tokens at ids of its own, its own names, a chat template) goes through tokenize, train
and export: documents end with its EOS, and the HF / GGUF exports keep its special tokens and chat template."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"


def _foreign_tokenizer(folder: Path, texts: list[str]) -> Tokenizer:
    """A byte-level BPE whose specials are <s> / </s> added *after* the merges (high ids, not 0/1/2)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens(["<s>", "</s>"])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "chat_template": TEMPLATE}))
    return tok


@pytest.mark.slow
def test_foreign_tokenizer_round_trip_tokenize_train_export(shared_data: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    from data_pipelines.tokenize import TokenizeConfig, run_tokenize
    from data_pipelines.tokenize.shards import ShardIndex
    from models import ModelConfig, load_model
    from models.export.gguf import export_gguf
    from models.export.hf import export_hf
    from train import TrainConfig, run_train

    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    docs = [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:120]
    tok = _foreign_tokenizer(tmp_path / "base", docs)
    eos = tok.token_to_id("</s>")
    assert eos > 2
    pq.write_table(pa.table({"text": docs, "id": [str(i) for i in range(len(docs))]}), tmp_path / "d.parquet")
    run_tokenize(TokenizeConfig(tokenizer_file=str(tmp_path / "base"), val_fraction=0.1, progress=False),
                 [tmp_path / "d.parquet"], tmp_path / "run" / "tokenizer", tmp_path / "run" / "shards", seed=0)
    idx = ShardIndex.load(tmp_path / "run" / "shards")
    assert (idx.eos_id, idx.bos_id) == (eos, tok.token_to_id("<s>"))
    train = np.concatenate(idx.open("train"))
    assert int((train == eos).sum()) == idx.splits["train"]["num_docs"] and train[-1] == eos
    assert tok.decode(train[: int(np.argmax(train == eos))].tolist()) in docs  # a whole document, then its EOS
    s = run_train(TrainConfig(max_tokens=4 * 32 * 3, batch_size=4, seq_len=32, num_val_tokens=256, num_sample_tokens=8,
                              sample_every_steps=3, progress_bar=False, num_threads=1, log_every_steps=1),
                  ModelConfig(vocab_size=tok.get_vocab_size(), dim=32, num_layers=1, num_heads=2, max_seq_len=64),
                  tmp_path / "run" / "shards", tmp_path / "run",
                  tokenizer_file=tmp_path / "run" / "tokenizer" / "tokenizer.json")
    assert s["status"] == "completed"
    model, tok_file = load_model(tmp_path / "run" / "checkpoints" / "final")
    assert (tok_file.parent / "tokenizer_config.json").is_file()  # the chat template travels with the model

    hf = export_hf(model, tok_file, tmp_path / "export" / "hf")
    cfg = json.loads((Path(hf["path"]) / "config.json").read_text())
    tcfg = json.loads((Path(hf["path"]) / "tokenizer_config.json").read_text())
    assert cfg["eos_token_id"] == eos and tcfg["eos_token"] == "</s>" and tcfg["chat_template"] == TEMPLATE
    transformers = pytest.importorskip("transformers")
    at = transformers.AutoTokenizer.from_pretrained(hf["path"])
    assert at.eos_token_id == eos
    assert at.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "<s>user: hi</s>"

    gguf = pytest.importorskip("gguf")
    path = tmp_path / "export" / "m.gguf"
    export_gguf(model, tok_file, path, ftype="f32")
    r = gguf.GGUFReader(str(path))
    assert r.fields["tokenizer.chat_template"].contents() == TEMPLATE
    assert r.fields["tokenizer.ggml.eos_token_id"].contents() == eos
