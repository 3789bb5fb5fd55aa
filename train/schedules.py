"""Learning-rate schedules as pure functions of the optimizer step: multiplier in [min_ratio, 1] of the peak lr.

Invariants: `lr_multiplier(step)` depends only on `step` and the arguments (no state), so a resumed run gets
the same learning rate at the same step; the scheduler is a `LambdaLR` over a plain closure, whose
state_dict holds only numbers (weights_only-safe checkpoints). Step 0 is the first update; warmup is linear
from 1/(warmup+1) so the first update is never taken with lr 0.

- cosine: warmup, then cosine from 1 down to min_ratio at the last step.
- wsd (warmup-stable-decay): warmup, flat at 1, then a linear decay to min_ratio over the last decay_frac.
- constant: warmup, then 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def lr_multiplier_fn(
    kind: str, total_steps: int, warmup_frac: float, min_ratio: float, decay_frac: float = 0.2
) -> Callable[[int], float]:
    """The schedule as `step -> multiplier`; `total_steps` is the number of optimizer steps in the run."""
    total = max(1, int(total_steps))
    warmup = int(round(warmup_frac * total))
    decay = max(1, int(round(decay_frac * total))) if kind == "wsd" else 0

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            span = max(1, total - 1 - warmup)
            progress = min(1.0, (step - warmup) / span)
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if kind == "wsd":
            decay_start = total - decay
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start + 1) / decay)
            return 1.0 + (min_ratio - 1.0) * progress
        raise ValueError(f"schedule: unknown kind, got {kind!r}")

    return fn


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_frac: float, min_ratio: float,
    decay_frac: float = 0.2,
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier_fn(kind, total_steps, warmup_frac, min_ratio, decay_frac)
    )
