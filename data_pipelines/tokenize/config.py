"""TokenizeConfig: every knob of the tokenize stage (tokenizer training + packing into token shards).

Design: one flat dataclass with a one-line docstring under each field (the CLI builds `--help` from them).
`__post_init__` validates ranges and raises `ValueError("<field>: <what is wrong>, got <value>")`.
Which fields change the output is decided in pack.py (the fingerprints): changing `batch_bytes` or
`progress` never invalidates finished shards; changing `vocab_size`, `val_fraction` or `shard_bytes` does.
Encoding uses every core: `num_proc` worker processes each pack whole work units, each with an encoder thread
pool of cores / num_proc threads (the output is the same bytes whatever num_proc is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

MIN_VOCAB = 512
MAX_VOCAB = 65536


@dataclass
class TokenizeConfig:
    """Byte-level BPE training and packing of documents into memory-mapped token shards."""

    vocab_size: int = 4096
    """Vocabulary size of the trained byte-level BPE, special tokens included (512 to 65536)."""
    tokenizer_file: str = ""
    """Use this existing tokenizer instead of training one: a tokenizer.json, a folder holding one (an HF model
    folder, a model dir) or a base model's .gguf (rebuilt from its metadata); its own special tokens and chat
    template are kept (data_pipelines/tokenize/foreign.py). Empty = train a byte-level BPE."""
    min_frequency: int = 2
    """A pair must occur at least this often in the training text to become a merge."""
    max_train_bytes: int = 200_000_000
    """Cap on the UTF-8 bytes of text the tokenizer is trained on (an even hash sample of the train split)."""
    val_fraction: float = 0.01
    """Fraction of documents held out as the val split (at least one when there are two or more documents)."""
    add_bos: bool = False
    """Put <|bos|> before every document (documents are always followed by <|endoftext|>)."""
    shard_bytes: int = 64_000_000
    """Target UTF-8 bytes of text per work unit; each unit writes one shard per split and is resumable."""
    batch_bytes: int = 2_000_000
    """Text bytes per encoder call (3 in flight, ~25 B of encoder output per text byte); 1 MB measured 20% slower."""
    shard_dtype: Literal["auto", "uint16", "uint32"] = "auto"
    """Token dtype on disk; auto picks uint16 when every id fits, else uint32."""
    text_field: str = "text"
    """Column (parquet) or key (jsonl) holding the document text."""
    id_field: str = "id"
    """Column/key with a stable document id used for the split hash; row position is used when absent."""
    num_proc: int = 0
    """Worker processes that pack work units in parallel; 0 = one per core when there are >= 32 MB to pack, 1 = in
    this process. The shards are byte-identical whatever the value."""
    progress: bool = True
    """Show tqdm progress bars (MB/s and ETA) on stderr."""

    # display / speed only, not part of the stage hash: they never change the bytes written
    HASH_EXCLUDE: ClassVar[frozenset[str]] = frozenset({"progress", "num_proc"})

    def __post_init__(self) -> None:
        if not MIN_VOCAB <= self.vocab_size <= MAX_VOCAB:
            raise ValueError(f"vocab_size: must be in [{MIN_VOCAB}, {MAX_VOCAB}], got {self.vocab_size}")
        if self.min_frequency < 1:
            raise ValueError(f"min_frequency: must be >= 1, got {self.min_frequency}")
        if self.max_train_bytes < 1:
            raise ValueError(f"max_train_bytes: must be >= 1, got {self.max_train_bytes}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction: must be in [0, 1), got {self.val_fraction}")
        if self.shard_bytes < 1:
            raise ValueError(f"shard_bytes: must be >= 1, got {self.shard_bytes}")
        if self.batch_bytes < 1:
            raise ValueError(f"batch_bytes: must be >= 1, got {self.batch_bytes}")
        if not isinstance(self.num_proc, int) or isinstance(self.num_proc, bool) or self.num_proc < 0:
            raise ValueError(f"num_proc: must be a non-negative integer, got {self.num_proc!r}")
        if not self.text_field:
            raise ValueError(f"text_field: must be non-empty, got {self.text_field!r}")
