"""The one training recipe: every training in tinyfoundry is an LMSystem fitted by a Lightning Trainer built here.

Why one: `train`, fine-tuning (train/finetune.py), distillation (a teacher on the system), recovery after pruning
(train/recover.py) and the planner's IsoFLOP sweep (train/planner/sweep.py) must train the same way (Muon + AdamW,
weight decay, warmup + decay schedule, weight EMA, precision), or the law the sweep fits describes a recipe that
`train` does not run and a recovered model is tuned by a different optimizer than the one that trained it.

Design and invariants
- `make_trainer` holds the Trainer's settings; `run_train` (train/runner.py) adds a logger, checkpoints and
  samples around it, `train_in_memory` adds nothing: no files, no logger, for runs of seconds (sweep points,
  recovery). With the same config, data and seed both give the same losses (tests/train/test_recipe.py).
- `prepare` resolves what depends on the machine (accelerator, `precision: auto`, torch threads) the same way for
  both, before the seed is set, so the seed fixes the initialisation and the data order alone. `choose_compile`
  resolves `compile: auto` once the system exists (it times a copy of the model, never the global RNG).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from models import ModelConfig
from train.compile_auto import CompileDecision, resolve_compile
from train.config import TrainConfig
from train.ema import WeightEMA
from train.precision import choose_cpu_precision, resolve_precision
from train.system import LMSystem

PRECISION = {"fp32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


def check_machine(cfg: TrainConfig) -> str:
    """Refuse strategies/precisions this machine cannot run; returns the accelerator to use."""
    has_cuda = torch.cuda.is_available()
    accel = cfg.accelerator if cfg.accelerator != "auto" else ("gpu" if has_cuda else "cpu")
    if accel == "gpu" and not has_cuda:
        raise ValueError("accelerator: 'gpu' was asked for but torch sees no CUDA device")
    if cfg.strategy == "fsdp" or cfg.strategy.startswith("deepspeed"):
        if accel != "gpu":
            raise ValueError(
                f"strategy: {cfg.strategy!r} shards the model over CUDA GPUs and does not run on CPU "
                "(use 'ddp' or 'auto' on CPU)"
            )
        if cfg.strategy.startswith("deepspeed"):
            try:
                import deepspeed  # noqa: F401
            except ImportError as e:
                raise ValueError(
                    f"strategy: {cfg.strategy!r} needs DeepSpeed (pip install --no-build-isolation deepspeed)"
                ) from e
    if cfg.precision == "16-mixed" and accel != "gpu":
        raise ValueError("precision: '16-mixed' (fp16 with loss scaling) needs a GPU; use 'bf16-mixed' on CPU")
    return accel


def prepare(cfg: TrainConfig, quiet: bool = False) -> tuple[TrainConfig, str]:
    """(cfg with its precision resolved, accelerator); sets torch's threads when cfg.num_threads asks."""
    accel = check_machine(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision, why = resolve_precision(cfg.precision, accel)
    if cfg.precision == "auto" and not quiet:
        print(f"[train] precision auto -> {precision} ({why})", file=sys.stderr)
    return dataclasses.replace(cfg, precision=precision), accel  # type: ignore[arg-type]


def choose_precision(asked: str, cfg: TrainConfig, accel: str, system: LMSystem, batch_size: int, seq_len: int,
                     quiet: bool = False) -> tuple[TrainConfig, dict[str, Any]]:
    """(cfg, decision) after the system is built: where `precision: auto` on a CPU came out bf16 from the matmul
    peaks, time the model's own micro-batch in both precisions and keep bf16 only where it pays
    (train/precision.py `choose_cpu_precision`); the system is switched to the result. Elsewhere cfg is returned
    as `prepare` resolved it."""
    if asked != "auto":
        return cfg, {"precision": cfg.precision, "why": "set in the config"}
    if accel != "cpu" or cfg.precision != "bf16-mixed":
        return cfg, {"precision": cfg.precision, "why": "device capability (train/precision.py)"}
    precision, why, measured = choose_cpu_precision(system.model, batch_size, seq_len, system.model_cfg.vocab_size,
                                                    cfg.devices * cfg.num_nodes)
    if not quiet:
        print(f"[train] precision auto at this model's shape -> {precision} ({why})", file=sys.stderr)
    system.use_precision(precision)
    return (dataclasses.replace(cfg, precision=precision),  # type: ignore[arg-type]
            {"precision": precision, "why": why, **({"measured": measured} if measured else {})})


def choose_compile(cfg: TrainConfig, accel: str, system: LMSystem, batch_size: int, seq_len: int,
                   steps_left: int, quiet: bool = False) -> CompileDecision:
    """Resolve `cfg.compile` for this run (train/compile_auto.py) and apply it to `system`; after the system is
    built (the probe times a copy of its model, adapters and QAT included) and before the Trainer."""
    decision = resolve_compile(cfg.compile, accel, system.model, batch_size, seq_len, cfg.precision,
                               max(0, steps_left) * cfg.num_accum_steps, system.model_cfg.vocab_size,
                               cfg.devices * cfg.num_nodes)
    system.use_compile(decision.compile)
    if cfg.compile == "auto" and not quiet:
        print(f"[train] compile auto -> {'on' if decision.compile else 'off'} ({decision.why})", file=sys.stderr)
    return decision


def tokens_per_step(cfg: TrainConfig, batch_size: int, seq_len: int) -> int:
    return batch_size * seq_len * cfg.num_accum_steps * cfg.devices * cfg.num_nodes


def make_ema(cfg: TrainConfig) -> WeightEMA | None:
    """The weight EMA callback when cfg asks for one (never under FSDP / DeepSpeed: they hold slices of tensors)."""
    ema = WeightEMA(cfg.ema_decay) if cfg.ema_decay > 0 and not cfg.sharded else None
    if cfg.ema_decay > 0 and ema is None:
        print(f"[train] ema_decay {cfg.ema_decay:g} ignored: strategy {cfg.strategy!r} shards the weights",
              file=sys.stderr)
    return ema


def make_trainer(cfg: TrainConfig, accel: str, total_steps: int, val_steps: int, callbacks: Sequence[L.Callback],
                 logger: Any = False, plugins: Sequence[Any] = (), root_dir: Path | None = None) -> L.Trainer:
    """The Lightning Trainer of every run: `total_steps` optimizer steps, validation every `val_steps`."""
    strategy: Any = cfg.strategy
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if accel == "gpu" else "gloo")
    sharded = cfg.strategy == "fsdp" or cfg.strategy.startswith("deepspeed")
    return L.Trainer(
        accelerator=accel,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=strategy,
        precision=PRECISION[cfg.precision],  # type: ignore[arg-type]
        max_steps=total_steps,
        max_epochs=-1,
        accumulate_grad_batches=cfg.num_accum_steps,
        gradient_clip_val=(cfg.grad_clip or None) if sharded else None,
        val_check_interval=val_steps * cfg.num_accum_steps,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        logger=logger,
        callbacks=list(callbacks),
        plugins=list(plugins) or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(root_dir) if root_dir is not None else None,
        log_every_n_steps=cfg.log_every_steps,
        use_distributed_sampler=True,
    )


def fit(trainer: L.Trainer, system: LMSystem, dm: Any, ckpt_path: str | None = None) -> None:
    """trainer.fit without the warnings that do not apply to our infinite, index-addressed training data."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__`.*")
        warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.fit(system, datamodule=dm, ckpt_path=ckpt_path)


def validate(trainer: L.Trainer, system: LMSystem, dm: Any) -> dict[str, float]:
    """Final validation metrics ({} when the data has no validation windows)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        val = trainer.validate(system, datamodule=dm, verbose=False)
    return {k: float(v) for k, v in (val[0] if val else {}).items()}


@dataclass
class RecipeResult:
    """What an in-memory run returns."""

    model: nn.Module
    """The trained model (the EMA average when EMA is on; LoRA adapters merged)."""
    steps: int
    """Optimizer steps taken."""
    tokens: int
    """Training tokens consumed (steps x tokens per step)."""
    final_val_loss: float | None
    """Validation loss (nats/token) of the returned model; None without validation data."""
    val_bpb: float | None
    """Validation bits per byte; None without validation data or bytes per token."""


def train_in_memory(cfg: TrainConfig, dm: Any, max_tokens: int, *, model_cfg: ModelConfig | None = None,
                    init_model: nn.Module | None = None, teacher: nn.Module | None = None,
                    callbacks: Sequence[L.Callback] = (), bytes_per_token: float = 0.0) -> RecipeResult:
    """Train `init_model` (or a fresh model of `model_cfg`) for `max_tokens` on `dm` with the train recipe; no files.

    `teacher`: distil from it (cfg.distill_alpha / distill_temperature), frozen. `callbacks` run before the EMA
    (e.g. one that keeps pruning masks). The data module's batch_size and seq_len set the shape."""
    if model_cfg is None:
        if init_model is None:
            raise ValueError("model: give a model config or a model to start from")
        model_cfg = init_model.cfg  # type: ignore[assignment]
    threads = torch.get_num_threads()
    asked = cfg.precision
    try:
        cfg, accel = prepare(cfg, quiet=True)
        tps = tokens_per_step(cfg, dm.batch_size, dm.seq_len)
        total_steps = max(1, math.ceil(max_tokens / tps))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        system = LMSystem(model_cfg.to_dict(), cfg.to_dict(), total_steps, bytes_per_token,  # type: ignore[union-attr]
                          init_model=init_model)
        if teacher is not None:
            system.set_teacher(teacher)
        cfg, _ = choose_precision(asked, cfg, accel, system, dm.batch_size, dm.seq_len, quiet=True)
        choose_compile(cfg, accel, system, dm.batch_size, dm.seq_len, total_steps, quiet=True)
        ema = make_ema(cfg)
        trainer = make_trainer(cfg, accel, total_steps, total_steps + 1, [*callbacks, *([ema] if ema else [])])
        fit(trainer, system, dm)
        if ema is not None:
            ema.copy_to(system)
        val_stream = getattr(dm, "val_stream", None)
        has_val = val_stream is None or val_stream.num_tokens > dm.seq_len
        metrics = validate(trainer, system, dm) if has_val else {}
        model = system.plain_model().cpu() if accel == "cpu" else system.plain_model()
        return RecipeResult(model.eval(), int(trainer.global_step), int(trainer.global_step * tps),
                            metrics.get("val/loss"), metrics.get("val/bpb"))
    finally:
        torch.set_num_threads(threads)
