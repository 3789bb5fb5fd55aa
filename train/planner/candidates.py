"""Candidate shapes for a plan: the models package's presets, plus dense/MoE shapes generated to a target size.

Design and invariants
- Every number a candidate reports (total / active / non-embedding params, FLOPs per token, memory) comes from
  `models.accounting`, which counts the real module on the meta device. The closed-form count in
  `_estimate` mirrors ModelConfig's layout only to *search* for (num_layers, dim) quickly; a generated shape is
  re-aimed once if accounting disagrees with the estimate by more than 1%.
- Shape rule (a heuristic, not a law: Kaplan et al. 2020 found loss within a few percent over aspect ratios
  dim/num_layers of ~20-200; MobileLLM (Liu et al. 2024) found deep-and-thin better below 1B): aspect 16 up to
  1e6 non-embedding params, rising log-linearly to 32 at 1e8, growing as N^0.2 beyond (about 100 at
  Chinchilla-70B scale); head_dim 16 below dim 128, 32 below 256, 64 below 4096, 128 above. At 1e13 FLOPs on
  tinystories, dim 64 x 4 layers x 4 heads of 16 beat the older rule's 3 layers x 2 heads of 32 by 1.4% held-out
  bits per byte (LOG.md, issue 10); MHA; SwiGLU hidden 8/3 dim
  (ModelConfig's default). dim steps by head_dim, num_layers by one; the score is the size mismatch (floored
  at 1%) plus a penalty for aspect ratios beyond a factor 2 of the rule, so at large sizes shapes land within
  ~1% of the target and at tiny sizes (few choices) a 10% size miss beats a 20-layer, 32-wide model.
- `law_params(counts, convention, moe_gain_exponent)` is the N a law sees: active params (MoE plans by active),
  total or non-embedding per the law, optionally scaled by the MoE quality assumption
  N_eff = N_active (N_total / N_active)^g. g = 0 (default) credits MoE nothing beyond its active params:
  the conservative reading, since the published dense laws were never fitted on MoE models.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math

from models import ModelConfig, get_preset, list_presets
from models.accounting import attention_flops_per_token, count_params, memory_estimate


@functools.lru_cache(maxsize=4096)
def _counts_cached(cfg_json: str) -> dict[str, int]:
    return count_params(ModelConfig.from_dict(json.loads(cfg_json)))


def counts(cfg: ModelConfig) -> dict[str, int]:
    """models.accounting.count_params, cached by config (meta-device builds cost ms to seconds)."""
    return dict(_counts_cached(json.dumps(cfg.to_dict(), sort_keys=True)))


def train_flops_per_token(cfg: ModelConfig, seq_len: int, count_attention: bool = True,
                          law_n: float | None = None) -> float:
    """Training FLOPs per token: accounting's 6 N_matmul + attention, or plain 6 N (law's N) when not counting it."""
    if not count_attention:
        return 6.0 * float(law_n if law_n is not None else counts(cfg)["active"])
    return 6.0 * counts(cfg)["matmul_active"] + attention_flops_per_token(cfg, seq_len)


def law_params(c: dict[str, int], convention: str, moe_gain_exponent: float = 0.0) -> float:
    """The N a law sees (see module docstring)."""
    n = float(c["active"] if convention == "total" else c["active_non_embedding"])
    if moe_gain_exponent and c["total"] > c["active"]:
        n *= (c["total"] / c["active"]) ** moe_gain_exponent
    return n


def head_dim_for(dim: int) -> int:
    return 16 if dim < 128 else 32 if dim < 256 else 64 if dim < 4096 else 128


def target_aspect(n_nonemb: float) -> float:
    if n_nonemb >= 1e8:
        return 32.0 * (n_nonemb / 1e8) ** 0.2
    return 16.0 * 2.0 ** (max(0.0, math.log10(max(n_nonemb, 1.0) / 1e6)) / 2.0)  # 16 at <= 1e6 .. 32 at 1e8


def _aspect_penalty(aspect: float, n_nonemb: float) -> float:
    """0 within a factor 2 of the aspect rule (loss is flat there), then 0.05 per e-fold."""
    return 0.05 * max(0.0, abs(math.log(aspect / target_aspect(n_nonemb))) - math.log(2.0))


def _round32(x: float) -> int:
    return max(32, int(math.ceil(x / 32.0)) * 32)


def _estimate(dim: int, num_layers: int, vocab: int, num_experts: int, top_k: int) -> dict[str, float]:
    """Closed-form count mirroring ModelConfig (MHA, tied embedding, SwiGLU 8/3): a search aid only."""
    hidden = _round32(int(8 * dim / 3))
    attn = 4 * dim * dim
    norms = 2 * dim
    if num_experts:
        mlp_total = num_experts * 3 * dim * hidden + dim * num_experts
        mlp_active = top_k * 3 * dim * hidden + dim * num_experts
    else:
        mlp_total = mlp_active = 3 * dim * hidden
    emb = vocab * dim
    return {
        "total": emb + dim + num_layers * (attn + mlp_total + norms),
        "active": emb + dim + num_layers * (attn + mlp_active + norms),
        "active_non_embedding": dim + num_layers * (attn + mlp_active + norms),
    }


def _search_shape(target: float, key: str, vocab: int, num_experts: int, top_k: int) -> tuple[int, int]:
    """(num_layers, dim) whose estimated `key` count is nearest `target`, preferring the aspect rule."""
    best: tuple[float, int, int] | None = None
    d_max = max(64, int((max(target, 1.0) * 256 / 12) ** (1 / 3)) * 4)
    dim = 32
    while dim <= d_max:
        e1 = _estimate(dim, 1, vocab, num_experts, top_k)
        e2 = _estimate(dim, 2, vocab, num_experts, top_k)
        per, base = e2[key] - e1[key], 2 * e1[key] - e2[key]
        layers = max(1, round((target - base) / per))
        est = base + layers * per
        mismatch = abs(math.log(est / target))
        aspect = dim / layers
        score = max(mismatch, 0.01) + _aspect_penalty(aspect, est - base + dim)
        if best is None or score < best[0]:
            best = (score, layers, dim)
        step = max(32, head_dim_for(dim))  # widths stay multiples of 32 (GGUF row blocks)
        dim = (dim + step) // step * step
    assert best is not None
    return best[1], best[2]


def make_shape(target: float, convention: str, vocab_size: int, seq_len: int, num_experts: int = 0,
               num_experts_per_tok: int = 2) -> ModelConfig:
    """A ModelConfig whose law-convention (active) param count is near `target`."""
    key = "active" if convention == "total" else "active_non_embedding"
    aim = target
    best: tuple[float, ModelConfig] | None = None
    for _ in range(3):
        layers, dim = _search_shape(aim, key, vocab_size, num_experts, num_experts_per_tok)
        cfg = ModelConfig(
            vocab_size=vocab_size, dim=dim, num_layers=layers, num_heads=dim // head_dim_for(dim),
            max_seq_len=seq_len, num_experts=num_experts,
            num_experts_per_tok=num_experts_per_tok if num_experts else 2,
        )
        c = counts(cfg)
        score = max(abs(math.log(c[key] / target)), 0.01) + _aspect_penalty(dim / layers, c["active_non_embedding"])
        if best is None or score < best[0]:
            best = (score, cfg)
        if abs(c[key] / target - 1) <= 0.01:
            break
        aim *= target / c[key]
    assert best is not None
    return best[1]


def preset_shapes(vocab_size: int, seq_len: int) -> list[tuple[str, ModelConfig]]:
    """Every preset with the run's vocabulary and sequence length."""
    out = []
    for name in list_presets():
        cfg = get_preset(name)
        out.append((name, dataclasses.replace(cfg, vocab_size=vocab_size, max_seq_len=max(seq_len, 1))))
    return out


def memory_gib(cfg: ModelConfig, batch_size: int, seq_len: int, gpu: bool,
               activation_checkpointing: bool = False) -> float:
    """models.accounting's training memory of one micro-batch per device (bf16-mixed on a GPU, fp32 on a CPU)."""
    m = memory_estimate(cfg, batch_size=batch_size, seq_len=seq_len, precision="bf16-mixed" if gpu else "fp32",
                        activation_checkpointing=activation_checkpointing, num_params=counts(cfg)["total"])
    return m["total"] / 2**30


RECOMPUTE_FACTOR = 4.0 / 3.0
"""Training FLOPs per token with activation checkpointing: each block's forward (1/3 of forward + backward) runs
twice (Chen et al. 2016; Korthikanti et al. 2022 count the same full-recompute cost)."""


@dataclasses.dataclass(frozen=True)
class MicroBatch:
    """How one device runs a global batch: `micro_batch_size` sequences at a time, `num_accum_steps` of them per
    optimizer step, with or without activation checkpointing, needing `memory_gib` per device."""

    micro_batch_size: int
    num_accum_steps: int
    activation_checkpointing: bool
    memory_gib: float
    fits: bool


def fit_micro_batch(cfg: ModelConfig, per_device_batch: int, seq_len: int, gpu: bool, limit_gib: float) -> MicroBatch:
    """The largest micro-batch (a divisor of the per-device batch, so accumulation keeps the batch exact) whose
    memory fits `limit_gib` (0: no limit). Accumulation costs no FLOPs, checkpointing a third more, so
    checkpointing is turned on only when a micro-batch of one sequence does not fit without it. `fits` is False
    when even one checkpointed sequence does not fit; the figures are then that smallest configuration's."""
    divisors = [d for d in range(per_device_batch, 0, -1) if per_device_batch % d == 0]
    for ckpt in (False, True):
        for micro in divisors:
            mem = memory_gib(cfg, micro, seq_len, gpu, ckpt)
            if not limit_gib or mem <= limit_gib:
                return MicroBatch(micro, per_device_batch // micro, ckpt, mem, True)
    return MicroBatch(1, per_device_batch, True, memory_gib(cfg, 1, seq_len, gpu, True), False)
