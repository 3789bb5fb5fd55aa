"""Parameter, FLOP and memory accounting from a ModelConfig alone (nothing is allocated).

Design and invariants
- Parameter counts come from building the real `Transformer` on the `meta` device (nanochat's habit), so they
  can never drift from the module: `total` counts tied weights once; `active` is what one token touches
  (shared weights + router + k of the E routed experts); `non_embedding` drops the token embedding and the
  output projection (Kaplan et al.'s N, independent of the vocabulary).
- FLOPs per token of training, convention (PaLM appendix B, nanoGPT's `estimate_mfu`):
      6 * N_matmul  +  12 * L * H * K * T
  N_matmul = active weights that take part in a matmul (attention and MLP/expert projections, router, output
  head; the embedding lookup and norm gains do not multiply). The attention term counts QK^T and AV over the
  full T x T score matrix (T = seq_len, default max_seq_len) although causal kernels skip half of it; it is
  the convention MFU figures are quoted in. Forward alone is one third of this.
  Element-wise work (norms, SiLU, softmax, RoPE) is ignored: under 1% for these shapes, and inside the 5%
  tolerance of the DeepSpeed flops-profiler test.
- `memory_estimate` is a planning figure, not a measurement: weights, grads, AdamW's two fp32 moments (and an
  fp32 master copy under bf16 mixed precision with bf16 weights), and activations saved for backward, estimated
  per layer as in Korthikanti et al. 2022 ("Reducing Activation Recomputation") adapted to SwiGLU/GQA with a
  fused attention kernel (no T x T scores kept), plus the fp32 logits for the loss.
"""

from __future__ import annotations

from typing import Literal

import torch

from models.config import ModelConfig
from models.moe import MoE
from models.transformer import Transformer


def _meta_model(cfg: ModelConfig) -> Transformer:
    with torch.device("meta"):
        return Transformer(cfg)


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """{'total', 'active', 'non_embedding', 'active_non_embedding', 'embedding', 'matmul_active'}."""
    model = _meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.tok_emb.weight.numel()
    head = 0 if cfg.tie_embeddings else model.lm_head.weight.numel()
    inactive = 0
    norms = 0
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            norms += p.numel()
    for m in model.modules():
        if isinstance(m, MoE):
            routed = m.w_gate.numel() + m.w_up.numel() + m.w_down.numel()
            inactive += routed * (cfg.num_experts - cfg.num_experts_per_tok) // cfg.num_experts
    active = total - inactive
    return {
        "total": total,
        "active": active,
        "non_embedding": total - embedding - head,
        "active_non_embedding": active - embedding - head,
        "embedding": embedding,
        # every active weight that multiplies an activation, the output head included even when tied
        "matmul_active": active - embedding - head - norms + cfg.vocab_size * cfg.dim,
    }


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token of QK^T and AV: 12 * L * H * K * T (full T x T, see module docstring)."""
    T = seq_len or cfg.max_seq_len
    return 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * T


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training (forward + backward) FLOPs per token: 6 * N_matmul + 12 * L * H * K * T."""
    return 6 * count_params(cfg)["matmul_active"] + attention_flops_per_token(cfg, seq_len)


def memory_estimate(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int | None = None,
    precision: Literal["fp32", "bf16-mixed", "bf16-true"] = "bf16-mixed",
    activation_checkpointing: bool = False,
) -> dict[str, int]:
    """Training memory in bytes: weights, grads, optimizer (AdamW), activations, total (see module docstring)."""
    T = seq_len or cfg.max_seq_len
    n = count_params(cfg)["total"]
    w_bytes = 4 if precision in ("fp32", "bf16-mixed") else 2
    weights = n * w_bytes
    grads = n * w_bytes
    optimizer = n * 8 + (n * 4 if precision == "bf16-true" else 0)  # exp_avg + exp_avg_sq (+ fp32 master)
    a = 4 if precision == "fp32" else 2  # bytes per saved activation element
    B, D, L = batch_size, cfg.dim, cfg.num_layers
    kv = cfg.num_kv_heads * cfg.head_dim
    if cfg.is_moe:
        k, F_ = cfg.num_experts_per_tok, cfg.moe_hidden_dim
        # routed: gathered input, gate/up outputs, silu*up product, expert output, per assignment
        mlp = k * (D + 3 * F_ + D) + cfg.num_shared_experts * 3 * F_ + cfg.num_experts * 2
    else:
        F_ = cfg.hidden_dim
        mlp = 3 * F_  # gate, up, silu(gate)*up (input saved by the norm below)
    # per token per layer: 2 norm inputs + 2 norm outputs, q, k, v, attention output (+ logsumexp), wo input
    attn = 4 * D + D + 2 * kv + D + D
    per_layer = B * T * (attn + mlp) * a
    if activation_checkpointing:
        per_layer = B * T * D * a  # only each block's input is kept; one block recomputed at a time
        activations = L * per_layer + B * T * (attn + mlp) * a
    else:
        activations = L * per_layer
    activations += B * T * cfg.vocab_size * (4 + a)  # logits (bf16/fp32) + fp32 copy for the loss
    total = weights + grads + optimizer + activations
    return {
        "weights": weights,
        "grads": grads,
        "optimizer": optimizer,
        "activations": activations,
        "total": total,
    }
