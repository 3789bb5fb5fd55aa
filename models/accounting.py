"""Parameter, FLOP and memory accounting from a ModelConfig alone (nothing is allocated).

Design and invariants
- Parameter counts come from building the real `Transformer` on the `meta` device (nanochat's habit), so they
  can never drift from the module: `total` counts tied weights once; `active` is what one token touches
  (shared weights + router + k of the E routed experts); `non_embedding` drops the token embedding and the
  output projection (Kaplan et al.'s N, independent of the vocabulary).
- Block sharing (`share_blocks = k`): parameters are the stored ones (each counted once); FLOPs and activations
  follow the effective depth num_layers * k, since every repeat multiplies again: the block matmul weights enter
  N_matmul k times and the attention term uses the depth. `effective` is the parameter count of the unshared
  network the model computes (what an export that repeats the weights holds).
- FLOPs per token of training, convention (PaLM appendix B, nanoGPT's `estimate_mfu`):
      6 * N_matmul  +  12 * L * H * K * T
  N_matmul = active weights that take part in a matmul (attention and MLP/expert projections, router, output
  head; the embedding lookup and norm gains do not multiply). The attention term counts QK^T and AV over the
  full T x T score matrix (T = seq_len, default max_seq_len) although causal kernels skip half of it; it is
  the convention MFU figures are quoted in. Forward alone is one third of this.
  Element-wise work (norms, SiLU, softmax, RoPE) is ignored: under 1% for these shapes, and inside the 5%
  tolerance of the DeepSpeed flops-profiler test.
- `memory_estimate` is the peak of one training step (one micro-batch): weights, then the larger of two phases,
  (a) the backward: grads plus the activations alive at its peak, and (b) the optimizer step: grads, optimizer
  state (AdamW's two fp32 moments, an upper bound for Muon's one momentum; an fp32 master copy for bf16-true) and
  the step's temporaries (Muon's Newton-Schulz: ~3 copies of the largest matrix). Activations saved for backward
  are counted per layer in the manner of Korthikanti et al. 2022 ("Reducing Activation Recomputation") for this
  implementation (SwiGLU, RoPE, GQA, a fused attention kernel that keeps no T x T scores), plus the output head's
  logits; the backward's peak adds to them the larger of the logits' fp32 gradient (at the head) and a block's
  backward temporaries (~0.65 of its saved tensors). With activation checkpointing only block inputs are kept and
  one block is recomputed at a time (its saved tensors + temporaries, ~1.65 of them). tests/models/test_accounting.py
  holds the total within 10% of the peak of live tensors measured on CPU (fp32), with and without checkpointing,
  at micro-batches of 1 and 4. Allocator overhead and fragmentation are not included; budget ~10% on top.
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
    """{'total', 'active', 'non_embedding', 'active_non_embedding', 'embedding', 'matmul_active', 'effective'}."""
    model = _meta_model(cfg)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.tok_emb.weight.numel()
    head = 0 if cfg.tie_embeddings else model.lm_head.weight.numel()
    inactive = 0
    norms = 0
    block_matmul = block_all = 0
    for name, p in model.named_parameters():
        if name.startswith("layers."):
            block_all += p.numel()
        if name.endswith("norm.weight"):
            norms += p.numel()
        elif name.startswith("layers."):
            block_matmul += p.numel()
    for m in model.modules():
        if isinstance(m, MoE):
            routed = m.w_gate.numel() + m.w_up.numel() + m.w_down.numel()
            inactive += routed * (cfg.num_experts - cfg.num_experts_per_tok) // cfg.num_experts
    active = total - inactive
    repeats = cfg.share_blocks - 1  # extra passes through every stored block
    return {
        "total": total,
        "active": active,
        "non_embedding": total - embedding - head,
        "active_non_embedding": active - embedding - head,
        "embedding": embedding,
        # every active weight that multiplies an activation, the output head included even when tied
        "matmul_active": active - embedding - head - norms + cfg.vocab_size * cfg.dim
        + repeats * (block_matmul - inactive),
        "effective": total + repeats * block_all,
    }


def attention_flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training FLOPs per token of QK^T and AV: 12 * L * H * K * T (full T x T, see module docstring)."""
    T = seq_len or cfg.max_seq_len
    return 12 * cfg.depth * cfg.num_heads * cfg.head_dim * T


def flops_per_token(cfg: ModelConfig, seq_len: int | None = None) -> int:
    """Training (forward + backward) FLOPs per token: 6 * N_matmul + 12 * L * H * K * T."""
    return 6 * count_params(cfg)["matmul_active"] + attention_flops_per_token(cfg, seq_len)


def memory_estimate(
    cfg: ModelConfig,
    batch_size: int,
    seq_len: int | None = None,
    precision: Literal["fp32", "bf16-mixed", "bf16-true"] = "bf16-mixed",
    activation_checkpointing: bool = False,
    num_params: int = 0,
) -> dict[str, int]:
    """Peak training memory in bytes of one step on a micro-batch of `batch_size` sequences (module docstring):
    weights, grads, optimizer, optimizer_step (temporaries), activations (at the backward's peak) and total.
    `num_params`: count_params(cfg)["total"] when the caller has it (a planner scanning micro-batches)."""
    T = seq_len or cfg.max_seq_len
    n = num_params or count_params(cfg)["total"]
    w_bytes = 4 if precision in ("fp32", "bf16-mixed") else 2
    weights = n * w_bytes
    grads = n * w_bytes
    optimizer = n * 8 + (n * 4 if precision == "bf16-true" else 0)  # exp_avg + exp_avg_sq (+ fp32 master)
    a = 4 if precision == "fp32" else 2  # bytes per saved activation element
    B, D, L, V = batch_size, cfg.dim, cfg.depth, cfg.vocab_size  # every repeat of a shared block saves its own
    # Elements saved per token per layer, fitted to autograd's saved tensors of this implementation
    # (saved_tensors_hooks): two RMSNorms keep input, normalised and output (6D); RoPE keeps q and k before and
    # after rotation, SDPA q/k/v (k, v not expanded for GQA) and output, the output projection its reshaped input
    # (2D + 2 kv); SwiGLU keeps gate, silu(gate), up and their product (4F).
    per_token = 8 * D + 2 * cfg.num_kv_heads * cfg.head_dim
    if cfg.is_moe:
        k, F_ = cfg.num_experts_per_tok, cfg.moe_hidden_dim
        # per assignment: gathered input, expert output before weighting, and the expert's 4F; plus router
        per_token += k * (2 * D + 4 * F_) + 2 * D + 4 * F_ * cfg.num_shared_experts + 6 * cfg.num_experts
        largest = D * max(F_, D)
    else:
        per_token += 4 * cfg.hidden_dim
        largest = D * max(cfg.hidden_dim, D)
    block = B * T * per_token * a
    # output: final norm, logits, and the fp32 log-softmax the loss keeps (+ the fp32 upcast under bf16)
    head = B * T * (3 * D * a + V * (8 if precision == "fp32" else 10))
    head_grad = B * T * V * 4  # the loss's fp32 gradient of the logits, alive beside what the head saved
    if activation_checkpointing:  # block inputs kept; the head first, then one block recomputed at a time
        activations = B * T * L * D * a + max(head + head_grad, block * 165 // 100)
    else:  # every block kept; the head's backward first, then each block's temporaries
        activations = L * block + max(head + head_grad, block * 65 // 100)
    optimizer_step = 3 * 4 * largest
    total = weights + max(grads + activations, grads + optimizer + optimizer_step)
    return {
        "weights": weights,
        "grads": grads,
        "optimizer": optimizer,
        "optimizer_step": optimizer_step,
        "activations": activations,
        "total": total,
    }
