"""Block-wise weight sharing (`ModelConfig.share_blocks`): accounting, generation, HF and GGUF exports."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer
from models.accounting import count_params, flops_per_token, memory_estimate

VOCAB = 300


def shared(k: int = 2, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64,
                                init_std=0.1, share_blocks=k), **kw})
    m = Transformer(cfg).eval()
    with torch.no_grad():  # distinct norm gains per block, so a mis-ordered repeat cannot hide
        for n, p in m.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    return m


@pytest.mark.parametrize("kw", [{}, {"num_experts": 4}, {"tie_embeddings": False}])
def test_accounting_counts_unique_params_and_effective_depth(kw):
    m = shared(3, **kw)
    cfg = m.cfg
    c, u = count_params(cfg), count_params(cfg.unshared())
    assert c["total"] == sum(p.numel() for p in m.parameters()) == m.num_params()
    assert c["effective"] == u["total"] == m.unshared().num_params()
    assert c["matmul_active"] == u["matmul_active"] and c["active"] < u["active"]
    assert flops_per_token(cfg) == flops_per_token(cfg.unshared())  # every repeat multiplies again
    a, b = memory_estimate(cfg, 2), memory_estimate(cfg.unshared(), 2)
    assert a["activations"] == b["activations"] and a["weights"] < b["weights"]
    # the planner counts through accounting
    from train.planner.candidates import counts, train_flops_per_token

    assert counts(cfg)["total"] == c["total"] and train_flops_per_token(cfg, 64) == train_flops_per_token(
        cfg.unshared(), 64)


def test_shared_forward_equals_unshared_and_runs_blocks_in_order():
    m = shared(2)
    x = torch.randint(0, VOCAB, (2, 24))
    u = m.unshared()
    assert u.cfg.num_layers == 4 and u.cfg.share_blocks == 1
    assert torch.equal(u.layers[1].attn.wq.weight, m.layers[0].attn.wq.weight)
    assert torch.equal(u.layers[2].attn.wq.weight, m.layers[1].attn.wq.weight)
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits, u(x).logits, rtol=0, atol=0)
        # not the same as running the stored blocks once each
        once = Transformer.from_state_dict(ModelConfig(**{**m.cfg.to_dict(), "share_blocks": 1}), m.state_dict())
        assert (once(x).logits - m(x).logits).abs().max() > 1e-2


def test_generation_uses_one_cache_slot_per_repeat():
    from models.generate import generate
    from models.layers import KVCache

    m = shared(2)
    cache = KVCache(m.cfg, 1, 32, "cpu", torch.float32)
    assert cache.k_LBGSK.shape[0] == 4
    prompt = [[5, 17, 42, 7, 99]]
    out = generate(m, prompt, max_new_tokens=12, temperature=0.0)
    ids = torch.tensor(prompt)
    with torch.no_grad():  # greedy without a cache: full forward each step
        for _ in range(12):
            ids = torch.cat([ids, m(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out[0] == ids[0, 5:].tolist() or out[0] == ids[0].tolist()


def test_share_blocks_config_errors():
    with pytest.raises(ValueError, match="^share_blocks: must be a positive integer, got 0"):
        ModelConfig(share_blocks=0)
    with pytest.raises(ValueError, match="^share_blocks"):
        ModelConfig(share_blocks=100)
    assert ModelConfig.from_dict({**ModelConfig().to_dict(), "share_blocks": 2}).depth == 8



def test_shared_model_exports_to_hf_and_gguf_with_weights_repeated(tmp_path, tokenizer_file):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("llama_cpp")
    from models.export import runtime_eval as rt
    from models.export.card import model_card
    from models.export.gguf import export_gguf
    from models.export.hf import export_hf

    m = shared(2)
    x = torch.randint(0, VOCAB, (40,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = m(x[None]).logits[0]
    hf_info = export_hf(m, tokenizer_file, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert hf.config.num_hidden_layers == 4
    with torch.no_grad():
        torch.testing.assert_close(hf(x[None]).logits[0], ours, rtol=0, atol=1e-4)
    g = export_gguf(m, tokenizer_file, tmp_path / "m-f32.gguf", "f32")
    llm = rt.open_gguf(Path(g["path"]), 64, 1)
    theirs = torch.from_numpy(rt.gguf_logprobs(llm, x.numpy())).double().log_softmax(-1)
    mine = ours[:-1].double().log_softmax(-1)
    assert (theirs - mine).abs().max() < 5e-3  # F32 file: llama.cpp's own accumulation order only
    card = model_card(m, {"files": [], "hf": hf_info}, None, "shared")
    assert "runs 2 times in a row" in card and "all 4 layers" in card
