"""Mixture-of-experts MLP: fp32 router, dropless sorted dispatch, grouped SwiGLU experts, scatter-add combine.

Design and invariants
- Router (Mixtral convention, as transformers and llama.cpp implement it): logits = x @ W_r^T in fp32 (autocast
  off), softmax over all E experts, top-k, and the k kept weights renormalised to sum to 1.
- Auxiliary losses are returned with the output so `Transformer.forward` adds them into `ModelOutput.loss`; the
  training loop never collects them by hand (OLMo-core's arrangement):
  * Switch load balance  `coef * E * sum_e f_e * P_e`, f_e = share of the N*k assignments that went to expert e,
    P_e = mean router probability of e. Uniform probabilities give exactly `coef` whatever the assignment.
    (HF Mixtral's `load_balancing_loss_func` is k times this, summed over layers instead of averaged.)
  * router z-loss  `coef * mean_n logsumexp(logits_n)^2` (ST-MoE), keeping router logits small in bf16.
- Dropless dispatch: every (token, expert) assignment is computed; none is dropped for capacity. Assignments are
  sorted by expert so each expert's tokens are contiguous, the experts run as one grouped matmul over those
  segments (`torch._grouped_mm` where the build supports it, else one matmul per segment), and outputs are
  weighted and scatter-added back to their tokens with `index_add_`.
- Experts are stored as 3-D weights, (E, out, in) like a stack of nn.Linear weights, so every row is `dim` or
  `moe_hidden_dim` long (GGUF-blockable) and HF Mixtral's per-expert weights map one to one.
- `impl="loop"` is the plain reference (for each expert: mask, gather, compute, accumulate); tests hold the
  grouped path to it.

Shape legend: N tokens (B*T), D model dim, F expert hidden dim, E experts, k experts per token,
A = N*k assignments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.layers import SwiGLU


def _grouped_mm_ok(x: torch.Tensor) -> bool:
    """torch._grouped_mm is a private op: CPU (fp32/bf16) in recent builds, CUDA only bf16 on sm90+."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if torch.compiler.is_compiling() and x.dtype != torch.bfloat16:
        return False  # its meta (fake-tensor) kernel only accepts bf16, although CPU eager runs fp32
    if x.device.type == "cpu":
        return x.dtype in (torch.float32, torch.bfloat16)
    if x.device.type == "cuda":
        return x.dtype == torch.bfloat16 and torch.cuda.get_device_capability(x.device)[0] >= 9
    return False


def grouped_linear(x_AI: torch.Tensor, w_EOI: torch.Tensor, counts_E: torch.Tensor) -> torch.Tensor:
    """Rows of x sorted by expert (counts_E of each, in order) times that expert's weight^T: (A, I) -> (A, O).

    Under autocast both operands are cast to the autocast dtype by hand (the private op has no autocast rule).
    """
    dev = x_AI.device.type
    if torch.is_autocast_enabled(dev):
        x_AI = x_AI.to(torch.get_autocast_dtype(dev))
    w_EOI = w_EOI.to(x_AI.dtype)
    if _grouped_mm_ok(x_AI):
        offs_E = counts_E.cumsum(0).to(torch.int32)
        return torch._grouped_mm(x_AI, w_EOI.transpose(1, 2), offs=offs_E)
    segments = x_AI.split(counts_E.tolist())
    return torch.cat([seg @ w_EOI[e].t() for e, seg in enumerate(segments)], dim=0)


class MoE(nn.Module):
    """Top-k routed SwiGLU experts (+ optional always-on shared experts)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        E, D, F_ = cfg.num_experts, cfg.dim, cfg.moe_hidden_dim
        self.num_experts, self.top_k, self.impl = E, cfg.num_experts_per_tok, cfg.moe_impl
        self.aux_coef, self.z_coef = cfg.moe_aux_loss_coef, cfg.moe_z_loss_coef
        self.router = nn.Linear(D, E, bias=False)
        self.w_gate = nn.Parameter(torch.empty(E, F_, D))
        self.w_up = nn.Parameter(torch.empty(E, F_, D))
        self.w_down = nn.Parameter(torch.empty(E, D, F_))
        for w in (self.w_gate, self.w_up, self.w_down):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # same as nn.Linear; Transformer re-inits anyway
        self.shared = SwiGLU(D, F_ * cfg.num_shared_experts) if cfg.num_shared_experts else None
        self.register_buffer("last_counts_E", torch.zeros(E, dtype=torch.long), persistent=False)

    def route(self, x_ND: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (top-k weights N,k fp32 renormalised, top-k expert ids N,k, router probs N,E, router logits N,E)."""
        with torch.autocast(device_type=x_ND.device.type, enabled=False):
            logits_NE = F.linear(x_ND.float(), self.router.weight.float())
        probs_NE = logits_NE.softmax(dim=-1)
        w_Nk, idx_Nk = probs_NE.topk(self.top_k, dim=-1)
        w_Nk = w_Nk / w_Nk.sum(dim=-1, keepdim=True)
        return w_Nk, idx_Nk, probs_NE, logits_NE

    def _expert(self, x_MD: torch.Tensor, e: int) -> torch.Tensor:
        dt = x_MD.dtype
        h_MF = F.silu(x_MD @ self.w_gate[e].to(dt).t()) * (x_MD @ self.w_up[e].to(dt).t())
        return h_MF @ self.w_down[e].to(dt).t()

    def _loop(self, x_ND: torch.Tensor, w_Nk: torch.Tensor, idx_Nk: torch.Tensor) -> torch.Tensor:
        y_ND = torch.zeros_like(x_ND)
        for e in range(self.num_experts):
            tok_M, slot_M = torch.where(idx_Nk == e)
            if tok_M.numel():
                out_MD = self._expert(x_ND[tok_M], e) * w_Nk[tok_M, slot_M, None].to(x_ND.dtype)
                y_ND = y_ND.index_add(0, tok_M, out_MD)
        return y_ND

    def _grouped(
        self, x_ND: torch.Tensor, w_Nk: torch.Tensor, idx_Nk: torch.Tensor, counts_E: torch.Tensor
    ) -> torch.Tensor:
        k = self.top_k
        order_A = idx_Nk.reshape(-1).argsort(stable=True)  # assignments sorted by expert id
        tok_A = order_A // k  # the token each sorted assignment came from
        x_AD = x_ND[tok_A]
        h_AF = F.silu(grouped_linear(x_AD, self.w_gate, counts_E)) * grouped_linear(x_AD, self.w_up, counts_E)
        y_AD = grouped_linear(h_AF, self.w_down, counts_E)
        y_AD = y_AD * w_Nk.reshape(-1)[order_A, None].to(y_AD.dtype)
        return torch.zeros_like(x_ND).index_add_(0, tok_A, y_AD.to(x_ND.dtype))  # scatter-add combine

    def forward(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (output B,T,D, auxiliary loss scalar fp32 = balance + z-loss, already weighted)."""
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        w_Nk, idx_Nk, probs_NE, logits_NE = self.route(x_ND)
        flat_A = idx_Nk.reshape(-1)  # static-shape count (bincount's output size is data-dependent)
        counts_E = torch.zeros(self.num_experts, dtype=torch.long, device=x_BTD.device)
        counts_E = counts_E.scatter_add_(0, flat_A, torch.ones_like(flat_A))
        self.last_counts_E = counts_E.detach()
        if self.impl == "loop":
            y_ND = self._loop(x_ND, w_Nk, idx_Nk)
        else:
            y_ND = self._grouped(x_ND, w_Nk, idx_Nk, counts_E)
        if self.shared is not None:
            y_ND = y_ND + self.shared(x_ND)
        frac_E = counts_E.float() / idx_Nk.numel()
        balance = self.num_experts * (frac_E * probs_NE.mean(dim=0)).sum()
        z = torch.logsumexp(logits_NE, dim=-1).pow(2).mean()
        aux = self.aux_coef * balance + self.z_coef * z
        return y_ND.view(B, T, D), aux
