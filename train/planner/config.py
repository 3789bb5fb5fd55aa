"""PlanConfig: what the budget planner needs to pick a model and a token count.

Design and invariants
- The budget is given once: `flops` (training FLOPs), or `hours` on `device` x `num_devices`, converted with a
  measured throughput (`flops_per_s`), a short benchmark on this machine (device 'cpu') or the GPU table
  (peak dense bf16 x `mfu`, see throughput.py). Giving both or neither is an error that says so.
- 0 means "decide for me" where a count is optional (unique_tokens, vocab_size, batch_size); no field is None
  except `fitted_law`, a path that only law 'fitted' needs.
- The law decides the N/D split; the data limit (Muennighoff) and the inference demand (Sardana) then move
  the choice among real shapes. Every field below says which step it steers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from train.planner.throughput import GPU_TABLE

LawName = Literal["chinchilla", "epoch", "tokens-per-param", "kaplan", "fitted"]
Device = Literal["cpu", "a100", "h100", "h200", "b200", "l4", "l40s", "v100", "t4", "mi300x"]


@dataclass
class PlanConfig:
    """Budget, data, law and candidate shapes for `tinyfoundry plan`."""

    flops: float = 0.0
    """Training budget in FLOPs (e.g. 1e15); 0 means derive it from hours on device."""
    hours: float = 0.0
    """Training budget in wall-clock hours on `device` (used when flops is 0)."""
    device: Device = "cpu"
    """Device for an hours budget and for wall-time estimates: 'cpu' benchmarks this machine; GPUs use the table."""
    num_devices: int = 1
    """Devices training together (throughput scales linearly; an optimistic assumption)."""
    mfu: float = 0.4
    """Model FLOPs utilisation assumed for a GPU from the table (fraction of peak dense bf16)."""
    flops_per_s: float = 0.0
    """Measured sustained training FLOP/s per device; 0 takes the GPU table or a short benchmark on this CPU."""
    benchmark_seconds: float = 3.0
    """Length of the CPU throughput benchmark when device is 'cpu' and flops_per_s is 0."""
    law: LawName = "chinchilla"
    """Scaling law: 'chinchilla' (Table 3 power law), 'epoch' (Epoch AI refit), 'tokens-per-param', 'kaplan', 'fitted'."""
    chinchilla_fit: Literal["approach1", "approach3"] = "approach1"
    """Which Chinchilla fit 'chinchilla' allocates with: approach 1 (Table 3) or the approach-3 parametric optimum."""
    fitted_law: Path | None = None
    """fitted_law.json written by `tinyfoundry plan sweep` (needed by law 'fitted')."""
    tokens_per_param: float = 20.0
    """Tokens per parameter for law 'tokens-per-param'."""
    unique_tokens: int = 0
    """Unique training tokens available; 0 reads the train split size from the shards' index.json (else unlimited)."""
    shrink_for_repeats: bool = False
    """Let the data-constrained optimum (Muennighoff et al. 2023: excess parameters lose value faster than repeated
    tokens, R*_N 5.3 < R*_D 15.4, fitted on 10M-9B params) shrink the model below the law's size for more epochs.
    Off by default: on 2,000 TinyStories at 1e13 FLOPs (12-14 epochs) models at or above the law's size measured
    better (4 layers beat 3 by 0.8-1.4% held-out bpb, LOG.md sessions 2 and 4), where the fit halves the model."""
    inference_tokens: float = 0.0
    """Tokens the model will generate/score over its life; > 0 shifts the plan to smaller models (Sardana et al.)."""
    inference_mode: Literal["match-loss", "lifetime-budget"] = "match-loss"
    """'match-loss': reach the compute-optimal loss at least lifetime cost; 'lifetime-budget': flops pays for both."""
    count_attention: bool = True
    """Count attention-score FLOPs (and the exact per-token cost of the shape) in the budget, not just 6N per token."""
    vocab_size: int = 0
    """Vocabulary of generated shapes; 0 takes the shards' index.json, else the given model config, else 4096."""
    seq_len: int = 512
    """Training sequence length written to the plan (and used in the attention FLOPs)."""
    batch_size: int = 0
    """Sequences per optimizer step; 0 derives it from DeepSeek's critical-batch fit B = 0.292 C^0.3271 tokens."""
    num_experts: int = 0
    """Generate mixture-of-experts shapes with this many routed experts (0: dense shapes only)."""
    num_experts_per_tok: int = 2
    """Experts per token (top-k) of generated MoE shapes; the law sees the active parameters."""
    moe_gain_exponent: float = 0.0
    """MoE quality assumption: effective N = active N x (total/active)^g; 0 credits MoE nothing beyond its active N."""
    num_candidates: int = 9
    """Generated sizes around the law's optimum (a geometric ladder, one shape per size)."""
    candidate_step: float = 1.5
    """Ratio between neighbouring generated sizes."""
    include_presets: bool = True
    """Also list the models package's named presets (with this vocabulary) as candidates."""
    max_memory_gb: float = 0.0
    """Training memory per device (GiB) a candidate's micro-batch must fit; 0 takes a GPU's memory from the table
    (no limit for 'cpu': the training machine's RAM is unknown to the plan). Candidates use smaller micro-batches with gradient accumulation,
    then activation checkpointing, before they are dropped."""

    def __post_init__(self) -> None:
        for name in ("flops", "hours", "flops_per_s", "inference_tokens", "max_memory_gb", "moe_gain_exponent"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or v != v or v < 0 or v == float("inf"):
                raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
        if self.flops > 0 and self.hours > 0:
            raise ValueError(
                f"flops: give the budget as flops or as hours, not both, got flops={self.flops:g} hours={self.hours:g}"
            )
        if 0 < self.flops < 1e6:
            raise ValueError(f"flops: a budget below 1e6 FLOPs trains nothing useful, got {self.flops:g}")
        if self.flops > 1e32:
            raise ValueError(f"flops: budget beyond 1e32 FLOPs is outside any law's reach, got {self.flops:g}")
        if self.device not in GPU_TABLE and self.device != "cpu":
            raise ValueError(f"device: unknown device, got {self.device!r}")
        if not 0 < self.mfu <= 1:
            raise ValueError(f"mfu: must be in (0, 1], got {self.mfu}")
        if self.benchmark_seconds <= 0:
            raise ValueError(f"benchmark_seconds: must be positive, got {self.benchmark_seconds}")
        if self.tokens_per_param <= 0:
            raise ValueError(f"tokens_per_param: must be positive, got {self.tokens_per_param}")
        if self.law == "fitted" and self.fitted_law is None:
            raise ValueError("fitted_law: law 'fitted' needs the fitted_law.json from `tinyfoundry plan sweep`, got None")
        for name in ("num_devices", "seq_len", "num_candidates", "num_experts_per_tok"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{name}: must be a positive integer, got {v!r}")
        for name in ("unique_tokens", "vocab_size", "batch_size", "num_experts"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        if self.num_experts and self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok: must be <= num_experts={self.num_experts}, got {self.num_experts_per_tok}"
            )
        if self.candidate_step <= 1:
            raise ValueError(f"candidate_step: must be > 1, got {self.candidate_step}")
