"""The optimizer: Muon on the hidden matrices, AdamW on everything else, in one `torch.optim.Optimizer`.

Why Muon: orthogonalised momentum updates (Jordan et al. 2024, "Muon"; Liu et al. 2025, "Muon is scalable")
train the weight matrices of a transformer faster than AdamW per token. Measured here at 1e13 FLOPs on
TinyStories (LOG.md, session 3): with decoupled weight decay on the matrices, 3% lower held-out bits per byte
than AdamW at the same budget; without weight decay it only memorised faster.

Design and invariants
- One optimizer, so Lightning's automatic optimisation, one LambdaLR (it scales every group's own peak lr),
  gradient clipping and checkpoints (plain `state_dict`, exact resume) work unchanged. Groups carry
  `kind` = "muon" or "adamw".
- Muon takes every >= 2-D weight inside the transformer blocks (attention, MLP, router; 3-D expert weights as a
  batch of matrices). The token embedding, the output head (tied or not) and all 1-D parameters stay on AdamW,
  as in the reference recipe: they are lookups / a classifier, not hidden linear maps.
- The Muon step follows `torch.optim.Muon` (torch >= 2.9) exactly: momentum buffer lerp, Nesterov, five
  Newton-Schulz iterations in bf16 with Keller Jordan's coefficients, decoupled weight decay lr * wd, step
  scaled by sqrt(max(1, rows / cols)). Tested equal to torch's Muon + AdamW. It is written out here because
  torch's Muon refuses 3-D tensors and needs torch >= 2.9, while the project supports torch >= 2.4.
- Cost: the update runs as foreach ops over each group (one kernel launch per op, not per tensor); Newton-Schulz
  runs in bf16 (3x faster than fp32 on an AMX CPU) and, on CUDA, batched per distinct matrix shape (q/k/v/o and
  the MLP matrices of all layers in one chain); numerically the same steps as the per-matrix loop (LOG.md, session 5).
- Muon needs each matrix whole: sharded strategies (FSDP, DeepSpeed ZeRO) get AdamW (`TrainConfig.optimizer`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7,
                  dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise each trailing matrix of g (..., A, B): U S' V^T with S' ~ 1.

    In bf16 by default, as modded-nanogpt and torch.optim.Muon: the iteration only needs S' within ~[0.5, 1.5], so
    bf16's 8-bit mantissa costs nothing measurable (tests/train/test_optim.py compares it with fp32) and the
    matmuls run at the bf16 rate where the device has one. Leading dimensions are a batch (one baddbmm chain)."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    lead = x.shape[:-2]
    if x.dim() > 3:
        x = x.reshape(-1, *x.shape[-2:])
    for _ in range(steps):
        if x.dim() == 2:  # addmm, as torch.optim.Muon, so the two agree bit for bit
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.reshape(*lead, *x.shape[-2:])
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with kind="muon", AdamW for groups with kind="adamw"; per-group lr and weight_decay."""

    def __init__(self, groups: Iterable[dict[str, Any]], *, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, nesterov: bool = True,
                 batch_newton_schulz: bool | None = None) -> None:
        """batch_newton_schulz: stack same-shape matrices into one batched Newton-Schulz; None = on CUDA only
        (fewer kernel launches there; on CPU a bf16 bmm measured 1.27x slower than the same matmuls one by one)."""
        self.batch_newton_schulz = batch_newton_schulz
        defaults = {"lr": 1e-3, "weight_decay": 0.0, "betas": betas, "eps": eps, "momentum": momentum,
                    "nesterov": nesterov, "kind": "adamw"}
        super().__init__(list(groups), defaults)
        for group in self.param_groups:
            if group["kind"] not in ("muon", "adamw"):
                raise ValueError(f"optimizer group kind: expected 'muon' or 'adamw', got {group['kind']!r}")
            if group["kind"] == "muon" and any(p.dim() < 2 for p in group["params"]):
                raise ValueError("optimizer: Muon groups take matrices (>= 2-D) only")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                (self._muon_step if group["kind"] == "muon" else self._adamw_step)(group, params)
        return loss

    def _muon_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """Momentum with foreach ops over the group, then Newton-Schulz per matrix or batched per distinct shape."""
        lr, wd, mom = group["lr"], group["weight_decay"], group["momentum"]
        grads = [p.grad for p in params]
        for p in params:
            if not self.state[p]:
                self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        bufs = [self.state[p]["momentum_buffer"] for p in params]
        torch._foreach_lerp_(bufs, grads, 1 - mom)
        updates = torch._foreach_lerp(grads, bufs, mom) if group["nesterov"] else bufs
        batch = params[0].is_cuda if self.batch_newton_schulz is None else self.batch_newton_schulz
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, p in enumerate(params):
            by_shape.setdefault(tuple(p.shape) if batch else (i, *p.shape), []).append(i)
        torch._foreach_mul_(params, 1 - lr * wd)
        for idx in by_shape.values():
            rows, cols = params[idx[0]].shape[-2:]
            scale = -lr * math.sqrt(max(1.0, rows / cols))
            if len(idx) == 1:
                ortho = [newton_schulz(updates[idx[0]])]
            else:  # same-shape matrices (q/k/v/o of every layer, ...) in one batched chain of matmuls
                ortho = list(newton_schulz(torch.stack([updates[i] for i in idx])).unbind(0))
            group_params = [params[i] for i in idx]
            torch._foreach_add_(group_params, [o.to(p.dtype) for o, p in zip(ortho, group_params)], alpha=scale)

    def _adamw_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> None:
        """AdamW with foreach ops, bucketed by step count (equal for all unless some parameter skipped steps)."""
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        by_step: dict[float, list[torch.Tensor]] = {}
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.zeros((), dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            by_step.setdefault(float(state["step"]), []).append(p)
        for step, ps in by_step.items():
            grads = [p.grad for p in ps]
            exp_avgs = [self.state[p]["exp_avg"] for p in ps]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in ps]
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            torch._foreach_mul_(ps, 1 - lr * wd)
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, math.sqrt(1 - beta2**step))
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(ps, exp_avgs, denom, value=-lr / (1 - beta1**step))


def muon_param_groups(model: nn.Module, lr: float, weight_decay: float, muon_lr: float,
                      muon_weight_decay: float) -> list[dict[str, Any]]:
    """Hidden matrices (>= 2-D, inside `model.layers`) -> Muon; other >= 2-D (embedding, head) -> AdamW with
    decay; 1-D (norms) -> AdamW without. Tied weights appear once. AdamW groups come first, so group 0's lr
    (what the logs call train/lr) stays the AdamW peak lr the schedule scales."""
    muon, decay, no_decay = [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if p.dim() >= 2 and (name.startswith("layers.") or ".layers." in name):
            muon.append(p)
        else:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "kind": "adamw", "lr": lr, "weight_decay": weight_decay},
              {"params": no_decay, "kind": "adamw", "lr": lr, "weight_decay": 0.0},
              {"params": muon, "kind": "muon", "lr": muon_lr, "weight_decay": muon_weight_decay}]
    return [g for g in groups if g["params"]]
