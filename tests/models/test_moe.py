"""Mixture of experts: grouped dispatch equals the loop reference, router conventions, auxiliary losses."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, Transformer
from models.moe import MoE


def moe_cfg(**kw) -> ModelConfig:
    base = dict(vocab_size=61, dim=64, num_layers=2, num_heads=4, max_seq_len=32, num_experts=8,
                num_experts_per_tok=2, moe_hidden_dim=64)  # fmt: skip
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("shared", [0, 1])
def test_grouped_equals_loop_forward_and_grads(shared):
    torch.manual_seed(0)
    cfg = moe_cfg(num_shared_experts=shared)
    grouped = Transformer(cfg)
    loop = Transformer(moe_cfg(num_shared_experts=shared, moe_impl="loop"))
    loop.load_state_dict(grouped.state_dict())
    idx = torch.randint(0, cfg.vocab_size, (3, 24))
    out_g, out_l = grouped(idx, idx), loop(idx, idx)
    torch.testing.assert_close(out_g.logits, out_l.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_g.loss, out_l.loss)
    out_g.loss.backward()
    out_l.loss.backward()
    for (name, pg), (_, pl) in zip(grouped.named_parameters(), loop.named_parameters()):
        torch.testing.assert_close(pg.grad, pl.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert grouped.moe_stats() == loop.moe_stats()


def test_router_is_mixtral_convention():
    torch.manual_seed(0)
    moe = MoE(moe_cfg(num_experts_per_tok=3))
    x = torch.randn(10, 64)
    w, idx, probs, logits = moe.route(x)
    ref_probs = torch.softmax(x @ moe.router.weight.t(), dim=-1)
    torch.testing.assert_close(probs, ref_probs)
    top, top_idx = ref_probs.topk(3, dim=-1)
    assert torch.equal(idx, top_idx)
    torch.testing.assert_close(w, top / top.sum(-1, keepdim=True))
    torch.testing.assert_close(w.sum(-1), torch.ones(10))


def test_router_scores_in_fp32_under_autocast():
    moe = MoE(moe_cfg())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w, _, probs, logits = moe.route(torch.randn(5, 64))
    assert logits.dtype == probs.dtype == w.dtype == torch.float32


def test_uniform_routing_gives_balance_loss_equal_to_coefficient():
    cfg = moe_cfg(moe_aux_loss_coef=0.01, moe_z_loss_coef=0.0)
    moe = MoE(cfg)
    torch.nn.init.zeros_(moe.router.weight)  # every expert probability exactly 1/E
    _, aux = moe(torch.randn(2, 16, 64))
    assert aux.item() == pytest.approx(0.01, abs=1e-9)
    # and through the model: the mean over MoE layers, added into the loss
    model = Transformer(cfg)
    for block in model.layers:
        torch.nn.init.zeros_(block.mlp.router.weight)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model(idx, idx)
    assert out.aux_loss.item() == pytest.approx(0.01, abs=1e-9)
    torch.testing.assert_close(out.loss, out.ce_loss + out.aux_loss)


def test_z_loss_value():
    cfg = moe_cfg(moe_aux_loss_coef=0.0, moe_z_loss_coef=0.001)
    moe = MoE(cfg)
    torch.nn.init.zeros_(moe.router.weight)  # logits 0 -> logsumexp = log E
    _, aux = moe(torch.randn(1, 4, 64))
    assert aux.item() == pytest.approx(0.001 * torch.log(torch.tensor(8.0)).item() ** 2, rel=1e-6)


def test_imbalanced_routing_is_penalised():
    moe = MoE(moe_cfg(moe_z_loss_coef=0.0))
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # expert 0 wins for inputs with positive sum
        moe.router.weight[1] = 0.5
    _, aux = moe(torch.rand(1, 16, 64))
    assert aux.item() > 0.01 * 2  # k=2 experts take everything: f=(.5,.5), P concentrated


def test_router_receives_gradient_and_counts_sum():
    torch.manual_seed(0)
    cfg = moe_cfg()
    model = Transformer(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model(idx, idx)
    out.ce_loss.backward()  # even without the aux loss the router learns through the top-k weights
    for block in model.layers:
        g = block.mlp.router.weight.grad
        assert g is not None and g.abs().sum() > 0
    stats = model.moe_stats()
    assert list(stats) == ["layer_0", "layer_1"]
    assert all(sum(c) == 2 * 16 * 2 and len(c) == 8 for c in stats.values())


def test_shared_expert_always_on():
    torch.manual_seed(0)
    cfg = moe_cfg(num_shared_experts=2)
    moe = MoE(cfg)
    assert moe.shared is not None and moe.shared.w_up.weight.shape == (128, 64)
    x = torch.randn(1, 5, 64)
    y, _ = moe(x)
    with torch.no_grad():
        moe.shared.w_down.weight.zero_()
    y0, _ = moe(x)
    assert not torch.allclose(y, y0)


def test_dense_model_has_no_moe_stats():
    assert Transformer(moe_cfg(num_experts=0)).moe_stats() == {}


def test_grouped_equals_loop_under_bf16_autocast():
    torch.manual_seed(0)
    grouped = Transformer(moe_cfg())
    loop = Transformer(moe_cfg(moe_impl="loop"))
    loop.load_state_dict(grouped.state_dict())
    idx = torch.randint(0, 61, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a, b = grouped(idx, idx), loop(idx, idx)
    torch.testing.assert_close(a.logits.float(), b.logits.float(), rtol=0.02, atol=0.02)
    a.loss.backward()
    assert grouped.layers[0].mlp.w_gate.grad is not None
