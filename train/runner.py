"""run_train: the training stage's entry point (one call = one run directory, resumable).

Order of work, every check before the first step:
1. Resolve the model (explicit `model_cfg`, else the plan's) and the budget (`cfg.max_tokens`, else the
   plan's `num_tokens`), batch size and sequence length (config, else plan, else defaults).
2. Refuse data the model cannot read: the shards' vocabulary must fit the model's (equal, or padded up to the
   next multiple of 64) and a given tokenizer file must be the one that produced the shards (sha256).
3. Refuse what the machine cannot run (FSDP / DeepSpeed / 16-mixed without CUDA, DeepSpeed not installed),
   and warn when models.accounting's memory estimate exceeds the device's memory.
4. Build the Lightning Trainer (train/recipe.py; the `train.logger` logger, tensorboard in run_dir/tb by default,
   our callbacks, atomic checkpoint IO) and fit, resuming from run_dir/checkpoints/last.ckpt when it exists.
5. Final validation, run_dir/checkpoints/final/ (models.save_model_dir) and run_dir/train/summary.json,
   written by rank 0 only and atomically.

A SIGTERM/SIGINT stops at the next step boundary with last.ckpt saved; run_train then returns a summary
with status "interrupted" and writes neither final/ nor summary.json. Rerunning continues the run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import ModelConfig, load_model, save_model_dir
from models.accounting import count_params, flops_per_token, memory_estimate
from models.atomic import atomic_write_json, read_json_or_empty
from models.hashing import file_sha256
from models.tokenizer_lookup import find_tokenizer
from train import recipe
from train.checkpointing import AtomicCheckpointIO, Checkpointer
from train.config import TrainConfig
from train.data import ShardDataModule
from train.distill import check_same_tokenizer
from train.ema import WeightEMA
from train.loggers import check_logger, make_logger
from train.monitor import TrainMonitor
from train.recipe import check_machine
from train.samples import SampleText
from train.system import LMSystem, NonFiniteLossError

__all__ = ["run_train", "resolve", "check_machine", "NonFiniteLossError"]


def _padded(v: int) -> int:
    return (v + 63) // 64 * 64


def resolve(cfg: TrainConfig, model_cfg: ModelConfig | None, plan: dict | None) -> tuple[ModelConfig, int, int, int]:
    """(model config, max_tokens, batch_size, seq_len) after applying plan defaults and config overrides."""
    plan = plan or {}
    if model_cfg is None:
        if "model" not in plan:
            raise ValueError("model: no model config given and no plan with a 'model' entry")
        model_cfg = ModelConfig.from_dict(dict(plan["model"]))
    max_tokens = cfg.max_tokens or int(float(plan.get("num_tokens", 0)))
    if max_tokens <= 0:
        raise ValueError("max_tokens: must be set in the train config when there is no plan (num_tokens), got 0")
    batch_size = cfg.batch_size or int(plan.get("batch_size", 0)) or 16
    seq_len = cfg.seq_len or int(plan.get("seq_len", 0)) or model_cfg.max_seq_len
    if seq_len > model_cfg.max_seq_len:
        raise ValueError(f"seq_len: must be <= the model's max_seq_len={model_cfg.max_seq_len}, got {seq_len}")
    return model_cfg, max_tokens, batch_size, seq_len


def check_data_matches(model_cfg: ModelConfig, shards_dir: Path, tokenizer_file: Path | None) -> Any:
    """Load the shard index and refuse a model/tokenizer that does not read these token ids."""
    from data_pipelines.tokenize.shards import ShardIndex

    idx = ShardIndex.load(shards_dir)
    v_data, v_model = idx.vocab_size, model_cfg.vocab_size
    if v_model < v_data or (v_model != v_data and v_model > _padded(v_data)):
        raise ValueError(
            f"vocab_size: the model has vocab_size={v_model} but the shards in {shards_dir} were written by a "
            f"tokenizer with {v_data} ids; set model.vocab_size={v_data} (or pad to {_padded(v_data)})"
        )
    if tokenizer_file is not None and idx.tokenizer_sha256:
        sha = file_sha256(Path(tokenizer_file))
        if sha != idx.tokenizer_sha256:
            raise ValueError(
                f"tokenizer: {tokenizer_file} (sha256 {sha[:12]}) is not the tokenizer that wrote the shards in "
                f"{shards_dir} (sha256 {idx.tokenizer_sha256[:12]}); re-run tokenize or pass the right tokenizer"
            )
    return idx


def warn_memory(model_cfg: ModelConfig, cfg: TrainConfig, batch_size: int, seq_len: int, accel: str) -> dict:
    prec = "fp32" if cfg.precision == "fp32" else "bf16-mixed"
    est = memory_estimate(model_cfg, batch_size, seq_len, precision=prec,  # type: ignore[arg-type]
                          activation_checkpointing=cfg.activation_checkpointing)
    if accel == "gpu":
        avail = torch.cuda.get_device_properties(0).total_memory
        where = f"GPU {torch.cuda.get_device_name(0)}"
    else:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            avail = 0
        where = "host RAM"
    if avail and est["total"] > avail:
        warnings.warn(
            f"memory: estimated training memory {est['total'] / 2**30:.1f} GiB (weights+grads+AdamW "
            f"{(est['weights'] + est['grads'] + est['optimizer']) / 2**30:.1f} GiB, activations "
            f"{est['activations'] / 2**30:.1f} GiB) exceeds {where} ({avail / 2**30:.1f} GiB); lower "
            "batch_size/seq_len, use bf16-mixed or a sharded strategy",
            stacklevel=2,
        )
    return est


def run_train(
    cfg: TrainConfig,
    model_cfg: ModelConfig | None,
    shards_dir: Path | None,
    run_dir: Path,
    plan: dict | None = None,
    tokenizer_file: Path | None = None,
    *,
    datamodule: Callable[[int, int], Any] | None = None,
    lora_config: dict | None = None,
) -> dict:
    """Train (or resume) the model of `model_cfg` (None: the plan's; `cfg.init_from`: that source's) on `shards_dir`
    inside `run_dir`.

    Fine-tuning runs through here too (train/finetune.py): `datamodule(batch_size, seq_len)` builds its data
    (loss-masked windows; it must offer `bytes_per_token()`, `vocab_size` and `eos_id` like the shard index) in
    place of the shards, and `lora_config` trains adapters on a frozen base (models/lora.py)."""
    threads = torch.get_num_threads()
    try:
        return _run_train(cfg, model_cfg, shards_dir, run_dir, plan, tokenizer_file, datamodule, lora_config)
    finally:
        torch.set_num_threads(threads)


def _ckpt_model_config(path: Path) -> ModelConfig:
    """The model config a checkpoint was trained with (resuming an init_from run reads it here, not the source)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return ModelConfig.from_dict(dict(ckpt["hyper_parameters"]["model_config"]))


def _ckpt_global_step(path: Path) -> int:
    """Optimizer steps a checkpoint has done (a resumed run has only the rest to train)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("global_step", 0))


def init_weights(cfg: TrainConfig, resume: Path | None) -> tuple[Any, ModelConfig | None]:
    """(model to start from or None, its config or None) for `cfg.init_from`; a resumed run imports nothing."""
    if not cfg.init_from:
        return None, None
    if resume is not None:
        return None, _ckpt_model_config(resume)
    model, _ = load_model(cfg.init_from)  # ValueError naming the path on anything we cannot import
    return model.train(), model.cfg



@dataclasses.dataclass
class _Plan:
    """A run's resolved settings: what _prepare decided, what _fit and _finish use."""

    cfg: TrainConfig
    model_cfg: ModelConfig
    accel: str
    idx: Any
    tokenizer_file: Path | None
    batch_size: int
    seq_len: int
    tokens_per_step: int
    total_steps: int
    val_steps: int
    ckpt_tokens: int
    memory_estimate: dict
    flops_per_token: float
    resume: Path | None


def _data_index(model_cfg: ModelConfig, shards_dir: Path | None, tokenizer_file: Path | None,
                 make_dm: Callable[[int, int], Any] | None, batch_size: int, seq_len: int) -> tuple[Any, Path | None]:
    """(the shard index, or fine-tuning's data module; the tokenizer file) after the data checks."""
    if make_dm is not None:
        idx = make_dm(batch_size, seq_len)
        if idx.vocab_size > model_cfg.vocab_size:
            raise ValueError(f"vocab_size: the model has vocab_size={model_cfg.vocab_size} but the fine-tuning data "
                             f"uses a tokenizer with {idx.vocab_size} ids")
        return idx, tokenizer_file
    shards_dir = Path(shards_dir)  # type: ignore[arg-type]
    idx = check_data_matches(model_cfg, shards_dir, tokenizer_file)
    if tokenizer_file is None:
        tokenizer_file = find_tokenizer(shards_dir, sha256=idx.tokenizer_sha256 or None)
    return idx, tokenizer_file


def _load_teacher(cfg: TrainConfig, model_cfg: ModelConfig, idx: Any, tokenizer_file: Path | None) -> Any:
    if not cfg.teacher:
        return None
    teacher, teacher_tok = load_model(cfg.teacher)
    check_same_tokenizer(model_cfg.vocab_size, teacher.cfg.vocab_size, student_tokenizer=tokenizer_file,
                         teacher_tokenizer=teacher_tok, student_sha256=idx.tokenizer_sha256 or None)
    if teacher.cfg.vocab_size < idx.vocab_size:
        raise ValueError(f"teacher: vocab_size {teacher.cfg.vocab_size} < the data's {idx.vocab_size}")
    return teacher


def _prepare(cfg: TrainConfig, model_cfg: ModelConfig | None, shards_dir: Path | None, run_dir: Path,
             plan: dict | None, tokenizer_file: Path | None, make_dm: Callable[[int, int], Any] | None
             ) -> tuple[_Plan, Any, Any]:
    """Every check before the first step; returns (the plan, the model to start from or None, the teacher or None)."""
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = last if last.is_file() else None
    init_model, init_cfg = init_weights(cfg, resume)
    if init_cfg is not None:
        model_cfg = init_cfg
    model_cfg, max_tokens, batch_size, seq_len = resolve(cfg, model_cfg, plan)
    idx, tokenizer_file = _data_index(model_cfg, shards_dir, tokenizer_file, make_dm, batch_size, seq_len)
    check_logger(cfg.logger)
    cfg, accel = recipe.prepare(cfg)
    teacher = _load_teacher(cfg, model_cfg, idx, tokenizer_file)
    tps = recipe.tokens_per_step(cfg, batch_size, seq_len)
    return _Plan(
        cfg=cfg, model_cfg=model_cfg, accel=accel, idx=idx, tokenizer_file=tokenizer_file, batch_size=batch_size,
        seq_len=seq_len, tokens_per_step=tps, total_steps=max(1, math.ceil(max_tokens / tps)),
        val_steps=max(1, math.ceil((cfg.val_every_tokens or max_tokens / 10) / tps)),
        ckpt_tokens=cfg.ckpt_every_tokens or max(tps, max_tokens // 10),
        memory_estimate=warn_memory(model_cfg, cfg, batch_size, seq_len, accel),
        flops_per_token=float(flops_per_token(model_cfg, seq_len)), resume=resume,
    ), init_model, teacher


@dataclasses.dataclass
class _Callbacks:
    monitor: TrainMonitor
    ckpt: Checkpointer
    samples: SampleText
    ema: WeightEMA | None

    def as_list(self) -> list[Any]:
        return [self.monitor, self.samples, *([self.ema] if self.ema else []), self.ckpt]  # EMA before checkpoints


def _callbacks(p: _Plan, ckpt_dir: Path) -> _Callbacks:
    cfg = p.cfg
    return _Callbacks(
        monitor=TrainMonitor(p.tokens_per_step, p.total_steps, p.flops_per_token, cfg.log_every_steps, cfg.precision,
                             cfg.progress_bar),
        ckpt=Checkpointer(ckpt_dir, p.tokens_per_step, p.ckpt_tokens, cfg.ckpt_every_minutes, cfg.num_keep_ckpts),
        samples=SampleText(p.tokenizer_file, cfg.sample_prompt, min(cfg.num_sample_tokens, p.model_cfg.max_seq_len - 8),
                           cfg.sample_every_steps, p.idx.eos_id, cfg.seed),
        ema=recipe.make_ema(cfg),
    )


def _run_train(cfg: TrainConfig, model_cfg: ModelConfig | None, shards_dir: Path | None, run_dir: Path,
               plan: dict | None, tokenizer_file: Path | None, make_dm: Callable[[int, int], Any] | None,
               lora_config: dict | None) -> dict:
    import lightning as L

    t_start = time.time()
    run_dir = Path(run_dir)
    asked_precision = cfg.precision
    p, init_model, teacher = _prepare(cfg, model_cfg, shards_dir, run_dir, plan, tokenizer_file, make_dm)
    cfg = p.cfg
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    bytes_per_token = float(p.idx.bytes_per_token("val") or p.idx.bytes_per_token("train"))
    dm = p.idx if make_dm is not None else ShardDataModule(shards_dir, p.batch_size, p.seq_len, cfg.seed,  # type: ignore[arg-type]
                                                           cfg.data_order, cfg.num_val_tokens, cfg.num_workers)
    system = LMSystem(p.model_cfg.to_dict(), cfg.to_dict(), p.total_steps, bytes_per_token, lora_config=lora_config,
                      init_model=init_model, tokenizer_sha256=getattr(p.idx, "tokenizer_sha256", "") or "")
    if teacher is not None:
        system.set_teacher(teacher)
    done = _ckpt_global_step(p.resume) if p.resume else 0
    cfg, precision = recipe.choose_precision(asked_precision, cfg, p.accel, system, p.batch_size, p.seq_len)
    if cfg.precision != p.cfg.precision:  # the shape probe overruled the peaks: estimate what will run
        p = dataclasses.replace(p, memory_estimate=warn_memory(p.model_cfg, cfg, p.batch_size, p.seq_len, p.accel))
    p = dataclasses.replace(p, cfg=cfg)
    compiled = recipe.choose_compile(cfg, p.accel, system, p.batch_size, p.seq_len, p.total_steps - done)
    cbs = _callbacks(p, run_dir / "checkpoints")
    plugins = [] if cfg.strategy.startswith("deepspeed") else [AtomicCheckpointIO()]
    trainer = recipe.make_trainer(cfg, p.accel, p.total_steps, p.val_steps, cbs.as_list(),
                                  logger=make_logger(cfg.logger, run_dir), plugins=plugins, root_dir=run_dir)
    recipe.fit(trainer, system, dm, ckpt_path=str(p.resume) if p.resume else None)
    summary: dict[str, Any] = {
        "status": "interrupted" if cbs.ckpt.stopped_by_signal else "completed",
        "steps": int(trainer.global_step),
        "tokens": int(trainer.global_step * p.tokens_per_step),
        "total_steps": p.total_steps,
        "tokens_per_step": p.tokens_per_step,
        "resumed_from": str(p.resume) if p.resume else None,
        "last_checkpoint": str(run_dir / "checkpoints" / "last.ckpt"),
    }
    if summary["status"] == "interrupted":
        return summary
    if cbs.ema is not None:
        cbs.ema.copy_to(system)  # the final model is the averaged one
    metrics = recipe.validate(trainer, system, dm)
    summary.update(_final_summary(p, cbs, trainer, system, metrics, run_dir, time.time() - t_start))
    summary["compile"] = compiled.compile
    summary["compile_decision"] = compiled.to_dict()
    summary["precision_decision"] = precision
    if trainer.is_global_zero:
        _save_final(p, system, summary, run_dir)
    return summary


def _old_summary(path: Path) -> dict[str, Any]:
    return read_json_or_empty(path)


def _final_summary(p: _Plan, cbs: _Callbacks, trainer: Any, system: LMSystem, metrics: dict[str, float],
                   run_dir: Path, wall_s: float) -> dict[str, Any]:
    """The summary's measurements; a resumed run keeps the earlier process's timings where this one has none."""
    old = _old_summary(run_dir / "train" / "summary.json")
    monitor, timed = cbs.monitor, cbs.monitor.steps_timed > 0
    tps = monitor.mean_tokens_per_s
    peak = monitor.peak or 0.0
    world = p.cfg.devices * p.cfg.num_nodes
    params = count_params(p.model_cfg)
    return {
        "final_train_loss": monitor.last_train_loss if timed else old.get("final_train_loss"),
        "final_val_loss": metrics.get("val/loss"),
        "val_bpb": metrics.get("val/bpb"),
        "tokens_per_s": tps if timed else old.get("tokens_per_s", 0.0),
        "mfu": (p.flops_per_token * tps / (peak * world) if peak else 0.0) if timed else old.get("mfu", 0.0),
        "peak_flops": peak,
        "peak_source": monitor.peak_source,
        "flops_per_token": p.flops_per_token,
        "num_params": int(params["total"]),
        "num_active_params": int(params.get("active", params["total"])),
        "wall_s": wall_s + (old.get("wall_s", 0.0) if p.resume else 0.0),
        "train_time_s": monitor.train_time,
        "step_time_median_s": statistics.median(monitor.step_times) if monitor.step_times else None,
        "memory_estimate_bytes": int(p.memory_estimate["total"]),
        "best_val_loss": cbs.ckpt.best if math.isfinite(cbs.ckpt.best) else None,
        "batch_size": p.batch_size,
        "seq_len": p.seq_len,
        "world_size": trainer.world_size,
        "precision": p.cfg.precision,
        "strategy": p.cfg.strategy,
        "ema_decay": p.cfg.ema_decay if cbs.ema is not None else 0.0,
        "model_config": p.model_cfg.to_dict(),
        "trainable_params": sum(q.numel() for q in system.model.parameters() if q.requires_grad),
        "sample": cbs.samples.last_text,
        "logger": p.cfg.logger,
    }


def _save_final(p: _Plan, system: LMSystem, summary: dict[str, Any], run_dir: Path) -> None:
    """run_dir/checkpoints/final/ (a plain model dir; LoRA adapters also in PEFT's format) and train/summary.json."""
    if system.lora_config:
        from models.lora import LoRAConfig, save_peft

        save_peft(system.model, LoRAConfig(**system.lora_config), run_dir / "adapter", base_model=p.cfg.init_from)
    final_model = system.plain_model()  # adapters merged in (in place): a plain model dir like any other
    extra: dict[str, Any] = {"tokens": summary["tokens"], "val_bpb": summary["val_bpb"], "steps": summary["steps"]}
    if p.cfg.qat != "none":  # the on-grid weights validation scored, and which grid each is on
        from models.qat import bake

        extra["qat"] = {n: list(v) for n, v in bake(final_model).items()}
    save_model_dir(run_dir / "checkpoints" / "final", final_model.cpu() if p.accel == "cpu" else final_model,
                   tokenizer_file=p.tokenizer_file, extra=extra)
    atomic_write_json(run_dir / "train" / "summary.json", summary, sort_keys=True)
