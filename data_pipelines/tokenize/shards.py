"""ShardIndex: the reader side of the token-shard contract (train, compress and plan read shards through it).

Layout of a shards folder (written by pack.py):
- `<split>_<unit>.bin`: raw little-endian token ids (dtype from the index), documents back to back, each one
  `[<|bos|>] tokens <|endoftext|>`; a shard always ends at a document boundary.
- `index.json`: `format`, `version`, `dtype`, `vocab_size`, `eos_id`, `bos_id`, `pad_id`, `add_bos`,
  `tokenizer_sha256`, and `splits.{train,val}` = {num_docs, num_tokens, num_bytes, bytes_per_token,
  shards: [{file, num_tokens, num_docs}]}. `num_bytes` counts the UTF-8 bytes of the documents' text,
  `num_tokens` every id written (separators included), so bits-per-byte = loss_nats * num_tokens /
  (num_bytes * ln 2) = loss_nats / (bytes_per_token * ln 2).
Invariants checked on load: known format/version, dtype uint16|uint32, every listed file present with exactly
num_tokens * itemsize bytes, per-split sums consistent. Any failure is a ValueError naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INDEX_FILE = "index.json"
FORMAT = "tinyfoundry-token-shards"
VERSION = 1
SPLITS = ("train", "val")
DTYPES = ("uint16", "uint32")


@dataclass(frozen=True)
class ShardInfo:
    """One shard file of one split."""

    file: str
    """File name inside the shards folder."""
    num_tokens: int
    """Token ids in the file (EOS/BOS separators included)."""
    num_docs: int
    """Documents in the file."""


@dataclass(frozen=True)
class SplitInfo:
    """Totals and shard list of one split."""

    num_docs: int
    """Documents in the split."""
    num_tokens: int
    """Token ids in the split (EOS/BOS separators included)."""
    num_bytes: int
    """UTF-8 bytes of the split's document text."""
    bytes_per_token: float
    """num_bytes / num_tokens (0.0 for an empty split)."""
    shards: list[ShardInfo] = field(default_factory=list)
    """Shard files in order."""

    def __getitem__(self, key: str) -> Any:  # lets readers treat a split like the JSON dict it came from
        return getattr(self, key)


@dataclass(frozen=True)
class ShardIndex:
    """A loaded, validated index.json of a shards folder."""

    root: Path
    """The shards folder."""
    dtype: str
    """Token dtype on disk: uint16 or uint32."""
    vocab_size: int
    """Tokenizer vocabulary size (every id is < vocab_size)."""
    eos_id: int
    """<|endoftext|> id; ends every document."""
    bos_id: int
    """<|bos|> id; starts every document when add_bos."""
    pad_id: int
    """<|pad|> id; never written to shards."""
    add_bos: bool
    """Whether documents start with bos_id."""
    tokenizer_sha256: str
    """sha256 of the tokenizer.json that produced the ids."""
    splits: dict[str, SplitInfo]
    """'train' and 'val'."""

    @classmethod
    def load(cls, shards_dir: Path | str) -> ShardIndex:
        root = Path(shards_dir)
        path = root / INDEX_FILE
        if not path.is_file():
            raise ValueError(f"{path}: shard index not found (run the tokenize stage first)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt shard index ({e})") from None
        try:
            return cls._from_dict(root, raw)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: corrupt shard index (missing or bad field {e})") from None

    @classmethod
    def _from_dict(cls, root: Path, raw: dict[str, Any]) -> ShardIndex:
        path = root / INDEX_FILE
        if raw.get("format") != FORMAT or raw.get("version") != VERSION:
            raise ValueError(
                f"{path}: unknown shard index format {raw.get('format')!r} version {raw.get('version')!r}, "
                f"expected {FORMAT!r} version {VERSION}"
            )
        dtype = raw["dtype"]
        if dtype not in DTYPES:
            raise ValueError(f"{path}: dtype must be one of {DTYPES}, got {dtype!r}")
        itemsize = np.dtype(dtype).itemsize
        splits: dict[str, SplitInfo] = {}
        for name in SPLITS:
            s = raw["splits"][name]
            shards = [ShardInfo(str(sh["file"]), int(sh["num_tokens"]), int(sh["num_docs"])) for sh in s["shards"]]
            info = SplitInfo(int(s["num_docs"]), int(s["num_tokens"]), int(s["num_bytes"]),
                             float(s["bytes_per_token"]), shards)
            if sum(sh.num_tokens for sh in shards) != info.num_tokens or sum(sh.num_docs for sh in shards) != info.num_docs:
                raise ValueError(f"{path}: split {name!r} totals do not match its shard list")
            for sh in shards:
                f = root / sh.file
                if Path(sh.file).name != sh.file:
                    raise ValueError(f"{path}: shard name {sh.file!r} must be a plain file name")
                if not f.is_file():
                    raise ValueError(f"{f}: shard file listed in {path} is missing")
                if f.stat().st_size != sh.num_tokens * itemsize:
                    raise ValueError(
                        f"{f}: shard has {f.stat().st_size} bytes, index says {sh.num_tokens} x {itemsize} "
                        f"= {sh.num_tokens * itemsize} (truncated or stale)"
                    )
            splits[name] = info
        return cls(root=root, dtype=dtype, vocab_size=int(raw["vocab_size"]), eos_id=int(raw["eos_id"]),
                   bos_id=int(raw["bos_id"]), pad_id=int(raw["pad_id"]), add_bos=bool(raw.get("add_bos", False)),
                   tokenizer_sha256=str(raw["tokenizer_sha256"]), splits=splits)

    def _split(self, split: str) -> SplitInfo:
        if split not in self.splits:
            raise ValueError(f"split: must be one of {', '.join(self.splits)}, got {split!r}")
        return self.splits[split]

    def open(self, split: str) -> list[np.memmap]:
        """Read-only 1-D memmaps of the split's shards, in order (empty list for an empty split)."""
        return [np.memmap(self.root / sh.file, dtype=self.dtype, mode="r", shape=(sh.num_tokens,))
                for sh in self._split(split).shards if sh.num_tokens > 0]

    def num_tokens(self, split: str) -> int:
        return self._split(split).num_tokens

    def bytes_per_token(self, split: str) -> float:
        """UTF-8 text bytes per token id of the split, for bits-per-byte."""
        return self._split(split).bytes_per_token
