"""Tokenize stage: byte-level BPE (GPT-2 style, llama.cpp/transformers compatible) and packed token shards.

    from data_pipelines.tokenize import TokenizeConfig, run_tokenize
    stats = run_tokenize(TokenizeConfig(vocab_size=4096), data_files, tokenizer_dir, shards_dir, seed=1337)
    from data_pipelines.tokenize.shards import ShardIndex
    idx = ShardIndex.load(shards_dir); arrays = idx.open("train"); idx.bytes_per_token("val")
"""

from data_pipelines.tokenize.bpe import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)
from data_pipelines.tokenize.config import TokenizeConfig
from data_pipelines.tokenize.pack import run_tokenize
from data_pipelines.tokenize.shards import ShardIndex

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "SPECIAL_TOKENS", "ShardIndex", "TokenizeConfig", "load_tokenizer",
    "run_tokenize", "train_tokenizer",
]
