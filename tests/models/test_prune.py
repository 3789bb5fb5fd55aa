"""Pruning: magnitude, Wanda, 2:4, masked recovery, and structured width pruning on real Transformers."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from models.compress.prune import mask_lowest, mask_n_m, masked_training, prunable_weights, prune, sparsity_of
from models.compress.structured import _supports_head_pruning, structured_prune
from models.config import ModelConfig
from models.transformer import Transformer


def tiny(moe: int = 0, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32,
                      num_experts=moe, **kw)
    return Transformer(cfg).eval()


def calib(n: int = 8) -> torch.Tensor:
    return torch.randint(0, 128, (n, 32), generator=torch.Generator().manual_seed(1))


def test_masks_layer_row_and_2_4():
    score = torch.arange(24.0).reshape(3, 8)
    keep = mask_lowest(score, 0.5, per_row=False)
    assert keep.sum() == 12 and keep[2].all() and not keep[0].any()
    keep_row = mask_lowest(score, 0.5, per_row=True)
    assert torch.all(keep_row.sum(-1) == 4)
    s24 = torch.tensor([[4.0, 1.0, 3.0, 2.0, 0.0, 9.0, 8.0, 7.0]])
    assert mask_n_m(s24).tolist() == [[True, False, True, False, False, True, True, False]]


def test_magnitude_wanda_sparse24_on_model():
    for method in ("magnitude", "wanda", "sparse24"):
        m = tiny()
        masks = prune(m, method, 0.5, "wanda", calib_NT=calib())
        assert set(masks) == set(prunable_weights(m))
        assert abs(sparsity_of(m) - 0.5) < 0.01
        for name, w in prunable_weights(m).items():
            if method == "sparse24":
                assert torch.all((w.reshape(-1, 4) != 0).sum(-1) <= 2), name
            if method == "wanda":  # per output row
                assert torch.all((w == 0).sum(-1) == w.shape[-1] // 2), name
        assert m.tok_emb.weight.count_nonzero() == m.tok_emb.weight.numel()  # embeddings stay dense


def test_wanda_keeps_weights_on_high_activation_inputs():
    """A small weight on a feature with large activations outranks a larger weight on a quiet feature."""
    m = tiny()
    with torch.no_grad():
        m.layers[0].attn_norm.weight[:8] = 50.0  # features 0..7 are loud at the input of wq/wk/wv
        m.layers[0].attn.wq.weight[:, :8] *= 0.1
    mw, mm = copy.deepcopy(m), copy.deepcopy(m)
    prune(mw, "wanda", 0.5, calib_NT=calib())
    prune(mm, "magnitude", 0.5, per_row=True)
    loud_kept_wanda = (mw.layers[0].attn.wq.weight[:, :8] != 0).float().mean()
    loud_kept_mag = (mm.layers[0].attn.wq.weight[:, :8] != 0).float().mean()
    assert loud_kept_wanda > 0.8 and loud_kept_mag < 0.2


def test_wanda_needs_calibration():
    with pytest.raises(ValueError, match="wanda"):
        prune(tiny(), "wanda", 0.5)


def test_masked_training_keeps_zeros_zero():
    m = tiny()
    masks = prune(m, "magnitude", 0.5)
    x = calib(4)
    with masked_training(m, masks):
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
        m.train()
        out = m(x[:, :-1], x[:, 1:])
        out.loss.backward()
        opt.step()
    assert abs(sparsity_of(m) - 0.5) < 0.01
    assert "parametrizations" not in "".join(n for n, _ in m.named_parameters())


@torch.no_grad()
def test_structured_mlp_removes_dead_neurons_exactly():
    m = tiny()
    dead = torch.arange(0, 192, 3)[:57]  # 57 of 192 neurons write nothing: 30% -> keep 128 (multiple of 32)
    for block in m.layers:
        block.mlp.w_down.weight[:, dead] = 0.0
    small, info = structured_prune(m, calib(), heads_fraction=0.0, mlp_fraction=0.3)
    assert small.cfg.hidden_dim == 128 and info["hidden_dim"] == [192, 128]
    assert small.layers[0].mlp.w_gate.weight.shape == (128, 64)
    x = calib(2)
    # 57 dead removed, 7 live ones also had to go: outputs are close, not equal
    assert small.num_params() < m.num_params()
    assert torch.isfinite(small(x).logits).all()
    m2 = tiny()
    dead2 = torch.arange(64)  # exactly 64 dead: 192 -> 128 removes only them
    for block in m2.layers:
        block.mlp.w_down.weight[:, dead2] = 0.0
    small2, _ = structured_prune(m2, calib(), heads_fraction=0.0, mlp_fraction=1 / 3)
    torch.testing.assert_close(small2(x).logits, m2(x).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not _supports_head_pruning(), reason="ModelConfig has no head_dim field yet")
@torch.no_grad()
def test_structured_heads_remove_whole_gqa_groups():
    m = tiny()
    for block in m.layers:  # group 1 (kv head 1, query heads 2 and 3) contributes nothing
        block.attn.wo.weight[:, 32:] = 0.0
    small, info = structured_prune(m, calib(), heads_fraction=0.5, mlp_fraction=0.0)
    assert (small.cfg.num_heads, small.cfg.num_kv_heads, small.cfg.head_dim) == (2, 1, 16)
    assert info["kept_groups"] == [[0], [0]]
    x = calib(2)
    torch.testing.assert_close(small(x).logits, m(x).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_structured_experts_by_routing_share():
    m = tiny(moe=4, num_experts_per_tok=1)
    for block in m.layers:  # logits l, 0.5 l, -l, -0.5 l: experts 1 and 3 can never win the top-1 routing
        w = block.mlp.router.weight
        w[1], w[2], w[3] = 0.5 * w[0], -w[0], -0.5 * w[0]
    small, info = structured_prune(m, calib(), heads_fraction=0.0, mlp_fraction=0.0, experts_fraction=0.5)
    assert small.cfg.num_experts == 2 and small.layers[0].mlp.w_gate.shape[0] == 2
    assert info["kept_experts"] == [[0, 2], [0, 2]]
    assert info["routing_share"][0][1] == 0.0 and info["routing_share"][0][3] == 0.0
    assert small(calib(2)).logits.shape == (2, 32, 128)


def test_structured_config_round_trips():
    m = tiny()
    small, _ = structured_prune(m, calib(), heads_fraction=0.0, mlp_fraction=0.5)
    cfg2 = ModelConfig.from_dict(small.cfg.to_dict())
    assert dataclasses.asdict(cfg2) == dataclasses.asdict(small.cfg)
