"""Accounting from the config (meta device) against the real module and DeepSpeed's flops profiler."""

from __future__ import annotations

import pytest
import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

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
    assert m32["total"] == m32["weights"] + m32["grads"] + max(m32["activations"],
                                                               m32["optimizer"] + m32["optimizer_step"])
    mixed = memory_estimate(cfg, batch_size=8, seq_len=256, precision="bf16-mixed")
    assert mixed["activations"] < m32["activations"]
    big = memory_estimate(cfg, batch_size=16, seq_len=256, precision="fp32")
    assert 1.9 < big["activations"] / m32["activations"] < 2.1
    ckpt = memory_estimate(cfg, batch_size=8, seq_len=256, precision="fp32", activation_checkpointing=True)
    assert ckpt["activations"] < m32["activations"] / 2


class PeakLiveBytes(TorchDispatchMode):
    """Peak bytes of CPU tensor storages created inside the mode and still alive: what an allocator must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            del self.live[key]
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                st = t.untyped_storage()
                if st.data_ptr() and st.data_ptr() not in self.live:
                    self.live[st.data_ptr()] = (StorageWeakRef(st), st.nbytes())
        self.peak = max(self.peak, sum(nbytes for _, nbytes in self.live.values()))
        return out


PEAK_SHAPES = {
    "dim128x4": ModelConfig(vocab_size=512, dim=128, num_layers=4, num_heads=4, max_seq_len=128),
    "dim64x3-v2048": ModelConfig(vocab_size=2048, dim=64, num_layers=3, num_heads=4, max_seq_len=256),
    "dim256x2-gqa": ModelConfig(vocab_size=512, dim=256, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=128),
}  # fmt: skip


@pytest.mark.parametrize("ckpt", [False, True], ids=["keep", "checkpointed"])
@pytest.mark.parametrize("micro_batch", [1, 4])
@pytest.mark.parametrize("shape", list(PEAK_SHAPES))
def test_memory_estimate_within_10pct_of_measured_peak(shape, micro_batch, ckpt):
    """One training step (forward, backward, the trainer's Muon + AdamW step) on a micro-batch, fp32 on CPU: the
    estimate's total within 10% of the weights plus the peak of live tensors (backward phase, then step phase)."""
    from train.config import TrainConfig
    from train.system import make_optimizer

    cfg = PEAK_SHAPES[shape]
    torch.manual_seed(0)
    model = Transformer(cfg).train()
    model.activation_checkpointing = ckpt
    opt = make_optimizer(model, TrainConfig(), "cpu")
    idx = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.max_seq_len))
    with PeakLiveBytes() as backward_phase:
        model(idx, idx).loss.backward()
    with PeakLiveBytes() as step_phase:
        opt.step()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    measured = weights + max(backward_phase.peak, grads + step_phase.peak)
    est = memory_estimate(cfg, batch_size=micro_batch, seq_len=cfg.max_seq_len, precision="fp32",
                          activation_checkpointing=ckpt)["total"]
    assert 0.9 < measured / est < 1.1, (measured, est)


def test_activation_checkpointing_same_loss_and_grads():
    """Recomputing blocks in the backward changes memory, not the numbers."""
    cfg = PEAK_SHAPES["dim128x4"]
    idx = torch.randint(0, cfg.vocab_size, (2, 64))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = Transformer(cfg).train()
        model.activation_checkpointing = ckpt
        loss = model(idx, idx).loss
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_table_lists_every_preset():
    from models.presets import format_table

    table = format_table()
    for name in list_presets():
        assert f"\n{name} " in table
