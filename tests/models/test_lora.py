"""LoRA / QLoRA math: a fresh adapter changes nothing, merged == unmerged logits, the quantized base is frozen codes,
and PEFT loads our adapters onto our HF export with the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer
from models.compress.quantize import quantize_int4
from models.lora import (
    LoRAConfig,
    LoRALinear,
    QuantLinear,
    apply_lora,
    merge_,
    merged,
    save_peft,
    trainable_params,
    weight_bytes,
)

CFG = ModelConfig(vocab_size=96, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=32)


def _model(seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(CFG).eval()


def _randomize_adapters(model: torch.nn.Module, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.weight.copy_(torch.randn(m.lora_B.weight.shape, generator=g) * 0.05)


def test_fresh_adapter_is_identity_and_only_adapters_train() -> None:
    base = _model()
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    want = base(ids).logits
    model = apply_lora(_model(), LoRAConfig(rank=4, alpha=8, target_modules=["all-linear"]))
    torch.testing.assert_close(model(ids).logits, want, rtol=0, atol=0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all(".lora_" in n for n in names)
    trainable, total = trainable_params(model)
    # 7 maps per layer, r * (in + out) each
    per_layer = 2 * 4 * (64 + 64) + 2 * 4 * (64 + 32) + 3 * 4 * (64 + CFG.hidden_dim)  # wq wo, wk wv, mlp
    assert trainable == CFG.num_layers * per_layer and total > trainable


def test_merged_equals_unmerged_logits() -> None:
    model = apply_lora(_model(), LoRAConfig(rank=4, alpha=16, target_modules=["q_proj", "wv", "w_down"]))
    _randomize_adapters(model)
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    plain = merged(model)
    assert isinstance(plain, Transformer) and not any(isinstance(m, LoRALinear) for m in plain.modules())
    a, b = model(ids).logits, plain(ids).logits
    assert (a - _model()(ids).logits).abs().max() > 1e-3  # the adapters do something
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    in_place = merge_(model)  # what the trainer saves: no second copy of the weights
    assert in_place is model and not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(in_place(ids).logits, a, rtol=1e-5, atol=1e-5)


def test_qlora_base_is_frozen_int4_codes() -> None:
    lora = apply_lora(_model(), LoRAConfig(rank=4, target_modules=["all-linear"]))
    q = apply_lora(_model(), LoRAConfig(rank=4, target_modules=["all-linear"], quantize="int4", group_size=32))
    bases = [m.base for m in q.modules() if isinstance(m, LoRALinear)]
    assert len(bases) == 7 * CFG.num_layers and all(isinstance(b, QuantLinear) for b in bases)
    assert all(b.codes.dtype == torch.uint8 and not list(b.parameters()) for b in bases)
    w = _model().layers[0].attn.wq.weight.detach()
    torch.testing.assert_close(q.layers[0].attn.wq.base.dequantized(), quantize_int4(w, 32).dequantize())
    codes = q.layers[0].attn.wq.base.codes.clone()
    # one optimizer step: only adapters move, the codes do not
    opt = torch.optim.AdamW([p for p in q.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    q.train()
    q(ids, targets_BT=ids).loss.backward()
    opt.step()
    assert torch.equal(q.layers[0].attn.wq.base.codes, codes)
    assert all(p.grad is None for n, p in q.named_parameters() if ".lora_" not in n)
    # weight memory of the adapted layers: int4 codes + fp16 scales vs fp32 weights
    assert weight_bytes(q) < 0.6 * weight_bytes(lora)
    _randomize_adapters(q)
    q.eval()
    want = q(ids).logits
    torch.testing.assert_close(merged(q)(ids).logits, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merge_(q)(ids).logits, want, rtol=1e-5, atol=1e-5)


def test_qlora_on_a_ggml_grid_keeps_a_base_already_on_it_bit_for_bit() -> None:
    """A GGUF base (SmolLM2 ships Q4_1) re-quantized onto its own grid is unchanged: QLoRA adds no rounding error."""
    from models.compress import ggml_quants

    base = _model()
    with torch.no_grad():  # put every adapted weight on the Q4_1 grid, as a Q4_1 GGUF import does
        for m in base.modules():
            if isinstance(m, torch.nn.Linear) and m.weight.shape[-1] % 32 == 0:
                w = m.weight.float()
                m.weight.copy_(ggml_quants.dequantize("q4_1", ggml_quants.quantize_ref("q4_1", w), tuple(w.shape)))
    ref = {n: m.weight.detach().clone() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear)}
    q = apply_lora(base, LoRAConfig(rank=4, target_modules=["all-linear"], quantize="q4_1"))
    for name, m in q.named_modules():
        if isinstance(m, LoRALinear):
            assert m.base.kind == "q4_1" and m.base.codes.dtype == torch.uint8
            assert torch.equal(m.base.dequantized(), ref[name])
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    _randomize_adapters(q)
    torch.testing.assert_close(merged(q)(ids).logits, q(ids).logits, rtol=1e-5, atol=1e-5)
    from launch.loader import build_dataclass

    with pytest.raises(Exception, match="lora.quantize"):
        build_dataclass(LoRAConfig, {"quantize": "q2_k"}, "lora")


def test_bad_targets_are_refused() -> None:
    with pytest.raises(ValueError, match="target_modules"):
        LoRAConfig(target_modules=["attention"])
    with pytest.raises(ValueError, match="rank"):
        LoRAConfig(rank=0)


def test_peft_loads_our_adapter_with_the_same_logits(tmp_path: Path) -> None:
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from models.export.hf import export_hf

    base = _model()
    export_hf(base, None, tmp_path / "hf")
    cfg = LoRAConfig(rank=4, alpha=8, target_modules=["all-linear"])
    model = apply_lora(_model(), cfg)
    _randomize_adapters(model)
    with torch.no_grad():  # A too, so both factors are checked
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_A.weight.mul_(1.5)
    save_peft(model, cfg, tmp_path / "adapter")
    acfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["r"] == 4 and "q_proj" in acfg["target_modules"]
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    ids = torch.randint(0, CFG.vocab_size, (2, 16))
    with torch.no_grad():
        ours, theirs = model.eval()(ids).logits, pm(input_ids=ids).logits
    rel = ((ours - theirs).norm() / theirs.norm()).item()
    assert rel <= 1e-4, rel
