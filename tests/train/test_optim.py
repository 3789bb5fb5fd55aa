"""Muon + AdamW (train/optim.py): equal to torch's own Muon and AdamW, the right parameters in each group,
3-D expert weights as batches of matrices, and the config's rules for sharded strategies."""

from __future__ import annotations

import copy

import pytest
import torch

from models import ModelConfig, Transformer
from train import TrainConfig
from train.optim import MuonAdamW, muon_param_groups, newton_schulz
from train.system import make_optimizer

TINY = ModelConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=64, max_seq_len=16)


def _loss(model: Transformer, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 64, (4, 17), generator=g)
    return model(x[:, :-1], x[:, 1:]).loss


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
def test_matches_torch_muon_and_adamw():
    torch.manual_seed(0)
    ours_model = Transformer(TINY)
    ref_model = copy.deepcopy(ours_model)
    ours = MuonAdamW(muon_param_groups(ours_model, 3e-3, 0.3, 0.02, 0.1))
    groups = muon_param_groups(ref_model, 3e-3, 0.3, 0.02, 0.1)
    hidden = [g for g in groups if g["kind"] == "muon"][0]
    ref_opts = [torch.optim.Muon(hidden["params"], lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True),
                torch.optim.AdamW([{"params": g["params"], "weight_decay": g["weight_decay"]}
                                   for g in groups if g["kind"] == "adamw"], lr=3e-3, betas=(0.9, 0.95),
                                  eps=1e-8, foreach=False)]
    for step in range(3):
        for model, opts in ((ours_model, [ours]), (ref_model, ref_opts)):
            for o in opts:
                o.zero_grad()
            _loss(model, step).backward()
            for o in opts:
                o.step()
    for (name, a), b in zip(ours_model.named_parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours_model.layers[0].attn.wq.weight, Transformer(TINY).layers[0].attn.wq.weight)


def test_groups_hidden_matrices_on_muon_rest_on_adamw():
    model = Transformer(TINY)
    groups = muon_param_groups(model, 3e-3, 0.3, 0.02, 0.1)
    by_kind = {(g["kind"], g["weight_decay"]): {id(p) for p in g["params"]} for g in groups}
    muon = by_kind[("muon", 0.1)]
    assert id(model.layers[0].attn.wq.weight) in muon and id(model.layers[1].mlp.w_down.weight) in muon
    assert id(model.tok_emb.weight) in by_kind[("adamw", 0.3)]  # tied with the head: once
    assert id(model.layers[0].attn_norm.weight) in by_kind[("adamw", 0.0)]
    n = sum(len(s) for s in by_kind.values())
    assert n == len({id(p) for p in model.parameters()})
    assert groups[0]["kind"] == "adamw"  # group 0's lr is what the logs report


def test_newton_schulz_batches_3d_and_orthogonalises():
    g = torch.randn(3, 16, 40)
    batched = newton_schulz(g).float()
    for e in range(3):
        torch.testing.assert_close(batched[e], newton_schulz(g[e]).float(), rtol=0.02, atol=0.02)
    s = torch.linalg.svdvals(batched[0])
    assert 0.4 < float(s.min()) and float(s.max()) < 1.6  # singular values pushed towards 1 (S' ~ U(0.5, 1.5))


def test_moe_expert_weights_train_with_muon():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**{**TINY.to_dict(), "num_experts": 4, "moe_hidden_dim": 32}))
    opt = MuonAdamW(muon_param_groups(model, 3e-3, 0.1, 0.02, 0.1))
    muon_ids = {id(p) for g in opt.param_groups if g["kind"] == "muon" for p in g["params"]}
    three_d = [p for p in model.parameters() if p.dim() == 3]
    assert three_d and all(id(p) in muon_ids for p in three_d)
    before = [p.detach().clone() for p in three_d]
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = _loss(model, 0)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, three_d))


def test_config_optimizer_rules():
    assert TrainConfig().resolved_optimizer == "muon"
    assert TrainConfig(strategy="fsdp").resolved_optimizer == "adamw"
    assert TrainConfig(strategy="deepspeed_stage_2").resolved_optimizer == "adamw"
    assert TrainConfig(optimizer="adamw").resolved_optimizer == "adamw"
    with pytest.raises(ValueError, match="optimizer: 'muon' needs whole matrices"):
        TrainConfig(optimizer="muon", strategy="fsdp")
    with pytest.raises(ValueError, match="muon_lr"):
        TrainConfig(muon_lr=0.0)
    assert isinstance(make_optimizer(Transformer(TINY), TrainConfig(), "cpu"), MuonAdamW)
    assert isinstance(make_optimizer(Transformer(TINY), TrainConfig(optimizer="adamw"), "cpu"), torch.optim.AdamW)


@pytest.mark.parametrize("shape", [(64, 64), (96, 32), (32, 160), (4, 48, 64)])
def test_bf16_newton_schulz_matches_fp32(shape):
    """The default bf16 iteration lands where the fp32 one does: same orthogonalised direction (cosine > 0.99)
    and singular values within bf16's rounding of the fp32 ones."""
    torch.manual_seed(0)
    g = torch.randn(*shape)
    b, f = newton_schulz(g).float(), newton_schulz(g, dtype=torch.float32)
    assert f.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(b.flatten(-2), f.flatten(-2), dim=-1)
    assert float(cos.min()) > 0.99
    torch.testing.assert_close(torch.linalg.svdvals(b), torch.linalg.svdvals(f), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("batched", [True, False])
def test_batched_muon_step_equals_one_matrix_at_a_time(batched):
    """Stacking same-shape matrices into one Newton-Schulz batch (the CUDA default) or not, with foreach AdamW,
    gives the per-tensor steps."""
    torch.manual_seed(0)
    model = Transformer(TINY)
    ref = copy.deepcopy(model)
    opt = MuonAdamW(muon_param_groups(model, 3e-3, 0.3, 0.02, 0.1), batch_newton_schulz=batched)
    ref_groups = muon_param_groups(ref, 3e-3, 0.3, 0.02, 0.1)
    ref_state: dict[int, dict] = {}
    for step in range(3):
        for m in (model, ref):
            m.zero_grad()
            _loss(m, step).backward()
        opt.step()
        with torch.no_grad():  # the per-tensor reference of the same update rule
            for g in ref_groups:
                for p in g["params"]:
                    st = ref_state.setdefault(id(p), {})
                    if g["kind"] == "muon":
                        buf = st.setdefault("buf", torch.zeros_like(p))
                        buf.lerp_(p.grad, 0.05)
                        upd = p.grad.lerp(buf, 0.95)
                        p.mul_(1 - g["lr"] * g["weight_decay"])
                        scale = max(1.0, p.shape[-2] / p.shape[-1]) ** 0.5
                        p.add_(newton_schulz(upd).to(p.dtype), alpha=-g["lr"] * scale)
                    else:
                        st["t"] = st.get("t", 0) + 1
                        m1 = st.setdefault("m", torch.zeros_like(p))
                        m2 = st.setdefault("v", torch.zeros_like(p))
                        m1.lerp_(p.grad, 0.1)
                        m2.mul_(0.95).addcmul_(p.grad, p.grad, value=0.05)
                        p.mul_(1 - g["lr"] * g["weight_decay"])
                        denom = (m2.sqrt() / (1 - 0.95 ** st["t"]) ** 0.5).add_(1e-8)
                        p.addcdiv_(m1, denom, value=-g["lr"] / (1 - 0.9 ** st["t"]))
    for (name, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
