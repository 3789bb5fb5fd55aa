"""Accounting from the config (meta device) against the real module and DeepSpeed's flops profiler."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, Transformer, get_preset, list_presets
from models.accounting import attention_flops_per_token, count_params, flops_per_token, memory_estimate
from models.moe import MoE

CFGS = {
    "dense": ModelConfig(vocab_size=300, dim=128, num_layers=3, num_heads=4, num_kv_heads=2, max_seq_len=64),
    "untied": ModelConfig(vocab_size=300, dim=128, num_layers=3, num_heads=4, tie_embeddings=False, max_seq_len=64),
    "moe": ModelConfig(vocab_size=300, dim=128, num_layers=3, num_heads=4, max_seq_len=64, num_experts=8,
                       num_experts_per_tok=2, moe_hidden_dim=128, num_shared_experts=1, moe_impl="loop"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CFGS))
def test_counts_match_real_module(name):
    cfg = CFGS[name]
    model = Transformer(cfg)
    p = count_params(cfg)
    assert p["total"] == sum(t.numel() for t in model.parameters()) == model.num_params()
    assert p["non_embedding"] == model.num_params(non_embedding=True)
    # active: count what one token touches by hand
    touched = p["total"]
    for m in model.modules():
        if isinstance(m, MoE):
            per_expert = m.w_gate[0].numel() + m.w_up[0].numel() + m.w_down[0].numel()
            touched -= per_expert * (cfg.num_experts - cfg.num_experts_per_tok)
    assert p["active"] == touched
    if not cfg.is_moe:
        assert p["active"] == p["total"]


def test_non_embedding_independent_of_vocab():
    a = count_params(get_preset("15m"))
    b = count_params(get_preset("15m", vocab_size=4096))
    assert a["non_embedding"] == b["non_embedding"] and a["total"] - b["total"] == (32000 - 4096) * 288


def test_flops_formula_by_hand():
    cfg = CFGS["dense"]
    D, L, F, V, kv = 128, 3, cfg.hidden_dim, 300, 2 * 32
    matmul = L * (D * D + 2 * D * kv + D * D + 3 * D * F) + D * V
    assert count_params(cfg)["matmul_active"] == matmul
    assert flops_per_token(cfg, seq_len=64) == 6 * matmul + 12 * L * 4 * 32 * 64
    assert attention_flops_per_token(cfg, 10) == 12 * L * D * 10


@pytest.mark.parametrize("name", list(CFGS))
def test_flops_within_5pct_of_deepspeed_profiler(name):
    pytest.importorskip("deepspeed", reason="the FLOPs cross-check needs deepspeed (the deepspeed extra)")
    from deepspeed.profiling.flops_profiler import get_model_profile

    cfg = CFGS[name]
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    B, T = 2, 64
    idx = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.no_grad():
        flops, _, _ = get_model_profile(model, args=[idx], print_profile=False, as_string=False, warm_up=0)
    ours_fwd = flops_per_token(cfg, seq_len=T) / 3 * B * T
    assert abs(flops - ours_fwd) / ours_fwd < 0.05, (flops, ours_fwd)


def test_memory_estimate_components():
    cfg = get_preset("8m")
    n = count_params(cfg)["total"]
    m32 = memory_estimate(cfg, batch_size=8, seq_len=256, precision="fp32")
    assert m32["weights"] == m32["grads"] == 4 * n and m32["optimizer"] == 8 * n
    assert m32["total"] == sum(v for k, v in m32.items() if k != "total")
    mixed = memory_estimate(cfg, batch_size=8, seq_len=256, precision="bf16-mixed")
    assert mixed["activations"] < m32["activations"]
    big = memory_estimate(cfg, batch_size=16, seq_len=256, precision="fp32")
    assert 1.9 < big["activations"] / m32["activations"] < 2.1
    ckpt = memory_estimate(cfg, batch_size=8, seq_len=256, precision="fp32", activation_checkpointing=True)
    assert ckpt["activations"] < m32["activations"] / 2


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(num_kv_heads=2), dict(num_experts=8, moe_hidden_dim=64, num_shared_experts=1)],
    ids=["dense", "gqa", "moe"],
)
def test_memory_estimate_close_to_measured_saved_tensors(kw):
    """Activations saved for backward (fp32), measured with saved_tensors_hooks, within 10% of the estimate."""
    cfg = ModelConfig(vocab_size=512, dim=128, num_layers=2, num_heads=4, max_seq_len=128, **kw)
    model = Transformer(cfg)
    idx = torch.randint(0, 512, (2, 128))
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if not isinstance(t, torch.nn.Parameter) and t.untyped_storage().data_ptr() not in seen:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx).loss.backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(v for k, v in seen.items() if k not in params)
    est = memory_estimate(cfg, batch_size=2, seq_len=128, precision="fp32")["activations"]
    assert 0.9 < measured / est < 1.1, (measured, est)


def test_table_lists_every_preset():
    from models.presets import format_table

    table = format_table()
    for name in list_presets():
        assert f"\n{name} " in table
