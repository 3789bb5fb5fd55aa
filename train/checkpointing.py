"""Checkpoints: periodic (tokens, minutes), on-signal, final, keep-last-k and best, written atomically.

Design and invariants
- Checkpoints are written only at optimizer-step boundaries (StepCallback.on_step, never mid-accumulation) and
  atomically (AtomicCheckpointIO: temp file + os.replace); `last.ckpt` is a hard link (or copy) of the newest
  step file. Every decision to save is the same on all ranks (token counts are; minute timers and signals are
  broadcast/reduced), because `trainer.save_checkpoint` is collective.
- SIGTERM / SIGINT set a flag; the next step boundary saves `last.ckpt` and stops. A second SIGINT raises
  KeyboardInterrupt at once. Our handlers replace Lightning's for the duration of `fit` only.
- The newest checkpoint's path goes to the system's RunState, so a non-finite loss names the last good one.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from train.step_events import StepCallback, run_state


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temp file in the same folder, then os.replace: a kill never leaves half a .ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


class Checkpointer(StepCallback):
    """Periodic (tokens / minutes), on-signal, final, keep-last-k and best checkpoints in `ckpt_dir`."""

    STEP_RE = re.compile(r"^step-(\d+)\.ckpt$")

    def __init__(self, ckpt_dir: Path, tokens_per_step: int, every_tokens: int, every_minutes: float,
                 num_keep: int) -> None:
        self.dir = Path(ckpt_dir)
        self.tokens_per_step = tokens_per_step
        self.every_steps = max(1, math.ceil(every_tokens / tokens_per_step)) if every_tokens else 0
        self.every_s = every_minutes * 60.0
        self.num_keep = num_keep
        self.best = float("inf")
        self.signal_received: int | None = None
        self.stopped_by_signal = False
        self._t_last = time.monotonic()
        self._last_saved_step = -1
        self._old_handlers: dict[int, Any] = {}

    # state (best score) travels in the checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"best": float(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = float(state.get("best", float("inf")))

    # signals ------------------------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        if self.signal_received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_received = signum
        print(f"\n[train] received {signal.Signals(signum).name}: saving a checkpoint at the next step boundary",
              file=sys.stderr, flush=True)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t_last = time.monotonic()
        self._last_saved_step = trainer.global_step
        last = self.dir / "last.ckpt"
        if last.is_file():
            run_state(pl_module).last_good_ckpt = str(last)
        import threading

        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old_handlers[s] = signal.getsignal(s)
                signal.signal(s, self._handler)

    def _restore_handlers(self) -> None:
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self._last_saved_step:
            self.save(trainer, pl_module)
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()

    # saving -------------------------------------------------------------------------------------------
    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path:
        step = trainer.global_step
        path = self.dir / f"step-{step:08d}.ckpt"
        trainer.save_checkpoint(path, weights_only=False)
        trainer.strategy.barrier("tf_ckpt")
        if trainer.is_global_zero:
            _link_or_copy(path, self.dir / "last.ckpt")
            steps = sorted(
                (int(m.group(1)), p) for p in self.dir.glob("step-*.ckpt") if (m := self.STEP_RE.match(p.name))
            )
            for _, p in steps[: max(0, len(steps) - self.num_keep)]:
                p.unlink(missing_ok=True)
        self._last_saved_step = step
        self._t_last = time.monotonic()
        run_state(pl_module).last_good_ckpt = str(self.dir / "last.ckpt")
        return path

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step == self._last_saved_step:
            return
        want = bool(self.every_steps and trainer.global_step % self.every_steps == 0)
        timed = bool(self.every_s and time.monotonic() - self._t_last >= self.every_s)
        sig = self.signal_received is not None
        if trainer.world_size > 1:
            timed = bool(trainer.strategy.broadcast(timed, src=0))
            sig = trainer.strategy.reduce_boolean_decision(sig, all=False)
        if want or timed or sig:
            self.save(trainer, pl_module)
        if sig:
            self.stopped_by_signal = True
            trainer.should_stop = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        val = trainer.callback_metrics.get("val/loss")
        if val is None:
            return
        val = float(val)
        if val < self.best:
            self.best = val
            trainer.save_checkpoint(self.dir / "best.ckpt", weights_only=False)
