"""LMSystem: the LightningModule that trains a models.Transformer (the plain nn.Module stays in models/).

Design and invariants
- `save_hyperparameters()` stores plain dicts only (`model_config`, `train_config`, numbers), so
  `ckpt["hyper_parameters"]["model_config"]` rebuilds the model and every checkpoint loads with
  `torch.load(weights_only=True)` (models.load_model relies on both). State-dict keys are `model.<name>`.
- One optimizer step consumes `num_accum_steps` micro-batches; the data position (`datamodule.next_index`)
  is advanced in `training_step` from the index each batch carries, so it counts consumed batches only.
- AdamW: weight decay only on parameters with >= 2 dims; fused kernels when the device has them.
  The schedule is a LambdaLR stepped every optimizer step (see schedules.py).
- The NaN guard raises `NonFiniteLossError` *before* backward, so no update and no checkpoint ever sees a
  non-finite loss; the last checkpoint on disk is the last good one.
- The teacher (distillation) is not a submodule: it is neither saved, optimised, nor wrapped by DDP. Nor is the
  compiled model (`use_compile`): only training steps call it; everything else sees the plain module.
- The training steps own the torch RNG (train/step_rng.py): its state is captured after each optimizer step, put
  back before the next, saved in the checkpoint and put back before the first resumed step, so a resumed run draws
  the same dropout masks as an uninterrupted one whatever ran between steps or at start-up.

Shape legend: B batch, T sequence, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from models import ModelConfig, Transformer
from train.config import TrainConfig
from train.distill import distill_loss
from train.optim import MuonAdamW, muon_param_groups
from train.schedules import build_scheduler
from train.step_events import RunState
from train.step_rng import StepRNG


class NonFiniteLossError(RuntimeError):
    """Training loss became NaN or inf; the message names the step and the last good checkpoint."""


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on >= 2-D tensors (matmul weights, embeddings), none on norms and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_adamw(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.AdamW:
    groups = param_groups(model, cfg.weight_decay)
    kwargs: dict[str, Any] = {"lr": cfg.lr, "betas": (cfg.beta1, cfg.beta2), "eps": cfg.eps}
    if device_type in ("cuda", "cpu"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """Muon + AdamW (train/optim.py) or plain AdamW, as `cfg.resolved_optimizer` says."""
    if cfg.resolved_optimizer == "adamw":
        return make_adamw(model, cfg, device_type)
    groups = muon_param_groups(model, cfg.lr, cfg.weight_decay, cfg.muon_lr, cfg.muon_weight_decay)
    return MuonAdamW(groups, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, momentum=cfg.muon_momentum)


class LMSystem(L.LightningModule):
    """Next-token training of a Transformer, optionally distilled from a teacher."""

    def __init__(self, model_config: dict[str, Any], train_config: dict[str, Any], total_steps: int,
                 bytes_per_token: float = 0.0, lora_config: dict[str, Any] | None = None,
                 init_model: Transformer | None = None, tokenizer_sha256: str = "") -> None:
        """`init_model`: start from these weights (train.init_from, finetune) instead of a fresh init; a resumed run
        passes None and gets its weights from the checkpoint. `lora_config`: freeze the model and train LoRA /
        QLoRA adapters (models/lora.py); kept in the hyperparameters so a resume rebuilds the same modules.
        `tokenizer_sha256`: the tokenizer of the data's token ids, kept in the checkpoint so that a resume on data
        written by another tokenizer is refused instead of training the old weights on ids that mean other text."""
        super().__init__()
        self.save_hyperparameters(ignore=["init_model"])
        self.model_cfg = ModelConfig.from_dict(model_config)
        self.cfg = TrainConfig.from_dict(train_config)
        self.total_steps = int(total_steps)
        self.bytes_per_token = float(bytes_per_token)
        self.tokenizer_sha256 = tokenizer_sha256
        self.model = init_model if init_model is not None else Transformer(self.model_cfg)
        self.model.activation_checkpointing = self.cfg.activation_checkpointing
        self.lora_config = dict(lora_config) if lora_config else None
        if self.lora_config:
            from models.lora import LoRAConfig, apply_lora

            apply_lora(self.model, LoRAConfig(**self.lora_config))
        if self.cfg.qat != "none":  # fake quantization from outside the model (models/qat.py)
            if self.lora_config:
                raise ValueError(f"qat: {self.cfg.qat!r} cannot train LoRA adapters (their sum is not on the grid)")
            from models.qat import convert

            convert(self.model, self.cfg.qat, self.cfg.qat_block, self.cfg.qat_embeddings)
        self._compiled: list[Any] = []  # a list, not a submodule: state-dict keys stay `model.<name>`
        if self.cfg.compile is True:
            self.use_compile(True)
        self._teacher: list[torch.nn.Module] = []  # a list so Lightning/DDP never see it as a submodule
        self.run_state = RunState()  # what the callbacks read (train/step_events.py)
        self.step_rng = StepRNG()
        self._val_sum: torch.Tensor | None = None
        self._val_count: torch.Tensor | None = None

    def use_compile(self, on: bool) -> None:
        """Run training steps through torch.compile of the model (on) or eagerly; `train.compile: auto` is decided
        by the recipe and recorded here. Only `training_step` calls the compiled model; validation, samples, EMA,
        checkpoints and export see the plain module, whose parameters the compiled one shares, so checkpoints have
        no `_orig_mod.` prefix and load into an eager model (and the other way)."""
        if on and not self._compiled:
            self._compiled.append(torch.compile(self.model))
        elif not on:
            self._compiled.clear()
        self.cfg = dataclasses.replace(self.cfg, compile=on)
        self.hparams["train_config"]["compile"] = on

    def use_precision(self, precision: str) -> None:
        """Train in `precision` (what `precision: auto` settled on at this model's shape, train/recipe.py); before
        the Trainer is made, which takes the same value."""
        self.cfg = dataclasses.replace(self.cfg, precision=precision)  # type: ignore[arg-type]
        self.hparams["train_config"]["precision"] = precision

    @property
    def compiled(self) -> bool:
        return bool(self._compiled)

    def plain_model(self) -> Transformer:
        """The model as a plain Transformer: adapters merged into the weights in place (models/lora.py; no second
        copy of the weights at the end of a run), else itself. Call it last: the adapters are gone afterwards."""
        if not self.lora_config:
            return self.model
        from models.lora import merge_

        return merge_(self.model)  # type: ignore[return-value]

    # ------------------------------------------------------------------ teacher
    def set_teacher(self, teacher: torch.nn.Module) -> None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher]

    @property
    def teacher(self) -> torch.nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def on_fit_start(self) -> None:
        if self.step_rng.states is None:  # a fresh run; a resumed one has (or will get) the checkpoint's state
            self.step_rng.capture()
        if self.teacher is not None:
            self.teacher.to(self.device)
        if self.cfg.precision == "bf16-mixed" and self.device.type == "cpu":
            from train.cpu_bf16 import cpu_has_native_bf16, use_tn_linears

            if not cpu_has_native_bf16():
                use_tn_linears(self.model)  # 4x faster bf16 steps on AVX2-only CPUs, same numbers

    # ------------------------------------------------------------------ steps
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self.step_rng.apply()  # the last hook before training_step: nothing after it draws before the step

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        self.step_rng.capture()  # before any on_train_batch_end hook (checkpoints are written there)

    def forward(self, idx_BT: torch.Tensor, targets_BT: torch.Tensor | None = None) -> Any:
        return self.model(idx_BT, targets_BT=targets_BT)

    def training_step(self, batch: tuple[Any, ...], batch_idx: int) -> torch.Tensor:
        x_BT, y_BT, index, *weights = batch  # fine-tuning's word_weight adds per-target loss weights
        out = (self._compiled[0] if self._compiled else self.model)(x_BT, targets_BT=y_BT)
        if weights and self.teacher is None:
            w_BT = weights[0].to(torch.float32) * (y_BT != -100)
            ce_BT = F.cross_entropy(out.logits.float().reshape(-1, out.logits.shape[-1]), y_BT.reshape(-1),
                                    ignore_index=-100, reduction="none")
            loss = (ce_BT * w_BT.reshape(-1)).sum() / w_BT.sum().clamp_min(1e-9)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
        elif self.teacher is not None:
            with torch.no_grad():
                t_logits_BTV = self.teacher(x_BT).logits
            loss, ce, _ = distill_loss(out.logits, t_logits_BTV, y_BT, self.cfg.distill_alpha,
                                       self.cfg.distill_temperature)
            if out.aux_loss is not None:
                loss = loss + out.aux_loss
        else:
            loss = out.loss
        if not bool(torch.isfinite(loss.detach())):
            step = self.trainer.global_step if self._trainer is not None else -1
            last_good = self.run_state.last_good_ckpt
            where = f"; the last good checkpoint is {last_good}" if last_good else \
                "; no checkpoint was written yet"
            raise NonFiniteLossError(
                f"non-finite training loss ({float(loss.detach())}) at optimizer step {step} "
                f"(micro-batch {int(index)}){where}. Lower lr, raise warmup_frac or enable grad_clip."
            )
        dm = self.trainer.datamodule if self._trainer is not None else None
        if dm is not None and hasattr(dm, "next_index"):
            dm.next_index = int(index) + 1
        self.run_state.loss = loss.detach()
        self.run_state.aux_loss = out.aux_loss.detach() if out.aux_loss is not None else None
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x_BT, y_BT = batch
        out = self.model(x_BT, targets_BT=None)
        logits_BTV = out.logits
        ce_sum = F.cross_entropy(logits_BTV.float().reshape(-1, logits_BTV.shape[-1]), y_BT.reshape(-1),
                                 ignore_index=-100, reduction="sum")  # -100: a masked target (fine-tuning)
        n = (y_BT != -100).sum().to(ce_sum.dtype)
        self._val_sum = ce_sum.detach() if self._val_sum is None else self._val_sum + ce_sum.detach()
        self._val_count = n if self._val_count is None else self._val_count + n

    def on_validation_epoch_start(self) -> None:
        self._val_sum, self._val_count = None, None

    def on_validation_epoch_end(self) -> None:
        if self._val_sum is None:
            return
        total = self.trainer.strategy.reduce(self._val_sum.double(), reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_count.double(), reduce_op="sum")
        val_loss = (total / count).float()
        self.log("val/loss", val_loss, sync_dist=False, prog_bar=False)
        if self.bytes_per_token > 0:
            self.log("val/bpb", val_loss / (math.log(2) * self.bytes_per_token))
        self._val_sum, self._val_count = None, None

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self) -> dict[str, Any]:
        opt = make_optimizer(self.model, self.cfg, self.device.type)
        sched = build_scheduler(opt, self.cfg.schedule, self.total_steps, self.cfg.warmup_frac,
                                self.cfg.min_lr_ratio, self.cfg.decay_frac)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: Any = None) -> None:
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.run_state.grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True).detach()

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = self.step_rng.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        old = checkpoint.get("hyper_parameters", {}).get("model_config")
        if old is not None and ModelConfig.from_dict(old).to_dict() != self.model_cfg.to_dict():
            raise ValueError(
                "model: the checkpoint was trained with a different model config; resuming needs the same "
                "model (use a new run directory)"
            )
        old_sha = checkpoint.get("hyper_parameters", {}).get("tokenizer_sha256") or ""
        if old_sha and self.tokenizer_sha256 and old_sha != self.tokenizer_sha256:
            raise ValueError(
                f"tokenizer: the checkpoint was trained on ids of tokenizer sha256 {old_sha[:12]}, the data now comes "
                f"from tokenizer sha256 {self.tokenizer_sha256[:12]}; resuming would train the old weights on ids "
                "that mean other text (use a new run directory)"
            )
        rng = checkpoint.get("rng_states")
        if rng:
            self.step_rng.load_state_dict(rng)
