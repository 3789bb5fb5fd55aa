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


def newton_schulz(g: torch.Tensor, steps: int = NS_STEPS, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalise each trailing matrix of g (..., A, B): U S' V^T with S' ~ 1, in bf16."""
    a, b, c = NS_COEFFICIENTS
    x = g.bfloat16()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        if x.dim() == 2:  # addmm, as torch.optim.Muon, so the two agree bit for bit
            gram = x @ x.T
            x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
        else:
            gram = x @ x.mT
            x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.mT if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with kind="muon", AdamW for groups with kind="adamw"; per-group lr and weight_decay."""

    def __init__(self, groups: Iterable[dict[str, Any]], *, betas: tuple[float, float] = (0.9, 0.95),
                 eps: float = 1e-8, momentum: float = 0.95, nesterov: bool = True) -> None:
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
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if group["kind"] == "muon":
                    if not state:
                        state["momentum_buffer"] = torch.zeros_like(p)
                    buf = state["momentum_buffer"]
                    buf.lerp_(g, 1 - group["momentum"])
                    update = g.lerp(buf, group["momentum"]) if group["nesterov"] else buf
                    rows, cols = p.shape[-2], p.shape[-1]
                    p.mul_(1 - lr * wd)
                    p.add_(newton_schulz(update).to(p.dtype), alpha=-lr * math.sqrt(max(1.0, rows / cols)))
                else:
                    if not state:
                        state["step"] = torch.zeros((), dtype=torch.float32)
                        state["exp_avg"] = torch.zeros_like(p)
                        state["exp_avg_sq"] = torch.zeros_like(p)
                    beta1, beta2 = group["betas"]
                    state["step"] += 1
                    step = float(state["step"])
                    state["exp_avg"].lerp_(g, 1 - beta1)
                    state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                    p.mul_(1 - lr * wd)
                    denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
                    p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**step))
        return loss


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
