"""Quantization-aware training (models/qat.py) and its exact GGUF export (models/export/qat_gguf.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models import ModelConfig, Transformer, qat
from models.compress import ggml_quants

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package")
VOCAB = 300



def test_int4_grid_is_llama_cpp_q4_0_reference():
    """Fake quantization = decode(llama.cpp's reference Q4_0 quantizer), bit for bit; codes in [-8, 7] * d."""
    torch.manual_seed(0)
    w = torch.randn(48, 96) * 0.05
    w[3, :32] = 0.0  # an all-zero block
    fq = qat.q4_0_fake(w)
    ref = ggml_quants.dequantize("q4_0", ggml_quants.quantize_ref("q4_0", w), tuple(w.shape))
    assert torch.equal(fq, ref)
    blocks = fq.reshape(-1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 8
    codes = torch.where(d > 0, blocks / torch.where(d > 0, d, torch.ones_like(d)), torch.zeros_like(blocks))
    assert torch.equal(codes, codes.round()) and codes.min() >= -8 and codes.max() <= 8
    assert torch.equal(qat.q4_0_fake(fq), fq)  # idempotent: already-on-grid weights stay


@pytest.mark.parametrize("block", [256, 0, 64])
def test_ternary_grid_absmean(block):
    torch.manual_seed(1)
    w = torch.randn(8, 512) * 0.02
    fq = qat.ternary_fake(w, block)
    b = block or w.numel()
    groups_w, groups_q = w.reshape(-1, b), fq.reshape(-1, b)
    s = groups_w.abs().mean(-1, keepdim=True).half().float()  # fp16-valued absmean scale per block
    assert torch.equal(groups_q, s * torch.clamp(torch.round(groups_w / s), -1, 1))
    assert set(torch.unique(groups_q / s).tolist()) <= {-1.0, 0.0, 1.0}
    assert 0.2 < (fq == 0).float().mean() < 0.6  # absmean of a Gaussian zeroes about a third
    assert not torch.equal(qat.ternary_fake(fq, block), fq)  # not idempotent: absmean of {-s, 0, s} is below s


def test_ternary_block_falls_back_for_short_rows():
    assert qat.ternary_block(256 * 3, 256) == 256 and qat.ternary_block(96, 256) == 32
    assert qat.ternary_block(384, 256) == 128 and qat.ternary_block(384, 0) == 0


@pytest.mark.parametrize("mode", ["int4", "ternary"])
def test_ste_gradient_is_identity(mode):
    """dL/dw of the QAT linear = dL/dQ(w) of a plain linear with the quantized weight (identity STE)."""
    torch.manual_seed(2)
    lin = nn.Linear(64, 32, bias=False)
    qat.convert(nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({"l": lin})])}), mode, 64)
    assert type(lin) is qat.QATLinear
    x = torch.randn(5, 64)
    g = torch.randn(5, 32)
    (lin(x) * g).sum().backward()
    wq = qat.fake_quant(lin.weight.detach(), mode, 64).requires_grad_(True)
    (F.linear(x, wq) * g).sum().backward()
    assert torch.allclose(lin.weight.grad, wq.grad, atol=1e-6)
    assert not torch.equal(lin.weight.grad, torch.zeros_like(lin.weight.grad))
    with torch.no_grad():
        torch.testing.assert_close(lin(x), F.linear(x, wq), rtol=0, atol=0)


def test_convert_keeps_names_and_muon_groups_and_bake_restores():
    from train.optim import muon_param_groups

    cfg = ModelConfig(vocab_size=64, dim=64, num_layers=2, num_heads=2, max_seq_len=32)
    torch.manual_seed(0)
    m = Transformer(cfg)
    keys = list(m.state_dict())
    groups = [sorted(id(p) for p in g["params"]) for g in muon_param_groups(m, 1e-3, 0.1, 0.02, 0.1)]
    names = qat.convert(m, "ternary", 256, embeddings=True)
    assert len(names) == 2 * 7 + 2 and list(m.state_dict()) == keys
    assert [sorted(id(p) for p in g["params"]) for g in muon_param_groups(m, 1e-3, 0.1, 0.02, 0.1)] == groups
    x = torch.randint(0, 64, (1, 16))
    with torch.no_grad():
        y = m(x).logits
    info = qat.bake(m)
    assert info["layers.0.attn.wq.weight"] == ("ternary", 256) and info["tok_emb.weight"] == ("int4", 256)
    assert all(type(mod) in (nn.Linear, nn.Embedding) for mod in m.modules() if isinstance(mod, (nn.Linear, nn.Embedding)))
    with torch.no_grad():
        assert torch.equal(m(x).logits, y)  # the baked plain model computes what the QAT forward did
    with pytest.raises(ValueError, match="^qat: must be one of"):
        qat.convert(m, "int2")
    with pytest.raises(ValueError, match="^qat_block"):
        qat.convert(m, "ternary", 100)


def _gguf_tensor(path: Path, name: str) -> np.ndarray:
    r = gguf.GGUFReader(str(path))
    t = next(t for t in r.tensors if t.name == name)
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(reversed([int(x) for x in t.shape])))


def _qat_model(mode: str, dim: int, hidden: int, share: int = 1, embeddings: bool = False):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=dim, num_layers=2, num_heads=4, num_kv_heads=2, hidden_dim=hidden,
                      max_seq_len=64, init_std=0.05, share_blocks=share)
    m = Transformer(cfg).eval()
    qat.convert(m, mode, 256, embeddings)
    fq = {n: qat.fake_quant(p.detach(), *qat.qat_modules(m)[n]) for n, p in m.named_parameters()
          if n in qat.qat_modules(m)}
    return m, qat.bake(m), fq


@pytest.mark.parametrize("mode,ftype,dim,hidden,share,embeddings,types", [
    ("int4", "q4_0", 64, 96, 1, True, {"q4_0"}),
    ("ternary", "tq2_0", 256, 512, 1, False, {"tq2_0"}),
    ("ternary", "tq1_0", 256, 512, 2, False, {"tq1_0"}),
    ("ternary", "tq2_0", 64, 96, 1, False, {"q4_0"}),  # rows of 64/96: no TQ block fits, Q4_0 holds it exactly
])
def test_qat_gguf_holds_exactly_the_trained_grid_and_runs_in_llama_cpp(tmp_path, tokenizer_file, mode, ftype, dim,
                                                                       hidden, share, embeddings, types):
    from models.export import runtime_eval as rt
    from models.export.gguf import permute_rope
    from models.export.qat_gguf import export_qat_gguf

    m, info, fq = _qat_model(mode, dim, hidden, share, embeddings)
    path = tmp_path / f"m-{ftype}.gguf"
    out = export_qat_gguf(m, info, tokenizer_file, path, ftype)
    assert set(out["types"]) == types
    cfg = m.cfg
    for i in range(cfg.depth):  # every repeat of a shared block holds its block's grid
        j = i // share
        q = _gguf_tensor(path, f"blk.{i}.attn_q.weight")
        assert np.array_equal(q, permute_rope(fq[f"layers.{j}.attn.wq.weight"].numpy(), cfg.num_heads))
        assert np.array_equal(_gguf_tensor(path, f"blk.{i}.ffn_down.weight"), fq[f"layers.{j}.mlp.w_down.weight"].numpy())
    emb = _gguf_tensor(path, "token_embd.weight")
    if embeddings:
        assert np.array_equal(emb, fq["tok_emb.weight"].numpy())
    llm = rt.open_gguf(path, 64, 1)
    x = torch.randint(0, VOCAB, (48,), generator=torch.Generator().manual_seed(3))
    theirs = torch.from_numpy(rt.gguf_logprobs(llm, x.numpy())).double().log_softmax(-1)
    with torch.no_grad():
        ours = m(x[None]).logits[0, :-1].double().log_softmax(-1)
    idx = torch.arange(47), x[1:]
    diff = (theirs[idx] - ours[idx]).abs()
    # llama.cpp multiplies Q4_0 / TQ weights with activations quantized to 8 bits (q8_0 / q8_K) and keeps the
    # embedding at Q8_0 here: per-token log p differs by a few hundredths of a nat, never by a tenth on average
    assert diff.mean() < 0.05 and diff.max() < 0.25, (float(diff.mean()), float(diff.max()))


def test_qat_gguf_refuses_weights_off_the_grid(tmp_path, tokenizer_file):
    from models.export.qat_gguf import export_qat_gguf

    m, info, _ = _qat_model("ternary", 256, 512)
    with torch.no_grad():
        m.layers[0].attn.wq.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="not on the tq2_0 grid"):
        export_qat_gguf(m, info, tokenizer_file, tmp_path / "bad.gguf", "tq2_0")
    with pytest.raises(ValueError, match="exports exactly as"):
        export_qat_gguf(m, info, tokenizer_file, tmp_path / "bad.gguf", "q8_0")
    assert not (tmp_path / "bad.gguf").exists()


def test_ternary_model_exports_to_hf_as_its_exact_dequantized_grid(tmp_path, tokenizer_file):
    """compressed-tensors has no ternary format: the HF folder holds the on-grid values in fp32, exactly."""
    transformers = pytest.importorskip("transformers")
    from models.export.hf import export_hf

    m, _, fq = _qat_model("ternary", 64, 96, share=2)
    export_hf(m, tokenizer_file, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    w = hf.model.layers[3].self_attn.q_proj.weight.detach()  # repeat 2 of stored block 1
    assert torch.equal(w, fq["layers.1.attn.wq.weight"])
    x = torch.randint(0, VOCAB, (1, 32))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, m(x).logits, rtol=0, atol=1e-4)


def test_ternary_q4_0_fallback_exact_for_tiny_scales():
    """Blocks whose scale is ~1e-4 (Muon's weight decay makes them) stay exact: d = s, not a subnormal fraction."""
    from models.export.qat_gguf import encode

    w = qat.ternary_fake(torch.randn(4, 96) * torch.tensor([1e-4, 3e-4, 0.02, 1.0])[:, None], 256).numpy()
    kind, _ = encode(w, "ternary", "tq2_0")  # raises if any value is off
    assert kind == "q4_0"


def test_export_stage_writes_a_qat_model_on_its_grid(tmp_path, tokenizer_file):
    from models import save_model_dir
    from models.export import ExportConfig, run_export

    m, info, fq = _qat_model("ternary", 256, 512)
    save_model_dir(tmp_path / "final", m, tokenizer_file=tokenizer_file,
                   extra={"qat": {k: list(v) for k, v in info.items()}})
    rep = run_export(ExportConfig(hf=False, gguf_types=["tq2_0", "q4_0", "f16"], measure=False, card=False),
                     tmp_path / "final", tmp_path / "export")
    by = {f["type"]: f for f in rep["files"]}
    assert by["tq2_0"]["weights"] == "exact (QAT grid)" and by["tq2_0"]["qat_types"] == {"tq2_0": 14}
    assert by["q4_0"]["qat_types"] == {"q4_0": 14} and by["tq2_0"]["bytes"] < by["q4_0"]["bytes"] < by["f16"]["bytes"]
    assert np.array_equal(_gguf_tensor(Path(by["tq2_0"]["path"]), "blk.1.ffn_up.weight"),
                          fq["layers.1.mlp.w_up.weight"].numpy())
    plain, _, _ = _qat_model("none", 64, 96)
    save_model_dir(tmp_path / "plain", plain, tokenizer_file=tokenizer_file)
    with pytest.raises(ValueError, match="tq1_0 holds only a ternary QAT model"):
        run_export(ExportConfig(hf=False, gguf_types=["tq1_0"], measure=False, card=False), tmp_path / "plain",
                   tmp_path / "export2")
