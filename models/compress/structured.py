"""Structured width pruning: whole GQA groups of attention heads, MLP neurons and MoE experts.

Design and invariants
- The result is a *smaller dense model*: tensors are physically sliced and a new ModelConfig (fewer
  heads / a narrower hidden_dim / fewer experts) is written, so the speed-up needs no sparse kernels and
  the pruned checkpoint is an ordinary model dir that `models.load_model` and every exporter read.
- Attention heads go by whole GQA groups: key/value head g and the num_heads/num_kv_heads query heads that
  share it (query head h reads kv head h // rep). head_dim is kept, so the config needs an explicit
  `head_dim` field; the group-size ratio is kept, so the attention still tiles.
- Importance from one calibration forward (hooks on the layers' inputs), Wanda-style "activation x weight":
  * MLP neuron j: ||X_j|| * ||W_down[:, j]|| (input norm of the down projection times its column norm):
    the size of what the neuron writes into the residual stream.
  * head group: the same quantity summed over the output-projection columns of its query heads.
  * MoE expert: its share of the calibration tokens' routing assignments (the router's own verdict).
- The same number is removed in every layer (configs have one width per kind); kept widths are rounded so
  rows stay multiples of 32 (GGUF blocks): hidden_dim to a multiple of 32, heads so num_heads * head_dim is.
- Recovery training (optional, the caller's `recover`) follows in the runner; this module only cuts.

Shape legend: H query heads, G kv groups, K head dim, F MLP hidden, E experts, D model dim.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from models.compress.calibration import InputStats
from models.config import ModelConfig
from models.moe import MoE
from models.transformer import Transformer


def _keep_count(n: int, fraction: float, multiple: int = 1, minimum: int = 1) -> int:
    keep = round(n * (1.0 - fraction) / multiple) * multiple
    return int(min(n, max(minimum, keep)))


def _supports_head_pruning() -> bool:
    return "head_dim" in {f.name for f in dataclasses.fields(ModelConfig)}


def _check_fractions(cfg: ModelConfig, heads_fraction: float, mlp_fraction: float,
                     experts_fraction: float) -> tuple[float, float, list[str]]:
    """Validate the fractions; zero those this model/config cannot honour, with a note saying why."""
    for name, f in (("heads_fraction", heads_fraction), ("mlp_fraction", mlp_fraction),
                    ("experts_fraction", experts_fraction)):
        if not 0.0 <= f < 1.0:
            raise ValueError(f"{name}: must be in [0, 1), got {f}")
    notes: list[str] = []
    if heads_fraction > 0 and not _supports_head_pruning():
        notes.append("heads not pruned: ModelConfig has no head_dim field")
        heads_fraction = 0.0
    if cfg.is_moe and mlp_fraction > 0:
        notes.append("MoE model: expert widths kept; use experts_fraction")
        mlp_fraction = 0.0
    return heads_fraction, mlp_fraction, notes


def _calibrate(model: Transformer, calib_NT: torch.Tensor,
               batch_size: int) -> tuple[dict[str, InputStats], torch.Tensor]:
    """One calibration forward: input stats of wo and of the dense w_down, and MoE routing counts (L, E)."""
    cfg = model.cfg
    stats: dict[str, InputStats] = {}
    hooks = []
    expert_counts_LE = torch.zeros(cfg.num_layers, max(cfg.num_experts, 1))
    for i, block in enumerate(model.layers):
        targets = {f"{i}.wo": block.attn.wo}
        if not cfg.is_moe:
            targets[f"{i}.w_down"] = block.mlp.w_down
        for key, lin in targets.items():
            stats[key] = InputStats.zeros(lin.in_features)
            hooks.append(lin.register_forward_hook(lambda _m, inp, _o, key=key: stats[key].add(inp[0])))
    was_training = model.training
    model.eval()
    try:
        for b in range(0, calib_NT.shape[0], batch_size):
            model(calib_NT[b : b + batch_size])
            for i, block in enumerate(model.layers):
                if isinstance(block.mlp, MoE):
                    expert_counts_LE[i] += block.mlp.last_counts_E.float().cpu()
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return stats, expert_counts_LE


def _pruned_config(cfg: ModelConfig, heads_fraction: float, mlp_fraction: float,
                   experts_fraction: float) -> ModelConfig:
    """The smaller config: kept widths rounded so rows stay multiples of 32 (GGUF blocks)."""
    H, G, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rep = H // G
    keep_G = G
    if heads_fraction > 0:
        # smallest kept group count >= the target whose query width is a multiple of 32
        keep_G = _keep_count(G, heads_fraction)
        while (keep_G * rep * K) % 32 and keep_G < G:
            keep_G += 1
    keep_F = _keep_count(cfg.hidden_dim, mlp_fraction, multiple=32, minimum=32) if not cfg.is_moe else cfg.hidden_dim
    keep_E = cfg.num_experts
    if cfg.is_moe and experts_fraction > 0:
        keep_E = _keep_count(cfg.num_experts, experts_fraction, minimum=cfg.num_experts_per_tok)

    new_fields = dict(num_heads=keep_G * rep, num_kv_heads=keep_G)
    if _supports_head_pruning():
        new_fields["head_dim"] = K
    if not cfg.is_moe:
        new_fields["hidden_dim"] = keep_F
    else:
        new_fields["num_experts"] = keep_E
    return dataclasses.replace(cfg, **new_fields)


def _sliced_state_dict(model: Transformer, new_cfg: ModelConfig, stats: dict[str, InputStats],
                       expert_counts_LE: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, list]]:
    """Copy of the state dict without the least important groups / neurons / experts, and what was kept."""
    cfg = model.cfg
    G, K = cfg.num_kv_heads, cfg.head_dim
    rep = cfg.num_heads // G
    keep_G, keep_F, keep_E = new_cfg.num_kv_heads, new_cfg.hidden_dim, new_cfg.num_experts
    sd = model.state_dict()
    new_sd = {k: v.clone() for k, v in sd.items()}
    kept: dict[str, list] = {"groups": [], "neurons": [], "experts": []}
    for i, block in enumerate(model.layers):
        p = f"layers.{i}."
        if keep_G < G:
            wo = block.attn.wo.weight.float()  # (D, H*K)
            col_score = stats[f"{i}.wo"].col_norm_I.pow(2) * wo.pow(2).sum(0)
            group_score_G = col_score.reshape(G, rep * K).sum(-1)
            groups = torch.topk(group_score_G, keep_G).indices.sort().values
            q_rows = torch.cat([torch.arange(g * rep * K, (g + 1) * rep * K) for g in groups.tolist()])
            kv_rows = torch.cat([torch.arange(g * K, (g + 1) * K) for g in groups.tolist()])
            new_sd[p + "attn.wq.weight"] = sd[p + "attn.wq.weight"][q_rows].clone()
            new_sd[p + "attn.wk.weight"] = sd[p + "attn.wk.weight"][kv_rows].clone()
            new_sd[p + "attn.wv.weight"] = sd[p + "attn.wv.weight"][kv_rows].clone()
            new_sd[p + "attn.wo.weight"] = sd[p + "attn.wo.weight"][:, q_rows].clone()
            kept["groups"].append(groups.tolist())
        if not cfg.is_moe and keep_F < cfg.hidden_dim:
            wd = block.mlp.w_down.weight.float()  # (D, F)
            score_F = stats[f"{i}.w_down"].col_norm_I * wd.norm(dim=0)
            neurons = torch.topk(score_F, keep_F).indices.sort().values
            new_sd[p + "mlp.w_gate.weight"] = sd[p + "mlp.w_gate.weight"][neurons].clone()
            new_sd[p + "mlp.w_up.weight"] = sd[p + "mlp.w_up.weight"][neurons].clone()
            new_sd[p + "mlp.w_down.weight"] = sd[p + "mlp.w_down.weight"][:, neurons].clone()
            kept["neurons"].append(int(neurons.numel()))
        if cfg.is_moe and keep_E < cfg.num_experts:
            experts = torch.topk(expert_counts_LE[i], keep_E).indices.sort().values
            for w in ("w_gate", "w_up", "w_down"):
                new_sd[p + f"mlp.{w}"] = sd[p + f"mlp.{w}"][experts].clone()
            new_sd[p + "mlp.router.weight"] = sd[p + "mlp.router.weight"][experts].clone()
            kept["experts"].append(experts.tolist())
    return new_sd, kept


@torch.no_grad()
def structured_prune(
    model: Transformer,
    calib_NT: torch.Tensor,
    heads_fraction: float = 0.3,
    mlp_fraction: float = 0.3,
    experts_fraction: float = 0.0,
    batch_size: int = 8,
) -> tuple[Transformer, dict]:
    """Return a new, physically smaller Transformer (and a summary) with the given fractions removed."""
    cfg = model.cfg
    heads_fraction, mlp_fraction, notes = _check_fractions(cfg, heads_fraction, mlp_fraction,
                                                           experts_fraction)
    stats, expert_counts_LE = _calibrate(model, calib_NT, batch_size)
    new_cfg = _pruned_config(cfg, heads_fraction, mlp_fraction, experts_fraction)
    new_model = Transformer(new_cfg).to(next(model.parameters()).device, next(model.parameters()).dtype)
    new_sd, kept = _sliced_state_dict(model, new_cfg, stats, expert_counts_LE)
    new_model.load_state_dict(new_sd)
    share = expert_counts_LE / expert_counts_LE.sum(-1, keepdim=True).clamp_min(1)
    summary = {
        "num_heads": [cfg.num_heads, new_cfg.num_heads],
        "num_kv_heads": [cfg.num_kv_heads, new_cfg.num_kv_heads],
        "hidden_dim": [cfg.hidden_dim, new_cfg.hidden_dim],
        "num_experts": [cfg.num_experts, new_cfg.num_experts],
        "kept_groups": kept["groups"],
        "kept_experts": kept["experts"],
        "routing_share": [[round(float(s), 4) for s in row] for row in share] if cfg.is_moe else [],
        "notes": notes,
        "param_ratio": new_model.num_params() / max(model.num_params(), 1),
    }
    if math.isclose(summary["param_ratio"], 1.0):
        summary["notes"].append("nothing was removed (fractions too small for these widths)")
    return new_model, summary
