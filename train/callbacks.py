"""Training callbacks: throughput/MFU + scalar logging, progress bar, sample text, checkpoints (tokens, minutes,
signals, keep-last-k, best).

Design and invariants
- Everything is logged with `logger.log_metrics(..., step=global_step)` at step boundaries every
  `log_every_steps` (no per-step `self.log`, which costs a device sync and dominates tiny steps).
- Tokens are counted, not measured: `tokens = global_step * tokens_per_step` (all ranks), so the token axis
  of a resumed run lines up with the uninterrupted one. tokens/s excludes validation time.
- MFU = flops_per_token * tokens/s / (peak * world_size). The peak comes from a table of GPU bf16/fp16/tf32
  dense peaks, or on CPU from a matmul measured once per (CPU, threads, dtype, torch) and cached in
  `$TINYFOUNDRY_CACHE_DIR` (default ~/.cache/tinyfoundry/peak_flops.json).
- Checkpoints are written only at optimizer-step boundaries (never mid-accumulation) and atomically
  (AtomicCheckpointIO: temp file + os.replace); `last.ckpt` is a hard link (or copy) of the newest step file.
  Every decision to save is the same on all ranks (token counts are; minute timers and signals are
  broadcast/reduced), because `trainer.save_checkpoint` is collective.
- SIGTERM / SIGINT set a flag; the next step boundary saves `last.ckpt` and stops. A second SIGINT raises
  KeyboardInterrupt at once. Our handlers replace Lightning's for the duration of `fit` only.
"""

from __future__ import annotations

import json
import math
import os
import platform
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

# ---------------------------------------------------------------------------------------------- peak FLOPs
# Dense (no sparsity) peak FLOP/s per device: (bf16/fp16 tensor-core, tf32, plain fp32).
GPU_PEAKS: dict[str, tuple[float, float, float]] = {
    "H200": (989e12, 494e12, 67e12),
    "H100 SXM": (989e12, 494e12, 67e12),
    "H100 NVL": (835e12, 418e12, 60e12),
    "H100 PCIe": (756e12, 378e12, 51e12),
    "H100": (989e12, 494e12, 67e12),
    "GH200": (989e12, 494e12, 67e12),
    "B200": (2250e12, 1100e12, 80e12),
    "A100": (312e12, 156e12, 19.5e12),
    "A800": (312e12, 156e12, 19.5e12),
    "A10G": (70e12, 35e12, 31.2e12),
    "A10": (125e12, 62.5e12, 31.2e12),
    "L40S": (362e12, 183e12, 91.6e12),
    "L40": (181e12, 90.5e12, 90.5e12),
    "L4": (121e12, 60e12, 30.3e12),
    "A6000": (155e12, 77e12, 38.7e12),
    "RTX 4090": (165e12, 82.6e12, 82.6e12),
    "RTX 3090": (71e12, 35.6e12, 35.6e12),
    "V100": (125e12, 15.7e12, 15.7e12),
    "T4": (65e12, 8.1e12, 8.1e12),
}


def cache_dir() -> Path:
    return Path(os.environ.get("TINYFOUNDRY_CACHE_DIR", Path.home() / ".cache" / "tinyfoundry"))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


PEAK_SHAPES = ((1024, 1024, 1024), (512, 512, 512), (1024, 256, 768), (1024, 768, 256))
"""(M, K, N) GEMMs probed for the CPU peak: square ones and the shapes of a small model's linear layers."""


def measure_matmul_peak(dtype: torch.dtype, seconds: float = 0.5,
                        shapes: tuple[tuple[int, int, int], ...] = PEAK_SHAPES) -> float:
    """Best FLOP/s of one GEMM in `dtype` on this CPU (all torch threads) over a few shapes and operand layouts.

    Layouts: x @ W^T (nn.Linear), A^T @ B (the fast layout of bf16 GEMMs on AVX2-only CPUs, which
    train.cpu_bf16 uses) and, for fp32, x @ W; the peak is the best of all, so MFU never flatters a slow kernel choice."""
    best = 0.0
    if dtype != torch.float32:  # emulated bf16 is slow in most layouts: skip the big square probe
        shapes = tuple(s for s in shapes if s[0] * s[1] * s[2] < 1024**3) or shapes
    budget = seconds / (3 * len(shapes))
    for m, k, n in shapes:
        x_MK = torch.randn(m, k).to(dtype)
        w_NK = torch.randn(n, k).to(dtype)
        w_KN = w_NK.t().contiguous()
        xt_KM = x_MK.t().contiguous()
        ops = [lambda x=x_MK, w=w_NK: torch.nn.functional.linear(x, w), lambda x=xt_KM, w=w_KN: x.t() @ w]
        if dtype == torch.float32:
            ops.append(lambda x=x_MK, w=w_KN: x @ w)
        for op in ops:
            op()
            deadline = time.perf_counter() + budget
            reps = 0
            while reps < 1 or (time.perf_counter() < deadline and reps < 50):
                t0 = time.perf_counter()
                op()
                best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
                reps += 1
    return best


def cpu_cache_key(what: str) -> str:
    """Cache key of a CPU measurement: what, CPU model, torch threads, torch version."""
    return f"{_cpu_name()}|threads={torch.get_num_threads()}|{what}|torch={torch.__version__}"


def read_peak_cache() -> dict[str, float]:
    path = cache_dir() / "peak_flops.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
    return {}


def write_peak_cache(key: str, value: float) -> None:
    """Add one measurement to the per-machine cache (read-modify-write, then an atomic rename)."""
    path = cache_dir() / "peak_flops.json"
    cache = read_peak_cache()
    cache[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1))
    os.replace(tmp, path)


_BUSY_PEAKS: dict[str, float] = {}


def cpu_peak_flops(dtype: torch.dtype, measure_if_missing: bool = True) -> float:
    """Measured (and cached) CPU matmul peak for dtype; 0.0 if missing and not measuring."""
    key = cpu_cache_key(str(dtype).replace("torch.", ""))
    cache = read_peak_cache()
    if key in cache:
        return float(cache[key])
    if key in _BUSY_PEAKS:
        return _BUSY_PEAKS[key]
    if not measure_if_missing:
        return 0.0
    peak = measure_matmul_peak(dtype)
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        # measured while other work held the cores: use it for this process (precision auto and MFU ask for the
        # same peak), but do not keep an underestimate on disk (a too-low cached peak shows up later as MFU > 100%)
        _BUSY_PEAKS[key] = peak
        return peak
    write_peak_cache(key, peak)
    return peak


def peak_flops(device: torch.device, precision: str) -> tuple[float, str]:
    """(peak FLOP/s of one device for this precision, where the number comes from)."""
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision, torch.float32)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, (half, tf32, fp32) in GPU_PEAKS.items():
            if key.lower() in name.lower():
                if dtype != torch.float32:
                    return half, f"table:{key}"
                return (tf32 if torch.backends.cuda.matmul.allow_tf32 else fp32), f"table:{key}"
        return 0.0, f"unknown GPU {name!r}"
    return cpu_peak_flops(dtype), f"measured:{str(dtype).replace('torch.', '')}-matmul"


# ---------------------------------------------------------------------------------------------- checkpoint io
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


def _step_boundary(trainer: L.Trainer) -> bool:
    """True in on_train_batch_end right after an optimizer step (not mid-accumulation)."""
    return not trainer.fit_loop.epoch_loop._should_accumulate()


# ---------------------------------------------------------------------------------------------- checkpoints
class Checkpointer(L.Callback):
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
            pl_module.last_good_ckpt = str(last)
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
        pl_module.last_good_ckpt = str(self.dir / "last.ckpt")
        return path

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not _step_boundary(trainer) or trainer.global_step == self._last_saved_step:
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


# ---------------------------------------------------------------------------------------------- logging
class TrainMonitor(L.Callback):
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
        if trainer.state.fn == "fit" and self._t0 and getattr(self, "_pause", 0.0):
            self._t0 += time.perf_counter() - self._pause
            self._pause = 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if pl_module.last_loss is not None:
            self._loss_sum += float(pl_module.last_loss)
            self._loss_n += 1
        if not _step_boundary(trainer):
            return
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
        if pl_module.last_grad_norm is not None:
            metrics["train/grad_norm"] = float(pl_module.last_grad_norm)
        if pl_module.last_aux is not None:
            metrics["train/moe_aux_loss"] = float(pl_module.last_aux)
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


# ---------------------------------------------------------------------------------------------- samples
class SampleText(L.Callback):
    """Generates from a prompt and logs the text to TensorBoard (every N steps, or at each validation)."""

    def __init__(self, tokenizer_file: Path | None, prompt: str, num_tokens: int, every_steps: int,
                 eos_id: int | None, seed: int) -> None:
        self.tok = None
        if tokenizer_file is not None and Path(tokenizer_file).is_file():
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.prompt, self.num_tokens, self.every = prompt, num_tokens, every_steps
        self.eos_id, self.seed = eos_id, seed
        self.last_text = ""

    def _prompt_ids(self) -> list[int]:
        if self.tok is not None:
            ids = self.tok.encode(self.prompt).ids
            return ids or [self.eos_id or 0]
        return [self.eos_id if self.eos_id is not None else 0]

    def generate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.num_tokens <= 0 or trainer.logger is None:
            return
        from models.generate import generate

        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                new = generate(model, [self._prompt_ids()], max_new_tokens=self.num_tokens, temperature=0.8,
                               top_k=50, eos_id=self.eos_id, seed=self.seed)[0]
        finally:
            model.train(was_training)
        text = self.tok.decode(new) if self.tok is not None else " ".join(map(str, new))
        self.last_text = self.prompt + text if self.tok is not None else text
        exp = trainer.logger.experiment
        if hasattr(exp, "add_text"):
            exp.add_text("samples", self.last_text.replace("\n", "  \n"), global_step=trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.every and _step_boundary(trainer) and trainer.global_step % self.every == 0:
            self.generate(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.every and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.generate(trainer, pl_module)
