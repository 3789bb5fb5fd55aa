"""Token-shard DataModule: training windows as a pure function of (seed, batch index), validation as fixed windows.

Design and invariants
- The shards of a split are one virtual token stream (documents joined with EOS, shards concatenated); a
  window is `seq_len + 1` consecutive tokens (inputs and next-token targets) and may span a shard boundary.
- Micro-batch `i` of the run is a *global* batch of `batch_size * world_size` windows computed from
  `(seed, i)` alone: 'random' draws offsets with `np.random.default_rng([seed, i])`, 'sequential' takes
  windows `i * G .. i * G + G - 1` of the stream (stride `seq_len`, wrapping around at the end). Rank r keeps
  rows `[r * batch_size, (r + 1) * batch_size)`. Nothing depends on an RNG's history, so the data order is
  identical for a fresh run, a resumed run and any number of DataLoader workers.
- The position is the index of the next micro-batch; each batch carries its index, the LightningModule stores
  `index + 1` after consuming it, and `state_dict()` saves it in the checkpoint. `train_dataloader()` is
  built after Lightning restored that state, so a resumed run continues exactly where the checkpoint was
  taken (DataLoader prefetching does not matter: the position is what the model consumed, not what was read).
- Validation: the first `num_val_tokens // seq_len` non-overlapping windows of the val split, in order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info


class TokenStream:
    """A split's shards read as one array; `read(start, n)` may cross shard boundaries."""

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = [a for a in arrays if len(a) > 0]
        lengths = np.array([len(a) for a in self.arrays], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.num_tokens = int(self.starts[-1])

    @classmethod
    def from_tokens(cls, tokens: np.ndarray | torch.Tensor) -> TokenStream:
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.cpu().numpy()
        return cls([np.asarray(tokens).reshape(-1)])

    def read(self, start: int, n: int) -> np.ndarray:
        out = np.empty(n, dtype=np.int64)
        filled = 0
        shard = int(np.searchsorted(self.starts, start, side="right") - 1)
        pos = start - int(self.starts[shard])
        while filled < n:
            take = min(n - filled, len(self.arrays[shard]) - pos)
            out[filled : filled + take] = self.arrays[shard][pos : pos + take]
            filled += take
            shard, pos = shard + 1, 0
        return out


def global_batch_windows(stream: TokenStream, index: int, num_rows: int, seq_len: int, seed: int,
                         order: str) -> np.ndarray:
    """Start offsets (int64[num_rows]) of the windows of global micro-batch `index`."""
    usable = stream.num_tokens - (seq_len + 1)
    if usable < 0:
        raise ValueError(
            f"seq_len: the training split has {stream.num_tokens} tokens, fewer than seq_len + 1 = {seq_len + 1}"
        )
    if order == "random":
        rng = np.random.default_rng([seed, index])
        return rng.integers(0, usable + 1, size=num_rows, dtype=np.int64)
    num_windows = usable // seq_len + 1
    k = (np.arange(num_rows, dtype=np.int64) + index * num_rows) % num_windows
    return k * seq_len


class TrainWindows(IterableDataset):
    """Yields (x_BT, y_BT, index) for micro-batches start, start+1, ... forever (the trainer stops by steps)."""

    def __init__(self, stream: TokenStream, batch_size: int, seq_len: int, seed: int, order: str,
                 start: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.stream, self.batch_size, self.seq_len = stream, batch_size, seq_len
        self.seed, self.order, self.start = seed, order, start
        self.rank, self.world_size = rank, world_size

    def batch(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        starts = global_batch_windows(self.stream, index, self.batch_size * self.world_size, self.seq_len,
                                      self.seed, self.order)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        win_BT1 = np.stack([self.stream.read(int(s), self.seq_len + 1) for s in mine])
        win = torch.from_numpy(win_BT1)
        return win[:, :-1].contiguous(), win[:, 1:].contiguous(), index

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        index = self.start + wid
        while True:
            yield self.batch(index)
            index += nw


class ValWindows(Dataset):
    """The first `num_windows` non-overlapping windows of the val split."""

    def __init__(self, stream: TokenStream, seq_len: int, num_tokens: int) -> None:
        self.stream, self.seq_len = stream, seq_len
        self.num_windows = max(0, min(num_tokens // seq_len, (stream.num_tokens - 1) // seq_len))

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        win = torch.from_numpy(self.stream.read(i * self.seq_len, self.seq_len + 1))
        return win[:-1], win[1:]


class CheckpointedPosition:
    """The train position a data module checkpoints (Lightning calls these), and the settings that fix the data order:
    a resume with other settings would replay or skip windows, so it is refused."""

    next_index: int
    seed: int
    order: str
    batch_size: int
    seq_len: int

    def state_dict(self) -> dict[str, Any]:
        return {"next_index": int(self.next_index), "seed": int(self.seed), "order": self.order,
                "batch_size": int(self.batch_size), "seq_len": int(self.seq_len)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "order", "batch_size", "seq_len"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"{key}: the checkpoint was trained with {key}={state[key]!r}, this run has "
                    f"{getattr(self, key)!r}; resuming would change the data order (use a new run directory)"
                )
        self.next_index = int(state["next_index"])


class StreamDataModule(CheckpointedPosition, L.LightningDataModule):
    """Training windows from a token stream (and validation windows from another); the train position is checkpointed.

    The data of every LMSystem run: ShardDataModule reads its streams from a shards folder, in-memory runs (recovery
    after pruning) pass token arrays."""

    def __init__(self, train_stream: TokenStream, val_stream: TokenStream | None, batch_size: int, seq_len: int,
                 seed: int, order: str = "random", num_val_tokens: int = 65536, num_workers: int = 0,
                 where: str = "the training data") -> None:
        super().__init__()
        self.batch_size, self.seq_len, self.seed, self.order = batch_size, seq_len, seed, order
        self.num_val_tokens, self.num_workers = num_val_tokens, num_workers
        self.next_index = 0
        self.train_stream = train_stream
        self.val_stream = val_stream if val_stream is not None else TokenStream([])
        if self.train_stream.num_tokens < seq_len + 1:
            raise ValueError(
                f"seq_len: {where} has {self.train_stream.num_tokens} training tokens, "
                f"fewer than seq_len + 1 = {seq_len + 1}"
            )

    def train_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        ds = TrainWindows(self.train_stream, self.batch_size, self.seq_len, self.seed, self.order,
                          start=self.next_index, rank=rank, world_size=world)
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())

    def val_dataloader(self) -> DataLoader | list:
        ds = ValWindows(self.val_stream, self.seq_len, self.num_val_tokens)
        if len(ds) == 0:
            return []
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False, num_workers=0)


class ShardDataModule(StreamDataModule):
    """Reads `shards_dir` through data_pipelines' ShardIndex (train and val splits)."""

    def __init__(self, shards_dir: Path, batch_size: int, seq_len: int, seed: int, order: str = "random",
                 num_val_tokens: int = 65536, num_workers: int = 0) -> None:
        from data_pipelines.tokenize.shards import ShardIndex

        self.shards_dir = Path(shards_dir)
        self.index = ShardIndex.load(self.shards_dir)
        val_arrays = self.index.open("val") if "val" in self.index.splits else []
        super().__init__(TokenStream(self.index.open("train")), TokenStream(val_arrays), batch_size, seq_len, seed,
                         order, num_val_tokens, num_workers, where=str(self.shards_dir))

    def bytes_per_token(self) -> float:
        split = "val" if "val" in self.index.splits else "train"
        return float(self.index.bytes_per_token(split))
