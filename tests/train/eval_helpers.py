"""Tiny real artefacts for the eval tests: a BPE tokenizer trained on real stories and a small saved model."""

from __future__ import annotations

from pathlib import Path

import torch


def train_tokenizer(docs: list[str], path: Path, vocab_size: int = 320) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    tok.save(str(path))
    return path


def tiny_model(vocab_size: int, seed: int = 0, max_seq_len: int = 128):
    from models import ModelConfig, Transformer

    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, dim=32, num_layers=1, num_heads=2, max_seq_len=max_seq_len)
    return Transformer(cfg)


def fit(model, ids: list[int], steps: int = 60, seq_len: int = 64, lr: float = 1e-2, seed: int = 0) -> None:
    """A few AdamW steps on random windows of `ids` (enough to move far from uniform)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.tensor(ids, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        ix = torch.randint(0, data.numel() - seq_len - 1, (8,), generator=g)
        x = torch.stack([data[i : i + seq_len] for i in ix])
        y = torch.stack([data[i + 1 : i + 1 + seq_len] for i in ix])
        loss = model(x, targets_BT=y).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
