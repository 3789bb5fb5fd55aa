"""Training logs: loss, lr, grad norm, tokens, tokens/s, MFU and MoE load to the logger, and the progress bar.

Design and invariants
- Everything is logged with `logger.log_metrics(..., step=global_step)` at step boundaries every
  `log_every_steps` (no per-step `self.log`, which costs a device sync and dominates tiny steps).
- Tokens are counted, not measured: `tokens = global_step * tokens_per_step` (all ranks), so the token axis
  of a resumed run lines up with the uninterrupted one. tokens/s excludes validation time.
- MFU = flops_per_token * tokens/s / (peak * world_size), the peak from train/peak_flops.py.
- The loss logged for a step is the mean of its micro-batches' losses (RunState.loss after each).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L
import torch

from train.peak_flops import peak_flops
from train.step_events import StepCallback, run_state


class TrainMonitor(StepCallback):
    """Logs train loss, lr, grad norm, tokens, tokens/s, MFU and MoE load; drives the tqdm progress bar."""

    def __init__(self, tokens_per_step: int, total_steps: int, flops_per_token: float, log_every_steps: int,
                 precision: str, progress_bar: bool = True) -> None:
        self.tokens_per_step = tokens_per_step
        self.total_steps = total_steps
        self.flops_per_token = flops_per_token
        self.log_every = log_every_steps
        self.precision = precision
        self.progress_bar = progress_bar
        self.peak = 0.0
        self.peak_source = ""
        self.train_time = 0.0          # seconds spent in training steps during this process
        self.steps_timed = 0           # optimizer steps done during this process
        self.step_times: list[float] = []
        self.tokens_per_s = 0.0
        self.mfu = 0.0
        self.last_train_loss = float("nan")
        self._t0 = 0.0
        self._t_window = 0.0
        self._steps_window = 0
        self._bar: Any = None
        self._pause = 0.0
        self._loss_sum = 0.0
        self._loss_n = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak, self.peak_source = peak_flops(pl_module.device, self.precision)
        if self.progress_bar and trainer.is_global_zero:
            from tqdm import tqdm

            self._bar = tqdm(total=self.total_steps, initial=trainer.global_step, unit="step", desc="train",
                             dynamic_ncols=True, file=sys.stderr)
        self._t0 = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._t0:
            self._pause = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._t0 and self._pause:
            self._t0 += time.perf_counter() - self._pause
            self._pause = 0.0

    def on_micro_batch(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state = run_state(pl_module)
        if state.loss is not None:
            self._loss_sum += float(state.loss)
            self._loss_n += 1

    def on_step(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        dt = now - self._t0
        self._t0 = now
        self.train_time += dt
        self._t_window += dt
        self.steps_timed += 1
        self.step_times.append(dt)
        self._steps_window += 1
        step = trainer.global_step
        loss = self._loss_sum / max(1, self._loss_n)
        self._loss_sum, self._loss_n = 0.0, 0
        self.last_train_loss = loss
        if self._bar is not None:
            self._bar.update(1)
        if step % self.log_every and step != self.total_steps:
            return
        tps = self._steps_window * self.tokens_per_step / max(self._t_window, 1e-9)
        self._t_window, self._steps_window = 0.0, 0
        self.tokens_per_s = tps
        self.mfu = self.flops_per_token * tps / (self.peak * trainer.world_size) if self.peak else 0.0
        opt = trainer.optimizers[0]
        metrics: dict[str, float] = {
            "train/loss": loss,
            "train/lr": float(opt.param_groups[0]["lr"]),
            "train/tokens": float(step * self.tokens_per_step),
            "perf/tokens_per_s": tps,
            "perf/mfu": self.mfu,
        }
        state = run_state(pl_module)
        if state.grad_norm is not None:
            metrics["train/grad_norm"] = float(state.grad_norm)
        if state.aux_loss is not None:
            metrics["train/moe_aux_loss"] = float(state.aux_loss)
        metrics.update(moe_load_metrics(pl_module.model))
        if trainer.is_global_zero and trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=step)
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}", mfu=f"{self.mfu:.1%}", refresh=False)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.close()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    @property
    def mean_tokens_per_s(self) -> float:
        return self.steps_timed * self.tokens_per_step / self.train_time if self.train_time else 0.0


def moe_load_metrics(model: torch.nn.Module) -> dict[str, float]:
    """Per-layer per-expert load fractions of the last forward (and max/mean imbalance); {} for dense."""
    stats = model.moe_stats() if hasattr(model, "moe_stats") else {}
    out: dict[str, float] = {}
    for layer, counts in (stats or {}).items():
        c = torch.as_tensor(counts, dtype=torch.float64).flatten()
        total = float(c.sum())
        if total <= 0:
            continue
        frac = c / total
        for e, f in enumerate(frac.tolist()):
            out[f"moe/{layer}/expert{e}"] = f
        out[f"moe/{layer}/max_over_mean"] = float(frac.max() * len(frac))
    return out
