"""run_train: the training stage's entry point (one call = one run directory, resumable).

Order of work, every check before the first step:
1. Resolve the model (explicit `model_cfg`, else the plan's) and the budget (`cfg.max_tokens`, else the
   plan's `num_tokens`), batch size and sequence length (config, else plan, else defaults).
2. Refuse data the model cannot read: the shards' vocabulary must fit the model's (equal, or padded up to the
   next multiple of 64) and a given tokenizer file must be the one that produced the shards (sha256).
3. Refuse what the machine cannot run (FSDP / DeepSpeed / 16-mixed without CUDA, DeepSpeed not installed),
   and warn when models.accounting's memory estimate exceeds the device's memory.
4. Build the Lightning Trainer (TensorBoard in run_dir/tb, our callbacks, atomic checkpoint IO) and fit,
   resuming from run_dir/checkpoints/last.ckpt when it exists.
5. Final validation, run_dir/checkpoints/final/ (models.save_model_dir) and run_dir/train/summary.json,
   written by rank 0 only and atomically.

A SIGTERM/SIGINT stops at the next step boundary with last.ckpt saved; run_train then returns a summary
with status "interrupted" and writes neither final/ nor summary.json. Rerunning continues the run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models import ModelConfig, load_model, save_model_dir
from models.accounting import count_params, flops_per_token, memory_estimate
from train.callbacks import AtomicCheckpointIO, Checkpointer, SampleText, TrainMonitor
from train.config import TrainConfig
from train.data import ShardDataModule
from train.distill import check_same_tokenizer, file_sha256
from train.ema import WeightEMA
from train.precision import resolve_precision
from train.system import LMSystem, NonFiniteLossError

__all__ = ["run_train", "resolve", "NonFiniteLossError"]

PRECISION = {"fp32": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}


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


def _write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _find_tokenizer(shards_dir: Path, idx: Any) -> Path | None:
    """The run directory's tokenizer/tokenizer.json beside shards/, if it is the one that wrote the shards."""
    for cand in (shards_dir.parent / "tokenizer" / "tokenizer.json", shards_dir / "tokenizer.json"):
        if cand.is_file() and (not idx.tokenizer_sha256 or file_sha256(cand) == idx.tokenizer_sha256):
            return cand
    return None


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


def init_weights(cfg: TrainConfig, resume: Path | None) -> tuple[Any, ModelConfig | None]:
    """(model to start from or None, its config or None) for `cfg.init_from`; a resumed run imports nothing."""
    if not cfg.init_from:
        return None, None
    if resume is not None:
        return None, _ckpt_model_config(resume)
    model, _ = load_model(cfg.init_from)  # ValueError naming the path on anything we cannot import
    return model.train(), model.cfg


def _run_train(cfg: TrainConfig, model_cfg: ModelConfig | None, shards_dir: Path | None, run_dir: Path,
               plan: dict | None, tokenizer_file: Path | None, make_dm: Callable[[int, int], Any] | None,
               lora_config: dict | None) -> dict:
    import lightning as L
    from lightning.pytorch.loggers import TensorBoardLogger

    t_start = time.time()
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    init_model, init_cfg = init_weights(cfg, last if last.is_file() else None)
    if init_cfg is not None:
        model_cfg = init_cfg
    model_cfg, max_tokens, batch_size, seq_len = resolve(cfg, model_cfg, plan)
    if make_dm is None:
        shards_dir = Path(shards_dir)  # type: ignore[arg-type]
        idx = check_data_matches(model_cfg, shards_dir, tokenizer_file)
        if tokenizer_file is None:
            tokenizer_file = _find_tokenizer(shards_dir, idx)
    else:
        idx = make_dm(batch_size, seq_len)
        if idx.vocab_size > model_cfg.vocab_size:
            raise ValueError(f"vocab_size: the model has vocab_size={model_cfg.vocab_size} but the fine-tuning data "
                             f"uses a tokenizer with {idx.vocab_size} ids")
    accel = check_machine(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    precision, why = resolve_precision(cfg.precision, accel)
    if cfg.precision == "auto":
        print(f"[train] precision auto -> {precision} ({why})", file=sys.stderr)
    cfg = dataclasses.replace(cfg, precision=precision)  # type: ignore[arg-type]

    teacher = None
    if cfg.teacher:
        teacher, teacher_tok = load_model(cfg.teacher)
        check_same_tokenizer(model_cfg.vocab_size, teacher.cfg.vocab_size, student_tokenizer=tokenizer_file,
                             teacher_tokenizer=teacher_tok, student_sha256=idx.tokenizer_sha256 or None)
        if teacher.cfg.vocab_size < idx.vocab_size:
            raise ValueError(f"teacher: vocab_size {teacher.cfg.vocab_size} < the data's {idx.vocab_size}")

    world = cfg.devices * cfg.num_nodes
    tokens_per_step = batch_size * seq_len * cfg.num_accum_steps * world
    total_steps = max(1, math.ceil(max_tokens / tokens_per_step))
    val_steps = max(1, math.ceil((cfg.val_every_tokens or max_tokens / 10) / tokens_per_step))
    ckpt_tokens = cfg.ckpt_every_tokens or max(tokens_per_step, max_tokens // 10)
    est = warn_memory(model_cfg, cfg, batch_size, seq_len, accel)
    fpt = float(flops_per_token(model_cfg, seq_len))

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume = last if last.is_file() else None

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    bytes_per_token = float(idx.bytes_per_token("val") or idx.bytes_per_token("train"))
    dm = idx if make_dm is not None else ShardDataModule(shards_dir, batch_size, seq_len, cfg.seed, cfg.data_order,
                                                         cfg.num_val_tokens, cfg.num_workers)
    system = LMSystem(model_cfg.to_dict(), cfg.to_dict(), total_steps, bytes_per_token, lora_config=lora_config,
                      init_model=init_model)
    if teacher is not None:
        system.set_teacher(teacher)

    monitor = TrainMonitor(tokens_per_step, total_steps, fpt, cfg.log_every_steps, cfg.precision,
                           cfg.progress_bar)
    ckpt = Checkpointer(ckpt_dir, tokens_per_step, ckpt_tokens, cfg.ckpt_every_minutes, cfg.num_keep_ckpts)
    samples = SampleText(tokenizer_file, cfg.sample_prompt, min(cfg.num_sample_tokens, model_cfg.max_seq_len - 8),
                         cfg.sample_every_steps, idx.eos_id, cfg.seed)
    ema = WeightEMA(cfg.ema_decay) if cfg.ema_decay > 0 and not cfg.sharded else None
    if cfg.ema_decay > 0 and ema is None:
        print(f"[train] ema_decay {cfg.ema_decay:g} ignored: strategy {cfg.strategy!r} shards the weights",
              file=sys.stderr)
    callbacks: list[L.Callback] = [monitor, samples, *([ema] if ema else []), ckpt]  # EMA before checkpoints

    strategy: Any = cfg.strategy
    plugins: list[Any] = []
    if cfg.strategy == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if accel == "gpu" else "gloo")
    if not cfg.strategy.startswith("deepspeed"):
        plugins.append(AtomicCheckpointIO())
    sharded = cfg.strategy == "fsdp" or cfg.strategy.startswith("deepspeed")
    trainer = L.Trainer(
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
        logger=TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False),
        callbacks=callbacks,
        plugins=plugins or None,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        log_every_n_steps=cfg.log_every_steps,
        use_distributed_sampler=True,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__`.*")
        warnings.filterwarnings("ignore", message=".*Your `IterableDataset` has `__len__` defined.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        trainer.fit(system, datamodule=dm, ckpt_path=str(resume) if resume else None)

    status = "interrupted" if ckpt.stopped_by_signal else "completed"
    summary: dict[str, Any] = {
        "status": status,
        "steps": int(trainer.global_step),
        "tokens": int(trainer.global_step * tokens_per_step),
        "total_steps": total_steps,
        "tokens_per_step": tokens_per_step,
        "resumed_from": str(resume) if resume else None,
        "last_checkpoint": str(last),
    }
    if status == "interrupted":
        return summary

    if ema is not None:
        ema.copy_to(system)  # the final model is the averaged one
    val = trainer.validate(system, datamodule=dm, verbose=False)
    metrics = val[0] if val else {}
    summary_path = run_dir / "train" / "summary.json"
    old: dict[str, Any] = {}
    if summary_path.is_file():
        try:
            old = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
    tps = monitor.mean_tokens_per_s
    peak = monitor.peak or 0.0
    params = count_params(model_cfg)
    summary.update({
        "final_train_loss": monitor.last_train_loss if monitor.steps_timed else old.get("final_train_loss"),
        "final_val_loss": float(metrics["val/loss"]) if "val/loss" in metrics else None,
        "val_bpb": float(metrics["val/bpb"]) if "val/bpb" in metrics else None,
        "tokens_per_s": tps if monitor.steps_timed else old.get("tokens_per_s", 0.0),
        "mfu": (fpt * tps / (peak * world) if peak else 0.0) if monitor.steps_timed else old.get("mfu", 0.0),
        "peak_flops": peak,
        "peak_source": monitor.peak_source,
        "flops_per_token": fpt,
        "num_params": int(params["total"]),
        "num_active_params": int(params.get("active", params["total"])),
        "wall_s": time.time() - t_start + (old.get("wall_s", 0.0) if resume else 0.0),
        "train_time_s": monitor.train_time,
        "step_time_median_s": statistics.median(monitor.step_times) if monitor.step_times else None,
        "memory_estimate_bytes": int(est["total"]),
        "best_val_loss": ckpt.best if math.isfinite(ckpt.best) else None,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "world_size": trainer.world_size,
        "precision": cfg.precision,
        "strategy": cfg.strategy,
        "ema_decay": cfg.ema_decay if ema is not None else 0.0,
        "model_config": model_cfg.to_dict(),
        "trainable_params": sum(p.numel() for p in system.model.parameters() if p.requires_grad),
        "sample": samples.last_text,
    })
    if trainer.is_global_zero:
        if system.lora_config:  # the adapters alone, in PEFT's format, beside the merged model
            from models.lora import LoRAConfig, save_peft

            save_peft(system.model, LoRAConfig(**system.lora_config), run_dir / "adapter", base_model=cfg.init_from)
        final_model = system.plain_model()  # adapters merged in (in place): a plain model dir like any other
        extra: dict[str, Any] = {"tokens": summary["tokens"], "val_bpb": summary["val_bpb"], "steps": summary["steps"]}
        if cfg.qat != "none":  # the on-grid weights validation scored, and which grid each is on
            from models.qat import bake

            extra["qat"] = {n: list(v) for n, v in bake(final_model).items()}
        save_model_dir(ckpt_dir / "final", final_model.cpu() if accel == "cpu" else final_model,
                       tokenizer_file=tokenizer_file, extra=extra)
        _write_json_atomic(summary_path, summary)
    return summary
