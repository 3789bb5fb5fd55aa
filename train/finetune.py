"""The finetune stage: adapt a base model (ours, Hugging Face, GGUF) by full fine-tuning, LoRA or QLoRA.

Design and invariants
- One training recipe: fine-tuning is `train.run_train` with the base as `init_from`, a loss-masked data module
  and, for LoRA / QLoRA, adapters on the frozen base (`LMSystem(lora_config=...)`). The Lightning system,
  callbacks, TensorBoard, checkpointing, exact resume after a kill, EMA and progress are train's. Its run
  directory is `<run>/finetune/` (checkpoints/, tb/, train/summary.json), next to which this stage writes
  `adapter/` (PEFT format, LoRA methods only), `merged/` (a plain model dir with the tokenizer and its chat
  template) and `summary.json`.
- The knobs that make fine-tuning differ from pretraining live here (method, data, lr, budget, batch, sequence
  length, EMA, optimizer, weight decay, warmup); everything else (precision, devices, checkpoint and validation
  intervals, threads, progress) comes from the run's `train` section.
- Data: chat / instruction / text JSONL (data_pipelines/chat.py), loss on assistant tokens only; or, with no
  files, the run's token shards (plain-text domain adaptation). Examples are split into train / val by a hash
  of their position (val_fraction) and packed back to back into one stream with a parallel 0/1 mask; windows
  are drawn as train draws shard windows (train/data.py: a pure function of (seed, batch index)), so resume
  is exact. With `window_start: example` (the default) each drawn start moves back to the first token of the
  example it falls in, so every reply is trained with its prompt in view (a window cut mid-example would
  teach the reply's second half without the instruction); `any` keeps the drawn
  start. A window whose targets are all masked is moved onto the nearest trained token. `word_weight` weights the
  loss of each required word's first use in a reply (examples with a `words` list); its batches carry the
  weights as a fourth tensor, which LMSystem.training_step applies.
- The tokenizer is the base model's own when it has one (a model dir's or HF folder's tokenizer.json, a GGUF's
  metadata), else the run's tokenizer/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from train.config import TrainConfig
from train.data import CheckpointedPosition, TokenStream, TrainWindows, ValWindows, global_batch_windows
from train.finetune_config import FinetuneConfig, Method

__all__ = ["FinetuneConfig", "Method", "MaskedDataModule", "run_finetune"]

# ---------------------------------------------------------------------------------------------------- data


@dataclass
class MaskedSplit:
    ids: np.ndarray
    mask: np.ndarray
    trained_bytes: int
    num_examples: int
    starts: np.ndarray | None = None
    """Offset of each example's first token in `ids` (ascending)."""
    first_use: np.ndarray | None = None
    """0/1 per token: a required word's first use in a reply (data_pipelines/chat.py `first_uses`)."""

    @property
    def bytes_per_token(self) -> float:
        n = int(self.mask.sum())
        return self.trained_bytes / n if n else 0.0


def encode_files(files: list[str], tokenizer_file: Path, val_fraction: float) -> dict[str, MaskedSplit]:
    """Encode every example of `files` and split them into train / val by a hash of (file name, line)."""
    from data_pipelines.chat import ChatEncoder, read_jsonl

    enc = ChatEncoder(tokenizer_file)
    parts: dict[str, list[Any]] = {"train": [], "val": []}
    for f in files:
        for obj, where in read_jsonl(f):
            e = enc.encode(obj, where)
            h = int.from_bytes(hashlib.sha256(f"{Path(f).name}:{where.rsplit(':', 1)[1]}".encode()).digest()[:8],
                               "little")
            parts["val" if (h % 10_000) < val_fraction * 10_000 else "train"].append(e)
    if not parts["train"] and not parts["val"]:
        raise ValueError(f"data: no examples in {', '.join(files)}")
    if val_fraction > 0 and not parts["val"] and len(parts["train"]) > 1:
        parts["val"].append(parts["train"].pop())
    out = {}
    for split, es in parts.items():
        if not es:
            out[split] = MaskedSplit(np.zeros(0, np.int64), np.zeros(0, np.uint8), 0, 0, np.zeros(0, np.int64),
                                     np.zeros(0, np.uint8))
            continue
        starts = np.concatenate([[0], np.cumsum([len(e.ids) for e in es])[:-1]]).astype(np.int64)
        out[split] = MaskedSplit(np.concatenate([e.ids for e in es]), np.concatenate([e.mask for e in es]),
                                 sum(e.trained_bytes for e in es), len(es), starts,
                                 np.concatenate([e.first_use for e in es]))
    if int(out["train"].mask.sum()) == 0:
        raise ValueError(f"data: no trained (assistant or text) tokens in {', '.join(files)}")
    return out


def _shift_to_trained(starts: np.ndarray, trained_pos: np.ndarray, mask: TokenStream, seq_len: int,
                      usable: int) -> np.ndarray:
    """Move windows with no trained target onto the nearest trained token (a pure function of the start)."""
    out = starts.copy()
    for r, s in enumerate(starts):
        if mask.read(int(s) + 1, seq_len).any():
            continue
        j = min(int(np.searchsorted(trained_pos, s)), len(trained_pos) - 1)
        out[r] = int(np.clip(trained_pos[j] - seq_len // 2, 0, usable))
    return out


def _snap_to_examples(starts: np.ndarray, example_starts: np.ndarray, usable: int) -> np.ndarray:
    """Move each window start back to the first token of the example it falls in (kept <= usable)."""
    j = np.searchsorted(example_starts, starts, side="right") - 1
    snapped = example_starts[np.clip(j, 0, len(example_starts) - 1)]
    fits = example_starts[example_starts <= usable]
    last = fits[-1] if len(fits) else 0  # the last example start a whole window still fits behind
    return np.minimum(snapped, last).astype(np.int64)


class MaskedTrainWindows(TrainWindows):
    """TrainWindows over a token stream with a parallel mask: masked targets become -100. With `example_starts`
    each window begins at an example's first token. With `first_use` and a `word_weight` other than 1 a batch
    carries a fourth tensor, the targets' loss weights (`word_weight` on first uses, 1 elsewhere)."""

    def __init__(self, stream: TokenStream, mask: TokenStream, *args: Any, example_starts: np.ndarray | None = None,
                 first_use: TokenStream | None = None, word_weight: float = 1.0, **kw: Any) -> None:
        super().__init__(stream, *args, **kw)
        self.mask = mask
        self.trained_pos = np.flatnonzero(mask.arrays[0]) if mask.arrays else np.zeros(0, np.int64)
        self.example_starts = example_starts
        self.first_use = first_use if word_weight != 1.0 else None
        self.word_weight = word_weight

    def batch(self, index: int) -> tuple[torch.Tensor, ...]:
        G = self.batch_size * self.world_size
        usable = self.stream.num_tokens - (self.seq_len + 1)
        starts = global_batch_windows(self.stream, index, G, self.seq_len, self.seed, self.order)
        if self.example_starts is not None and len(self.example_starts):
            starts = _snap_to_examples(starts, self.example_starts, usable)
        starts = _shift_to_trained(starts, self.trained_pos, self.mask, self.seq_len, usable)
        mine = starts[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        win = torch.from_numpy(np.stack([self.stream.read(int(s), self.seq_len + 1) for s in mine]))
        m = torch.from_numpy(np.stack([self.mask.read(int(s), self.seq_len + 1) for s in mine]).astype(bool))
        y = win[:, 1:].clone()
        y[~m[:, 1:]] = -100
        if self.first_use is None:
            return win[:, :-1].contiguous(), y, index
        f = np.stack([self.first_use.read(int(s) + 1, self.seq_len) for s in mine]).astype(np.float32)
        w = torch.from_numpy(1.0 + (self.word_weight - 1.0) * f)
        return win[:, :-1].contiguous(), y, index, w


class MaskedValWindows(ValWindows):
    def __init__(self, stream: TokenStream, mask: TokenStream, seq_len: int, num_tokens: int) -> None:
        super().__init__(stream, seq_len, num_tokens)
        self.mask = mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        win = torch.from_numpy(self.stream.read(i * self.seq_len, self.seq_len + 1))
        m = torch.from_numpy(self.mask.read(i * self.seq_len, self.seq_len + 1).astype(bool))
        y = win[1:].clone()
        y[~m[1:]] = -100
        return win[:-1], y


class MaskedDataModule(CheckpointedPosition, L.LightningDataModule):
    """ShardDataModule's contract (checkpointed position, pure-function windows) over in-memory masked examples."""

    def __init__(self, splits: dict[str, MaskedSplit], vocab_size: int, eos_id: int, batch_size: int, seq_len: int,
                 seed: int, order: str = "random", num_val_tokens: int = 65536,
                 window_start: str = "example", word_weight: float = 1.0) -> None:
        super().__init__()
        if window_start not in ("example", "any"):
            raise ValueError(f"window_start: must be 'example' or 'any', got {window_start!r}")
        self.window_start = window_start
        self.word_weight = word_weight
        self.splits, self.vocab_size, self.eos_id = splits, vocab_size, eos_id
        self.tokenizer_sha256 = ""
        self.batch_size, self.seq_len, self.seed, self.order = batch_size, seq_len, seed, order
        self.num_val_tokens = num_val_tokens
        self.next_index = 0
        tr, va = splits["train"], splits["val"]
        if len(tr.ids) < seq_len + 1:
            raise ValueError(f"seq_len: the fine-tuning data has {len(tr.ids)} training tokens, fewer than "
                             f"seq_len + 1 = {seq_len + 1}")
        self.train_stream, self.train_mask = TokenStream([tr.ids]), TokenStream([tr.mask])
        self.val_stream, self.val_mask = TokenStream([va.ids]), TokenStream([va.mask])
        self.train_first = TokenStream([tr.first_use]) if tr.first_use is not None else None

    def bytes_per_token(self, split: str = "val") -> float:
        return self.splits[split].bytes_per_token

    def train_dataloader(self) -> DataLoader:
        rank, world = 0, 1
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        starts = self.splits["train"].starts if self.window_start == "example" else None
        ds = MaskedTrainWindows(self.train_stream, self.train_mask, self.batch_size, self.seq_len, self.seed,
                                self.order, start=self.next_index, rank=rank, world_size=world, example_starts=starts,
                                first_use=self.train_first, word_weight=self.word_weight)
        # an own generator: a DataLoader iterator draws its base seed from the global RNG otherwise (training's dropout
        # is kept apart from such draws anyway: train/step_rng.py)
        return DataLoader(ds, batch_size=None, num_workers=0, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader | list:
        if not self.val_stream.arrays:
            return []
        ds = MaskedValWindows(self.val_stream, self.val_mask, self.seq_len, self.num_val_tokens)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(self.seed)) if len(ds) else []



# ---------------------------------------------------------------------------------------------------- stage


def base_tokenizer(base: str, out_dir: Path) -> Path | None:
    """The base model's own tokenizer.json (GGUF: rebuilt from its metadata into out_dir), or None."""
    from data_pipelines.tokenize.foreign import import_tokenizer

    p = Path(base)
    if p.suffix == ".gguf":
        return import_tokenizer(p, out_dir)
    folder = p if p.is_dir() else p.parent
    for cand in (folder / "tokenizer.json", folder.parent / "tokenizer" / "tokenizer.json"):
        if cand.is_file():
            return import_tokenizer(cand, out_dir)  # copies its tokenizer_config.json (chat template) along
    return None


def check_base(base: str) -> None:
    """Refuse a missing base or an architecture we cannot import from its header alone, before any data work."""
    p = Path(base)
    if not p.exists():
        raise ValueError(f"finetune.base: {base}: no such file or folder")
    if p.is_dir() and (p / "config.json").is_file() and not (p / "model_config.json").is_file():
        from models.hf_mapping import config_from_hf

        try:
            config_from_hf(json.loads((p / "config.json").read_text()))
        except (ValueError, KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"finetune.base: {base}: not an importable Llama ({e})") from None
    elif p.suffix == ".gguf":
        import gguf

        try:
            arch = gguf.GGUFReader(str(p)).fields["general.architecture"].contents()
        except Exception as e:  # gguf-py raises several types on a bad file
            raise ValueError(f"finetune.base: {base}: cannot read GGUF ({e})") from None
        if arch != "llama":
            raise ValueError(f"finetune.base: {base}: only 'llama' GGUF files can be imported, got {arch!r}")


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run_finetune(cfg: FinetuneConfig, train: TrainConfig, out_dir: Path, *, default_base: Path | None = None,
                 run_tokenizer: Path | None = None, shards_dir: Path | None = None) -> dict[str, Any]:
    """Fine-tune into `out_dir` (the run's finetune/); returns the summary (status "interrupted" after a signal)."""
    from train.runner import run_train

    t0 = time.time()
    out_dir = Path(out_dir)
    base = cfg.base or (str(default_base) if default_base is not None else "")
    if not base:
        raise ValueError("finetune.base: no base model given and the run has no checkpoints/final")
    check_base(base)
    tok_dir = out_dir / "tokenizer"
    if cfg.tokenizer:
        from data_pipelines.tokenize.foreign import import_tokenizer

        tokenizer_file: Path | None = import_tokenizer(cfg.tokenizer, tok_dir)
    elif (tok_dir / "tokenizer.json").is_file():
        tokenizer_file = tok_dir / "tokenizer.json"  # a resumed run: imported the first time
    else:
        from data_pipelines.tokenize.foreign import import_tokenizer

        tokenizer_file = base_tokenizer(base, tok_dir) or (
            import_tokenizer(run_tokenizer, tok_dir) if run_tokenizer and run_tokenizer.is_file() else None)
    lora = cfg.lora_config()
    tcfg = cfg.train_config(train, base)

    make_dm = None
    if cfg.data:
        if tokenizer_file is None:
            raise ValueError("finetune.tokenizer: the data needs a tokenizer; the base has none and none is set")
        splits = encode_files(cfg.data, tokenizer_file, cfg.val_fraction)
        from data_pipelines.tokenize.foreign import special_ids

        ids = special_ids(tokenizer_file)

        def make_dm(batch_size: int, seq_len: int) -> MaskedDataModule:
            from tokenizers import Tokenizer

            vocab = Tokenizer.from_file(str(tokenizer_file)).get_vocab_size()
            return MaskedDataModule(splits, vocab, ids["eos_id"], batch_size, seq_len, tcfg.seed, tcfg.data_order,
                                    tcfg.num_val_tokens, cfg.window_start, cfg.word_weight)
    elif shards_dir is None:
        raise ValueError("finetune.data: no data files given and the run has no token shards")

    summary = run_train(tcfg, None, shards_dir, out_dir, tokenizer_file=tokenizer_file, datamodule=make_dm,
                        lora_config=lora)
    if summary.get("status") == "interrupted":
        return summary
    final = out_dir / "checkpoints" / "final"
    merged_dir = out_dir / "merged"
    if merged_dir.exists():
        shutil.rmtree(merged_dir)
    os.replace(final, merged_dir)
    if tokenizer_file is not None and (tokenizer_file.parent / "tokenizer_config.json").is_file():
        shutil.copyfile(tokenizer_file.parent / "tokenizer_config.json", merged_dir / "tokenizer_config.json")
    out: dict[str, Any] = {
        "method": cfg.method,
        "base": base,
        "merged": str(merged_dir),
        "adapter": str(out_dir / "adapter") if lora else None,
        "tokenizer": str(tokenizer_file) if tokenizer_file else None,
        "val_bpb": summary.get("val_bpb"),
        "final_val_loss": summary.get("final_val_loss"),
        "final_train_loss": summary.get("final_train_loss"),
        "tokens": summary.get("tokens"),
        "steps": summary.get("steps"),
        "trainable_params": summary.get("trainable_params"),
        "num_params": summary.get("num_params"),
        "tokens_per_s": summary.get("tokens_per_s"),
        "wall_s": time.time() - t0,
        "status": "completed",
        "lora": lora,
    }
    _write_json_atomic(out_dir / "summary.json", out)
    return out

