"""Recovery training after compression (pruning): a short run of the train recipe on the compressed model.

Why: pruning removes weights the model relied on; a few hundred thousand tokens of training win most of the loss
back. Two ways, chosen per prune pass (models/compress `recovery: plain | distill`):
- plain: next-token cross-entropy on the training data, as in `train`;
- distill: logit distillation from the uncompressed model (the pass's input): alpha * CE + (1 - alpha) * T^2 *
  KL(teacher || student) at temperature T (train/distill.py). The teacher's full distribution carries more
  signal per token than the one-hot target, which is what matters when the recovery budget is small.

Design and invariants
- Both run through train/recipe.py (LMSystem: Muon + AdamW, weight decay, warmup + cosine, EMA, precision); the
  recovery's own defaults (`RECOVERY_DEFAULTS`: 10x lower learning rates than from-scratch training, 200K tokens,
  no samples) are overrides of a TrainConfig, and any other TrainConfig option can be set the same way.
- The teacher is frozen (eval mode, no gradients, not a submodule). Pruning masks are the caller's: the prune
  passes wrap this call in models.compress.prune.masked_training, so pruned weights stay exactly zero.
- Data: a shards folder (its train split) or a 1-D array of token ids, read as random windows from the seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from train.config import TrainConfig
from train.data import StreamDataModule, TokenStream

RECOVERY_DEFAULTS: dict[str, Any] = {
    "max_tokens": 200_000,
    "batch_size": 8,
    "seq_len": 256,
    "lr": 3e-4,
    "muon_lr": 3e-3,
    "num_sample_tokens": 0,
    "progress_bar": False,
}
"""How recovery differs from training from scratch: it starts from trained weights, so 10x lower learning rates
(AdamW 3e-3 -> 3e-4, Muon 0.03 -> 3e-3), and it is short."""


def recovery_config(**overrides: Any) -> TrainConfig:
    """The TrainConfig of a recovery run: train's defaults, RECOVERY_DEFAULTS, then `overrides`."""
    return TrainConfig(**{**RECOVERY_DEFAULTS, **overrides})


def _stream(data: Path | str | torch.Tensor | np.ndarray) -> TokenStream:
    if isinstance(data, (str, Path)):
        from data_pipelines.tokenize.shards import ShardIndex

        return TokenStream(ShardIndex.load(Path(data)).open("train"))
    return TokenStream.from_tokens(data)


def recover(student: nn.Module, teacher: nn.Module | None, data: Path | str | torch.Tensor | np.ndarray,
            cfg: TrainConfig | None = None, **overrides: Any) -> nn.Module:
    """Train `student` in place for cfg.max_tokens with the train recipe; returns it in eval mode.

    teacher: None recovers on cross-entropy alone (plain); a model distils from it (cfg.distill_alpha,
    cfg.distill_temperature). cfg: a full TrainConfig, else recovery_config(**overrides)."""
    from train.recipe import train_in_memory

    cfg = cfg if cfg is not None else recovery_config(**overrides)
    stream = _stream(data)
    max_seq = int(getattr(getattr(student, "cfg", None), "max_seq_len", 0) or cfg.seq_len or 256)
    seq_len = min(cfg.seq_len or max_seq, max_seq, stream.num_tokens - 1)
    dm = StreamDataModule(stream, None, cfg.batch_size or 8, seq_len, cfg.seed, cfg.data_order,
                          where="the recovery data")
    student.train()
    result = train_in_memory(cfg, dm, cfg.max_tokens, init_model=student, teacher=teacher)
    return result.model.eval()
