"""TrainConfig: everything the training stage needs besides the model shape and the data.

Design and invariants
- Lengths are in tokens (`max_tokens`, `val_every_tokens`, `ckpt_every_tokens`); the runner turns them
  into optimizer steps with `tokens_per_step = batch_size * seq_len * num_accum_steps * world_size`, rounding
  up, so a run never trains on fewer tokens than asked.
- 0 means "decide for me" for `max_tokens`, `batch_size`, `seq_len` (take the plan's value, else a default)
  and for the intervals (about ten validations / checkpoints per run). No field is `None`.
- Strategy and precision are validated here only for being known names; whether the machine can run them
  (FSDP / DeepSpeed need CUDA, 16-mixed needs a GPU) is checked by the runner before training, so a config
  written on a laptop for a cluster still loads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

Precision = Literal["auto", "fp32", "bf16-mixed", "16-mixed"]
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"]
Schedule = Literal["cosine", "wsd", "constant"]


@dataclass
class TrainConfig:
    """How to train: budget, batch, optimizer, schedule, precision, devices, checkpoints and logging."""

    seed: int = 0
    """Seed for initialisation and the data order (the same seed gives the same run, bitwise in fp32 on CPU)."""
    init_from: str = ""
    """Start from these weights instead of a random init: a model dir or .ckpt of ours, a Hugging Face Llama folder
    (safetensors) or a Llama .gguf file. The model's shape comes from that source (the model section is ignored);
    a rerun resumes from last.ckpt, it does not import again. Empty = random init."""
    max_tokens: int = 0
    """Training length in tokens; 0 takes num_tokens from the plan (required without a plan)."""
    batch_size: int = 0
    """Sequences per micro-batch per device; 0 takes the plan's batch_size (else 16)."""
    seq_len: int = 0
    """Tokens per training sequence; 0 takes the plan's seq_len (else the model's max_seq_len)."""
    num_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step (gradient accumulation); with a plan, unless batch_size or this
    is set, the plan's micro_batch_size x num_accum_steps (chosen to fit the device's memory) are used."""
    activation_checkpointing: bool = False
    """Keep only each block's input in the forward and recompute the block in the backward (torch.utils.checkpoint):
    activations shrink from L blocks' to one block's, for a third more FLOPs. With a plan, unless set here, the
    plan's choice (on only where a micro-batch of one sequence would not fit otherwise)."""
    data_order: Literal["random", "sequential"] = "random"
    """'random': windows at seeded random offsets; 'sequential': consecutive windows through the shards."""
    optimizer: Literal["auto", "muon", "adamw"] = "auto"
    """'muon': Muon on the hidden matrices + AdamW on embeddings, head and norms (train/optim.py); 'adamw':
    AdamW on all; 'auto': muon, except under FSDP / DeepSpeed (they shard matrices, which Muon needs whole)."""
    lr: float = 3e-3
    """Peak learning rate of AdamW (with Muon: of the embedding, head and norms)."""
    muon_lr: float = 0.03
    """Peak learning rate of Muon (scaled by sqrt(max(1, rows/cols)) per matrix, as in torch.optim.Muon). 0.03 was
    best of 0.02 / 0.03 / 0.04 at 1e13 FLOPs on TinyStories with weight decay on (LOG.md, session 4)."""
    muon_weight_decay: float = 0.2
    """Muon's decoupled weight decay (the parameter shrinks by muon_lr * this per step). 0.2 was best of
    0.1 / 0.2 / 0.4 at 1e13 FLOPs on TinyStories (LOG.md); without it Muon only memorised faster."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr (cosine and WSD end there)."""
    schedule: Schedule = "cosine"
    """Learning-rate schedule: linear warmup then 'cosine' decay, 'wsd' (warmup-stable-decay) or 'constant'."""
    warmup_frac: float = 0.02
    """Fraction of the optimizer steps spent in linear warmup."""
    decay_frac: float = 0.2
    """WSD only: fraction of the steps spent in the final linear decay."""
    weight_decay: float = 0.3
    """AdamW weight decay, applied only to parameters with >= 2 dimensions (not norms or biases); with Muon that is
    the embedding and head. 0.3 beat 0.1 in all five paired runs at 1e13 FLOPs on TinyStories (AdamW -1.6%, Muon
    -0.2 to -0.8%; LOG.md, sessions 2 and 4): small models repeat small corpora for many epochs."""
    ema_decay: float = 0.998
    """Decay of the exponential moving average of the weights that validation, the summary and the final model
    use (train/ema.py; warm-started, so short runs average fewer steps); 0 disables. Off under FSDP/DeepSpeed."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    precision: Precision = "auto"
    """'auto' (bf16-mixed where the device computes bf16 natively and, on a CPU, where this model's own step measures
    faster in it, else fp32; decided per machine and shape by train/precision.py), 'fp32', 'bf16-mixed' (autocast,
    CPU or GPU) or '16-mixed' (fp16 autocast with loss scaling, GPU only). The config stays machine-independent; the
    summary records what a run used."""
    compile: bool | Literal["auto"] = "auto"
    """Train the model's forward/backward through torch.compile (a slower start for faster steps). 'auto': on CUDA
    yes; on a CPU when the run is long enough for the measured gain to repay the measured compile time
    (train/compile_auto.py: cached per machine and shape, else probed). Validation, samples, EMA, checkpoints and
    the exported model use the plain module either way; the summary records what a run used and why."""
    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    """Device kind; 'auto' takes a GPU when one is present."""
    devices: int = 1
    """Devices (processes) per node."""
    num_nodes: int = 1
    """Nodes (machines) in the job; >1 is launched through torchrun or SLURM (see launch/slurm.py)."""
    strategy: Strategy = "auto"
    """Multi-device strategy: 'ddp', 'fsdp' or DeepSpeed ZeRO 'deepspeed_stage_{1,2,3}' (FSDP/DeepSpeed need GPUs)."""
    val_every_tokens: int = 0
    """Validate every this many training tokens; 0 means about ten times per run."""
    num_val_tokens: int = 65536
    """Validation tokens per evaluation (fixed windows from the val split)."""
    ckpt_every_tokens: int = 0
    """Checkpoint every this many training tokens; 0 means about ten times per run."""
    ckpt_every_minutes: float = 0.0
    """Also checkpoint when this many minutes passed since the last one; 0 disables."""
    num_keep_ckpts: int = 3
    """Periodic checkpoints kept besides last.ckpt and best.ckpt."""
    log_every_steps: int = 10
    """Log train loss, lr, grad norm, tokens/s and MFU every this many optimizer steps."""
    sample_every_steps: int = 0
    """Log sample generations as text every this many steps; 0 means at each validation."""
    sample_prompt: str = "Once upon a time"
    """Prompt for the sample generations."""
    num_sample_tokens: int = 48
    """New tokens per sample generation; 0 disables samples."""
    qat: Literal["none", "int4", "ternary"] = "none"
    """Quantization-aware training (models/qat.py): the block linears train through fake quantization with a
    straight-through estimator, full-precision shadow weights in the optimizer. 'int4': llama.cpp's Q4_0 grid;
    'ternary': BitNet b1.58 absmean {-s, 0, s}. The final model holds the on-grid weights (exported exactly as
    Q4_0 / TQ1_0 / TQ2_0 by models/export/qat_gguf.py). With init_from it is a QAT phase after pretraining."""
    qat_block: int = 256
    """Ternary scale granularity along each row: 256 (one absmean per TQ1_0/TQ2_0 block; 128/64/32 where 256 does
    not divide a row), 128, 64, 32, or 0 for one scale per tensor. int4 always uses Q4_0's blocks of 32."""
    qat_embeddings: bool = False
    """Also train the token embedding and output head on the int4 (Q4_0) grid; else the GGUF keeps them Q8_0."""
    teacher: str = ""
    """Distillation teacher (model dir or .ckpt); empty trains on cross-entropy alone."""
    distill_alpha: float = 0.5
    """Distillation: loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)."""
    distill_temperature: float = 2.0
    """Distillation softmax temperature T."""
    num_threads: int = 0
    """CPU threads for torch (torch.set_num_threads); 0 keeps torch's default (one per core)."""
    num_workers: int = 0
    """DataLoader worker processes (windows are cut from memory-mapped shards, so 0 is usually enough)."""
    progress_bar: bool = True
    """Show a tqdm bar (tokens/s, loss, ETA) on stderr."""
    logger: Literal["tensorboard", "csv", "wandb", "mlflow"] = "tensorboard"
    """Where metrics go (Lightning's loggers): 'tensorboard' (run_dir/tb), 'csv' (run_dir/csv/metrics.csv),
    'wandb' or 'mlflow' (run_dir/mlruns); the last two need their package installed."""

    # Fields that change how a run is shown, checkpointed or how fast it goes, never what it trains: the run
    # directory's stage hash leaves them out, so toggling the progress bar or compile does not retrain (a compiled
    # and an eager run resume from each other's checkpoints).
    HASH_EXCLUDE: ClassVar[frozenset[str]] = frozenset(
        {"progress_bar", "logger", "log_every_steps", "ckpt_every_tokens", "ckpt_every_minutes", "num_keep_ckpts",
         "compile"})

    def __post_init__(self) -> None:
        for name in ("max_tokens", "batch_size", "seq_len", "val_every_tokens", "ckpt_every_tokens",
                     "sample_every_steps", "num_sample_tokens", "num_workers", "num_threads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        for name in ("num_accum_steps", "devices", "num_nodes", "log_every_steps", "num_keep_ckpts",
                     "num_val_tokens"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"lr: must be positive, got {self.lr}")
        for name in ("min_lr_ratio", "warmup_frac", "decay_frac", "distill_alpha"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name}: must be in [0, 1], got {v}")
        if self.warmup_frac + (self.decay_frac if self.schedule == "wsd" else 0.0) > 1.0:
            raise ValueError(f"warmup_frac: warmup_frac + decay_frac must be <= 1, got {self.warmup_frac}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: must be in [0, 1), got {self.ema_decay}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1: beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")
        if self.eps <= 0:
            raise ValueError(f"eps: must be positive, got {self.eps}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip: must be >= 0, got {self.grad_clip}")
        if self.ckpt_every_minutes < 0:
            raise ValueError(f"ckpt_every_minutes: must be >= 0, got {self.ckpt_every_minutes}")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature: must be positive, got {self.distill_temperature}")
        if not (isinstance(self.compile, bool) or self.compile == "auto"):
            raise ValueError(f"compile: must be true, false or 'auto', got {self.compile!r}")
        if self.qat_block not in (0, 32, 64, 128, 256):
            raise ValueError(f"qat_block: must be 0 (per tensor), 32, 64, 128 or 256, got {self.qat_block!r}")
        if self.qat_embeddings and self.qat == "none":
            raise ValueError("qat_embeddings: needs qat 'int4' or 'ternary', got qat 'none'")
        if self.optimizer == "muon" and self.sharded:
            raise ValueError(f"optimizer: 'muon' needs whole matrices, but strategy {self.strategy!r} shards them; "
                             "use 'adamw' or 'auto' (AdamW under sharding)")
        if not self.muon_lr > 0:
            raise ValueError(f"muon_lr: must be positive, got {self.muon_lr}")
        if self.muon_weight_decay < 0:
            raise ValueError(f"muon_weight_decay: must be >= 0, got {self.muon_weight_decay}")
        if not 0 <= self.muon_momentum < 1:
            raise ValueError(f"muon_momentum: must be in [0, 1), got {self.muon_momentum}")

    @property
    def sharded(self) -> bool:
        """FSDP or DeepSpeed ZeRO: parameters or optimizer state are split across devices."""
        return self.strategy == "fsdp" or self.strategy.startswith("deepspeed")

    @property
    def resolved_optimizer(self) -> str:
        """'muon' or 'adamw': what 'auto' means for this strategy."""
        if self.optimizer == "auto":
            return "adamw" if self.sharded else "muon"
        return self.optimizer

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown TrainConfig field, got {d[unknown[0]]!r}")
        return cls(**d)

