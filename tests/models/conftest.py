"""Fixtures for the models room's tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TOKENIZER_VOCAB = 300


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors on a shared 2-core box: OpenMP threads spin against each other (10x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def write_tokenizer(path: Path, text: str, vocab: int = TOKENIZER_VOCAB) -> None:
    """A byte-level BPE of our recipe (specials at 0/1/2) trained on `text`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer)
    tok.save(str(path))


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory, shared_data) -> Path:
    """A 300-token tokenizer of the shared TinyStories sample (the export/GGUF/QAT tests' vocabulary)."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    write_tokenizer(path, (shared_data / "tinystories" / "tinystories_2000.txt").read_text()[:30000])
    return path
