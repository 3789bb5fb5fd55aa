"""The interface between LMSystem and its callbacks: what the system reports, and "an optimizer step just ended".

Design and invariants
- `RunState` is the one object a callback reads from the system (`pl_module.run_state`): the latest micro-batch's
  loss and MoE auxiliary loss, the latest step's gradient norm, and the newest checkpoint on disk (for the NaN
  guard's message). Tensors stay on the device; a callback converts them only when it logs.
- `StepCallback.on_step` runs once per optimizer step, after the update, never mid-accumulation. The boundary is
  seen through public API only: `trainer.global_step` as it was when the micro-batch started vs when it ended.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import lightning as L
import torch


@dataclass
class RunState:
    """What LMSystem reports to its callbacks."""

    loss: torch.Tensor | None = None
    """Training loss of the latest micro-batch (detached)."""
    aux_loss: torch.Tensor | None = None
    """MoE load-balancing loss of the latest micro-batch (detached); None for dense models."""
    grad_norm: torch.Tensor | None = None
    """Total gradient norm before clipping of the latest optimizer step."""
    last_good_ckpt: str = ""
    """The newest checkpoint written (named by the non-finite-loss error); '' before the first."""


def run_state(pl_module: L.LightningModule) -> RunState:
    """The module's RunState; a clear error for a module that is not an LMSystem."""
    state = getattr(pl_module, "run_state", None)
    if not isinstance(state, RunState):
        raise TypeError(f"{type(pl_module).__name__}: the training callbacks need a module with a RunState "
                        "`run_state` attribute (train.system.LMSystem)")
    return state


class StepCallback(L.Callback):
    """A callback with `on_micro_batch` (after every micro-batch) and `on_step` (after every optimizer step)."""

    _step_at_start = -1

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._step_at_start = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.on_micro_batch(trainer, pl_module)
        if trainer.global_step != self._step_at_start:
            self.on_step(trainer, pl_module)

    def on_micro_batch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After each micro-batch's forward/backward (and the update, when it ended a step)."""

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After each optimizer step; `trainer.global_step` already counts it."""
