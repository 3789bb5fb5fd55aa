"""Unstructured and semi-structured pruning: magnitude, Wanda (Sun et al. 2023) and 2:4.

Design and invariants
- Only the weights of the transformer blocks are pruned: every nn.Linear inside a block except the MoE
  router, and the 3-D expert weights. Embeddings, the output head and norms stay dense (they are a
  small share of a block's FLOPs and pruning them costs far more quality).
- Scores: magnitude |W_ij|; Wanda |W_ij| * ||X_j||_2, with ||X_j|| the L2 norm of input feature j over
  the calibration tokens, compared *within each output row* (Wanda's key finding: per-output comparison
  groups, no weight update). Magnitude compares within the whole layer by default (the usual baseline),
  or per row.
- 2:4: in every run of 4 consecutive inputs of a row, the 2 lowest scores are zeroed (NVIDIA's sparse
  tensor-core pattern), scored by magnitude or Wanda.
- Wanda needs per-layer input statistics, gathered sequentially (`calibration.run_sequential`): block i
  is scored with inputs produced by the already-pruned blocks 0..i-1. 3-D expert weights, which no hook
  sees, are scored by magnitude per row.
- The pruning masks are returned so that recovery training can keep the zeros zero (`masked_training`).

Shape legend: O output rows, I input columns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from models.compress.calibration import InputStats, calibration_stages, find_blocks, is_router, run_sequential

PruneMethod = Literal["magnitude", "wanda", "sparse24"]


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight for every >= 2-D parameter inside the transformer blocks except the router."""
    blocks_name, _ = find_blocks(model)
    return {
        n: p
        for n, p in model.named_parameters()
        if n.startswith(blocks_name + ".") and p.ndim >= 2 and not is_router(n, None)
    }


def mask_lowest(score: torch.Tensor, sparsity: float, per_row: bool) -> torch.Tensor:
    """Boolean keep-mask zeroing the `sparsity` fraction of lowest scores, per last-dim row or overall."""
    if per_row:
        k = int(score.shape[-1] * sparsity)
        if k == 0:
            return torch.ones_like(score, dtype=torch.bool)
        idx = torch.topk(score, k, dim=-1, largest=False).indices
        keep = torch.ones_like(score, dtype=torch.bool)
        return keep.scatter_(-1, idx, False)
    k = int(score.numel() * sparsity)
    if k == 0:
        return torch.ones_like(score, dtype=torch.bool)
    flat = score.flatten()
    idx = torch.topk(flat, k, largest=False).indices
    keep = torch.ones_like(flat, dtype=torch.bool)
    return keep.scatter_(0, idx, False).reshape(score.shape)


def mask_n_m(score: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Keep the n highest of every m consecutive scores along the last dim (2:4 by default)."""
    if score.shape[-1] % m:
        raise ValueError(f"sparse24: row length must be a multiple of {m}, got {score.shape[-1]}")
    s = score.reshape(-1, m)
    idx = torch.topk(s, m - n, dim=-1, largest=False).indices
    keep = torch.ones_like(s, dtype=torch.bool).scatter_(-1, idx, False)
    return keep.reshape(score.shape)


@torch.no_grad()
def prune(
    model: nn.Module,
    method: PruneMethod,
    sparsity: float = 0.5,
    metric: Literal["magnitude", "wanda"] = "wanda",
    per_row: bool = False,
    calib_NT: torch.Tensor | None = None,
    batch_size: int = 8,
) -> dict[str, torch.Tensor]:
    """Prune the model in place; returns the keep-masks by parameter name.

    method: 'magnitude' (per layer, or per row with per_row), 'wanda' (per row, needs calib_NT),
    'sparse24' (2:4 with scores from `metric`; 'wanda' needs calib_NT).
    """
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity: must be in [0, 1), got {sparsity}")
    weights = prunable_weights(model)
    masks: dict[str, torch.Tensor] = {}
    use_wanda = method == "wanda" or (method == "sparse24" and metric == "wanda")

    def mask_for(w: torch.Tensor, act_norm_I: torch.Tensor | None) -> torch.Tensor:
        score = w.abs().float()
        if act_norm_I is not None:
            score = score * act_norm_I[None, :]
        if method == "sparse24":
            return mask_n_m(score)
        return mask_lowest(score, sparsity, per_row=per_row or method == "wanda")

    def apply(name: str, act_norm_I: torch.Tensor | None) -> None:
        w = weights[name]
        masks[name] = mask_for(w.data, act_norm_I)
        w.data.mul_(masks[name])

    if use_wanda:
        if calib_NT is None:
            raise ValueError(f"{method}: Wanda scores need calibration tokens, got None")

        def on_stage(stage) -> None:
            st: dict[str, InputStats] = stage.stats
            for mod_name, _lin in stage.linears.items():
                apply(mod_name + ".weight", st[mod_name].col_norm_I)

        run_sequential(model, calib_NT, calibration_stages(model, include_head=False), on_stage, batch_size,
                       desc=f"{method} calibration")
    for name in weights:
        if name not in masks:  # magnitude, and 3-D expert weights that no hook sees
            apply(name, None)
    return masks


def sparsity_of(model: nn.Module) -> float:
    """Fraction of exact zeros among the prunable (block) weights."""
    ws = prunable_weights(model).values()
    total = sum(w.numel() for w in ws)
    return sum(int((w == 0).sum()) for w in ws) / max(total, 1)


class _Mask(nn.Module):
    def __init__(self, keep: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("keep", keep)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.keep.to(w.dtype)


@contextlib.contextmanager
def masked_training(model: nn.Module, masks: dict[str, torch.Tensor]) -> Iterator[nn.Module]:
    """Inside the block, every masked weight is computed as original * mask (zeros stay zero and get no
    gradient); on exit the masked values are baked back into plain parameters."""
    registered = []
    for name, keep in masks.items():
        mod_name, _, pname = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        parametrize.register_parametrization(mod, pname, _Mask(keep.to(getattr(mod, pname).device)))
        registered.append((mod, pname))
    try:
        yield model
    finally:
        for mod, pname in registered:
            parametrize.remove_parametrizations(mod, pname, leave_parametrized=True)
