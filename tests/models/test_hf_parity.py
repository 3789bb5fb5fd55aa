"""Hugging Face parity: our dense model as LlamaForCausalLM and our MoE as MixtralForCausalLM, same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from models import ModelConfig, Transformer, load_model
from models.hf_mapping import from_hf, to_hf

transformers = pytest.importorskip("transformers", reason="HF parity needs transformers (the hf extra)")


CASES = {
    "llama-tied-gqa": dict(num_kv_heads=2),
    "llama-untied": dict(tie_embeddings=False, rope_theta=500.0),
    "mixtral": dict(num_experts=4, num_experts_per_tok=2, moe_hidden_dim=64, num_kv_heads=2),
    "qwen2moe-shared": dict(num_experts=8, num_experts_per_tok=3, moe_hidden_dim=32, num_shared_experts=2),
    # what structured head pruning leaves: 2 heads of width 16, so the attention is narrower than dim
    "llama-pruned-heads": dict(num_heads=2, num_kv_heads=2, head_dim=16),
}
ARCH = {"llama-pruned-heads": "LlamaForCausalLM", "llama-tied-gqa": "LlamaForCausalLM", "llama-untied": "LlamaForCausalLM",
        "mixtral": "MixtralForCausalLM", "qwen2moe-shared": "Qwen2MoeForCausalLM"}  # fmt: skip


def write_hf_dir(path: Path, model: Transformer) -> None:
    config, sd = to_hf(model)
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(tmp_path: Path, name: str):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=67, dim=64, num_layers=2, num_heads=4, max_seq_len=64, init_std=0.1,
                                norm_eps=1e-6), **CASES[name]})  # fmt: skip
    model = Transformer(cfg).eval()
    with torch.no_grad():  # non-trivial norm gains so a mis-mapped norm cannot hide
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    write_hf_dir(tmp_path / "hf", model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == ARCH[name]
    idx = torch.randint(0, cfg.vocab_size, (2, 40))
    with torch.no_grad():
        ours = model(idx).logits
        theirs = hf(idx).logits
    assert ours.abs().max() > 1.0  # logits big enough that the comparison means something
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)

    # back: from the on-disk dir (load_model) and from HF's in-memory state dict
    back, _ = load_model(tmp_path / "hf")
    assert back.cfg == cfg
    torch.testing.assert_close(back(idx).logits, ours, rtol=0, atol=1e-6)
    again = from_hf(hf.config.to_dict(), hf.state_dict())
    torch.testing.assert_close(again(idx).logits, ours, rtol=0, atol=1e-6)


def test_unrepresentable_hf_models_refused():
    cfg = ModelConfig(vocab_size=67, dim=64, num_layers=1, num_heads=4, num_experts=4, num_shared_experts=1)
    config, sd = to_hf(Transformer(cfg))
    sd["model.layers.0.mlp.shared_expert_gate.weight"][0, 0] = 0.1  # an input-dependent shared gate
    with pytest.raises(ValueError, match="shared_expert_gate"):
        from_hf(config, sd)
    with pytest.raises(ValueError, match="^norm_topk_prob"):
        from_hf({**config, "norm_topk_prob": False}, sd)
    with pytest.raises(ValueError, match="^model_type"):
        from_hf({**config, "model_type": "gpt2"}, sd)
