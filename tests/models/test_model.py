"""ModelConfig validation and round-trips, presets, and the dense transformer's invariants."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import yaml

from models import ModelConfig, Transformer, get_preset, list_presets
from models.accounting import count_params


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32)
    base.update(kw)
    return ModelConfig(**base)


def test_derived_fields_filled_and_roundtrip_json_yaml():
    cfg = ModelConfig(dim=96, num_heads=6)
    assert cfg.num_kv_heads == 6 and cfg.hidden_dim == 256 and cfg.head_dim == 16
    d = cfg.to_dict()
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert ModelConfig.from_dict(yaml.safe_load(yaml.safe_dump(d))) == cfg
    moe = ModelConfig(num_experts=4)
    assert moe.moe_hidden_dim == moe.hidden_dim


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(dim=100), "dim"),
        (dict(dim=64, num_heads=3), "num_heads"),
        (dict(dim=96, num_heads=32), "head_dim"),  # head_dim 3 is odd
        (dict(dim=64, num_heads=3, head_dim=10), "num_heads"),  # 3 * 10 rows: not a multiple of 32
        (dict(num_heads=4, num_kv_heads=3), "num_kv_heads"),
        (dict(hidden_dim=100), "hidden_dim"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(num_layers=-1), "num_layers"),
        (dict(dropout=1.0), "dropout"),
        (dict(num_experts=4, num_experts_per_tok=5), "num_experts_per_tok"),
        (dict(num_experts=4, moe_hidden_dim=48), "moe_hidden_dim"),
        (dict(num_shared_experts=1), "num_shared_experts"),
        (dict(moe_impl="fast"), "moe_impl"),
    ],
)
def test_validation_names_the_field(kw, field):
    """Ranges are checked by ModelConfig; Literal choices (moe_impl) by the one typed loader (launch/loader.py)."""
    if field == "moe_impl":
        from launch.loader import build_dataclass

        with pytest.raises(Exception, match=r"^model\.moe_impl: must be one of .*got 'fast'"):
            build_dataclass(ModelConfig, kw, "model")
        return
    with pytest.raises(ValueError, match=rf"^{field}: .*got"):
        ModelConfig(**kw)


def test_unknown_key_rejected():
    with pytest.raises(ValueError, match="^n_layer: unknown"):
        ModelConfig.from_dict({"n_layer": 3})


def test_vocab_size_not_constrained_to_32():
    assert ModelConfig(vocab_size=4099).vocab_size == 4099


def test_every_preset_builds_and_row_lengths_are_gguf_blockable():
    assert len(list_presets()) >= 11
    for name in list_presets():
        cfg = get_preset(name)
        with torch.device("meta"):
            model = Transformer(cfg)
        for pname, p in model.named_parameters():
            if p.dim() >= 2:
                assert p.shape[-1] % 32 == 0, (name, pname, tuple(p.shape))
        total = count_params(cfg)["total"]
        label = name.split("-")[-2] if cfg.is_moe else name  # moe-20m-a8m -> 20m
        expect = float(label.rstrip("m")) * 1e6
        assert abs(total - expect) / expect < 0.15, (name, total)


def test_small_presets_run_forward():
    for name in ("0.3m", "moe-2m-a1m"):
        cfg = get_preset(name)
        model = Transformer(cfg)
        out = model(torch.randint(0, cfg.vocab_size, (1, 16)), torch.randint(0, cfg.vocab_size, (1, 16)))
        assert torch.isfinite(out.loss)


def test_preset_overrides_validate_and_copy():
    cfg = get_preset("15m", vocab_size=4096)
    assert cfg.vocab_size == 4096 and get_preset("15m").vocab_size == 32000
    assert dataclasses.replace(get_preset("1m"), max_seq_len=128).max_seq_len == 128
    assert get_preset("8m", dim=512).hidden_dim == 1376  # derived fields re-derived after overrides
    with pytest.raises(ValueError, match="^preset: unknown"):
        get_preset("7b")


def test_llama2c_shapes():
    for name, (dim, layers, heads) in {"15m": (288, 6, 6), "42m": (512, 8, 8), "110m": (768, 12, 12)}.items():
        cfg = get_preset(name)
        assert (cfg.dim, cfg.num_layers, cfg.num_heads) == (dim, layers, heads)


@pytest.mark.parametrize("moe", [False, True])
def test_causality(moe):
    torch.manual_seed(0)
    cfg = tiny(num_experts=4 if moe else 0, moe_hidden_dim=64 if moe else 0)
    model = Transformer(cfg).eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    logits = model(idx).logits
    idx2 = idx.clone()
    idx2[:, 12:] = torch.randint(0, cfg.vocab_size, (2, 8))
    logits2 = model(idx2).logits
    torch.testing.assert_close(logits[:, :12], logits2[:, :12], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(logits[:, 12:], logits2[:, 12:])


def test_loss_matches_cross_entropy_and_ignore_index():
    torch.manual_seed(0)
    cfg = tiny()
    model = Transformer(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 10))
    tgt = torch.randint(0, cfg.vocab_size, (2, 10))
    tgt[0, :5] = -100
    out = model(idx, tgt)
    keep = tgt != -100
    ref = torch.nn.functional.cross_entropy(out.logits[keep], tgt[keep])
    torch.testing.assert_close(out.ce_loss, ref)
    assert out.aux_loss.item() == 0.0 and out.loss is not None
    assert model(idx).loss is None
    # an untrained model predicts about uniformly
    assert abs(model(idx, torch.randint(0, cfg.vocab_size, (2, 10))).ce_loss.item() - math.log(97)) < 0.3


def test_tied_and_untied_param_counts():
    tied, untied = Transformer(tiny()), Transformer(tiny(tie_embeddings=False))
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_params() - tied.num_params() == 97 * 64
    assert tied.num_params(non_embedding=True) == untied.num_params(non_embedding=True)


def test_scaled_residual_init():
    torch.manual_seed(0)
    cfg = tiny(dim=256, num_layers=8, num_heads=4, num_kv_heads=4)
    model = Transformer(cfg)
    wq, wo = model.layers[0].attn.wq.weight, model.layers[0].attn.wo.weight
    assert abs(wq.std().item() - 0.02) < 0.002
    assert abs(wo.std().item() - 0.02 / math.sqrt(16)) < 0.001
    assert torch.all(model.layers[0].attn_norm.weight == 1)


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Transformer(tiny(num_kv_heads=2)).eval()
    mha = Transformer(tiny(num_kv_heads=4)).eval()
    sd = gqa.state_dict()
    K = 16
    for i in range(2):
        for w in ("wk", "wv"):
            wt = sd[f"layers.{i}.attn.{w}.weight"].view(2, K, 64)
            sd[f"layers.{i}.attn.{w}.weight"] = wt.repeat_interleave(2, dim=0).reshape(4 * K, 64)
    mha.load_state_dict(sd)
    idx = torch.randint(0, 97, (2, 12))
    torch.testing.assert_close(gqa(idx).logits, mha(idx).logits, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_trains():
    torch.manual_seed(0)
    cfg = tiny(num_experts=4, moe_hidden_dim=64)
    model = Transformer(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(idx, idx)
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny(dim=32, num_heads=2, num_kv_heads=1, num_layers=1)
    model = Transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, cfg.vocab_size, (2, 17))
    for _ in range(40):
        loss = model(idx[:, :-1], idx[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5


def test_too_long_sequence_rejected():
    model = Transformer(tiny())
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_load_config_from_name_yaml_and_folder(tmp_path):
    from models import load_config, save_model_dir

    assert load_config("8m") == get_preset("8m")
    (tmp_path / "run.yaml").write_text("model:\n  preset: 1m\n  vocab_size: 2048\ntrain: {}\n")
    assert load_config(tmp_path / "run.yaml") == get_preset("1m", vocab_size=2048)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(tiny().to_dict()))
    assert load_config(str(tmp_path / "m.yaml"), num_layers=3) == tiny(num_layers=3)
    save_model_dir(tmp_path / "dir", Transformer(tiny()))
    assert load_config(tmp_path / "dir") == tiny()
    with pytest.raises(ValueError, match="neither a preset"):
        load_config("no-such-thing")
    (tmp_path / "bad.yaml").write_text("model:\n  dim: 100\n")
    with pytest.raises(ValueError, match="^dim:"):
        load_config(tmp_path / "bad.yaml")


def _unfused(model: Transformer) -> list:
    """A no-op forward hook on every projection: `models.layers.fusable` then runs them one by one."""
    hooks = []
    for block in model.layers:
        for lin in (block.attn.wq, block.attn.wk, block.attn.wv, block.mlp.w_gate, block.mlp.w_up):
            hooks.append(lin.register_forward_hook(lambda m, i, o: None))
    return hooks


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_fused_projections_equal_separate_ones_forward_and_backward(kv_heads, monkeypatch):
    """One q/k/v matmul and one gate/up matmul (the CUDA default, forced here on CPU) give the separate modules'
    logits and gradients."""
    from models import layers
    from models.layers import fusable

    monkeypatch.setattr(layers, "FUSE_ON_CPU", True)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=kv_heads, max_seq_len=32)
    fused = Transformer(cfg)
    ref = Transformer(cfg)
    ref.load_state_dict(fused.state_dict())
    hooks = _unfused(ref)
    assert fusable(fused.layers[0].attn.wq, fused.layers[0].attn.wk) and not fusable(ref.layers[0].attn.wq)
    x = torch.randint(0, 128, (3, 17))
    out_f, out_r = fused(x[:, :-1], x[:, 1:]), ref(x[:, :-1], x[:, 1:])
    torch.testing.assert_close(out_f.logits, out_r.logits, rtol=1e-5, atol=1e-5)
    out_f.loss.backward()
    out_r.loss.backward()
    for (name, a), b in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    for h in hooks:
        h.remove()
    assert fusable(ref.layers[0].attn.wq)


def test_fused_projections_keep_the_llama_state_dict():
    """The state dict keeps one weight per projection (HF/GGUF mappings, pruning and quantization rely on it) and
    round-trips through a fresh model bit for bit."""
    cfg = ModelConfig(vocab_size=128, dim=64, num_layers=1, num_heads=4, num_kv_heads=2, max_seq_len=32)
    model = Transformer(cfg)
    sd = model.state_dict()
    for key, shape in (("attn.wq.weight", (64, 64)), ("attn.wk.weight", (32, 64)), ("attn.wv.weight", (32, 64)),
                       ("mlp.w_gate.weight", (cfg.hidden_dim, 64)), ("mlp.w_up.weight", (cfg.hidden_dim, 64))):
        assert tuple(sd[f"layers.0.{key}"].shape) == shape
    assert not any("qkv" in k or "gate_up" in k for k in sd)
    other = Transformer(cfg)
    other.load_state_dict(sd)
    x = torch.randint(0, 128, (2, 16))
    assert torch.equal(model(x).logits, other(x).logits)
