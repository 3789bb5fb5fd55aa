"""bf16 linear layers that pick the fast GEMM layout on CPUs without native bf16 units.

Why (measured, see LOG notes of the train room): on AVX2-only CPUs (here an AMD EPYC Zen 3), torch's CPU bf16
GEMM converts through fp32 and its speed depends ~2-20x on the operands' memory layout; the fastest is
`A.t() @ B` with both A and B stored with the reduction dimension leading ("TN"). nn.Linear's forward (x @ W^T)
and input gradient (dY @ W) use the slow layouts. `TNLinearFn` computes all three GEMMs of a linear layer
(forward, input grad, weight grad) in the TN layout, paying one transpose copy per operand, which is O(M*K)
against the O(M*K*N) GEMM.

Invariants: the same math as `F.linear` under bf16 autocast (bf16 operands, bf16 output, bias fused by addmm): bitwise equal in tests;
only active while CPU autocast is on, so evaluation/generation outside autocast is untouched; weights stay
fp32 parameters (autocast semantics) and the state dict is unchanged. Shape legend: M rows (tokens), K in, N out.
"""

from __future__ import annotations

import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class TNLinearFn(torch.autograd.Function):
    """y_MN = x_MK @ w_NK^T with every GEMM (forward and both gradients) in the A^T @ B layout."""

    @staticmethod
    def forward(ctx, x_MK: torch.Tensor, w_NK: torch.Tensor, b_N: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(x_MK, w_NK)
        ctx.has_bias = b_N is not None
        a_MK, w_KN = x_MK.t().contiguous().t(), w_NK.t().contiguous()
        return torch.addmm(b_N, a_MK, w_KN) if b_N is not None else a_MK @ w_KN  # addmm: bias as in F.linear

    @staticmethod
    def backward(ctx, g_MN: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        x_MK, w_NK = ctx.saved_tensors
        g_MN = g_MN.contiguous()
        gx = g_MN.t().contiguous().t() @ w_NK.contiguous() if ctx.needs_input_grad[0] else None
        gw = g_MN.t() @ x_MK.contiguous() if ctx.needs_input_grad[1] else None
        gb = g_MN.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _tn_forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_autocast_enabled("cpu") or torch.get_autocast_dtype("cpu") != torch.bfloat16 or x.is_cuda:
        return F.linear(x, self.weight, self.bias)
    xb = x.to(torch.bfloat16)
    wb = self.weight.to(torch.bfloat16)
    bb = self.bias.to(torch.bfloat16) if self.bias is not None else None
    return TNLinearFn.apply(xb.reshape(-1, xb.shape[-1]), wb, bb).reshape(*xb.shape[:-1], wb.shape[0])


def cpu_has_native_bf16() -> bool:
    """True when the CPU has AVX512-BF16 or AMX (then oneDNN's bf16 GEMMs are fast in every layout)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True  # unknown platform: leave torch's kernels alone
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_tn_linears(model: nn.Module) -> int:
    """Route every nn.Linear of `model` through TNLinearFn under CPU bf16 autocast; returns how many."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Linear) and not getattr(m, "_tn_linear", False):
            m.forward = types.MethodType(_tn_forward, m)  # type: ignore[method-assign]
            m._tn_linear = True  # type: ignore[attr-defined]
            n += 1
    return n
