"""StepRNG: the torch RNG state that belongs to the training steps alone, so dropout survives a resume exactly.

Why: dropout (model or LoRA) draws from torch's global RNG, and so does much else in a run that is not a training
step: a DataLoader iterator draws its base seed from it when it has no generator of its own (the training loader
when a run starts or resumes, the validation loader at every validation), and a one-off measurement (the CPU matmul
peak, measured only when it is not cached) may draw from it when a run starts. A checkpoint written at the end of
step k held the state of that moment; the uninterrupted run then validated (one more draw) before step k+1, while a
resumed run restored the state and then built its iterators and measured (other draws). Both continued from
different states and the loss drifted after the resume point (LOG.md, "exact resume with dropout").

Design and invariants
- The state is captured right after each optimizer step (all micro-batches of the step have run) and put back right
  before the first micro-batch of the next step, so nothing that runs between steps (validation, samples, logging,
  checkpointing, a new data iterator, hooks at start-up) changes the randomness of training.
- A fresh run captures at fit start (after the model is built); a resumed run takes the checkpoint's state, which is
  the one step k+1 starts from in the uninterrupted run too: resumed and uninterrupted runs draw the same masks.
- The checkpoint holds the captured state (`rng_states`: "torch", and "cuda" where CUDA is in use). Checkpoints are
  written at step boundaries only (train/checkpointing.py), where the captured state is the current one.
"""

from __future__ import annotations

from typing import Any

import torch


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _current() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if _cuda_in_use():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


class StepRNG:
    """The global RNG state the next optimizer step starts from; `apply` puts it back before that step runs."""

    def __init__(self) -> None:
        self.states: dict[str, Any] | None = None
        self.pending = False

    def capture(self) -> None:
        """Record the current state as the one the next step starts from (after a step; at a fresh run's start)."""
        self.states, self.pending = _current(), True

    def apply(self) -> None:
        """Before a micro-batch: restore the captured state if it starts a step and was not restored yet."""
        if not self.pending or self.states is None:
            return
        torch.set_rng_state(self.states["torch"])
        if "cuda" in self.states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(self.states["cuda"])
        self.pending = False

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: the captured state, else (never trained yet) the current one."""
        return dict(self.states) if self.states is not None else _current()

    def load_state_dict(self, states: dict[str, Any]) -> None:
        """Take a checkpoint's state; the first resumed step starts from it (after all start-up work has run)."""
        self.states, self.pending = dict(states), True
