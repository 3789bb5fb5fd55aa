"""export/hf/ loads in transformers with our logits; run_export writes every deliverable atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, save_model_dir
from models.export import ExportConfig, run_export

VOCAB = 300




def make_model_dir(root: Path, tokenizer_file: Path, moe: int = 0, tie: bool = True) -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64,
                      num_experts=moe, num_experts_per_tok=2, tie_embeddings=tie, init_std=0.2)
    return save_model_dir(root / f"model-{moe}-{tie}", Transformer(cfg), tokenizer_file=tokenizer_file)


@pytest.mark.parametrize(("moe", "tie", "arch"), [(0, True, "LlamaForCausalLM"), (4, False, "MixtralForCausalLM")])
def test_hf_export_loads_in_transformers_with_equal_logits(tmp_path, tokenizer_file, moe, tie, arch):
    transformers = pytest.importorskip("transformers", reason="HF parity needs transformers")
    from models.compress import load_compressed

    mdir = make_model_dir(tmp_path, tokenizer_file, moe, tie)
    info = run_export(ExportConfig(gguf_types=[], card=False), mdir, tmp_path / "export")
    assert info["hf"]["architecture"] == arch
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "hf", dtype=torch.float32).eval()
    assert type(hf).__name__ == arch
    ours, _ = load_compressed(mdir)
    x = torch.randint(0, VOCAB, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (hf(x).logits - ours(x).logits).abs().max().item()
    assert diff < 1e-4
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "export" / "hf")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert tok.decode(tok("Once upon a time").input_ids) == "Once upon a time"


def test_run_export_card_and_atomicity(tmp_path, tokenizer_file, monkeypatch):
    mdir = make_model_dir(tmp_path, tokenizer_file)
    report = {
        "baseline": {"bytes": 4_000_000, "val_bpb": 1.5, "tokens_per_s": 100.0, "sparsity": 0.0, "sample": "Once"},
        "passes": [{"name": "int8", "method": "int8", "bytes": 1_010_000, "size_ratio": 3.96, "sparsity": 0.0,
                    "val_bpb": 1.501, "bpb_increase_pct": 0.07, "tokens_per_s": 90.0, "speedup": 0.9}],
        "num_eval_tokens": 1024,
    }
    out = tmp_path / "export"
    info = run_export(ExportConfig(gguf_types=["q8_0"]), mdir, out, report)
    card = (out / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\nlicense: apache-2.0\n")
    assert "| int8 | int8 | 1.01 MB | 3.96 |" in card and "+0.07%" in card and "LlamaForCausalLM" in card
    assert Path(info["gguf"][0]["path"]).name == "tinyfoundry-q8_0.gguf"
    before = (out / "gguf" / "tinyfoundry-q8_0.gguf").read_bytes()

    # an export killed half-way through a file leaves the previous file and no temporary behind
    from models.compress import ggml_quants

    real = ggml_quants.quantize_rtn
    calls = {"n": 0}

    def dying_quantize(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(ggml_quants, "quantize_rtn", dying_quantize)
    with pytest.raises(KeyboardInterrupt):
        run_export(ExportConfig(hf=False, gguf_types=["q8_0", "q4_0"], card=False), mdir, out)
    assert (out / "gguf" / "tinyfoundry-q8_0.gguf").read_bytes() == before
    assert not (out / "gguf" / "tinyfoundry-q4_0.gguf").exists()
    assert sorted(p.name for p in (out / "gguf").iterdir()) == ["tinyfoundry-q8_0.gguf"]
    assert sorted(p.name for p in out.iterdir()) == ["gguf", "hf", "report.json"]


def test_export_config_validation():
    with pytest.raises(ValueError, match=r"^gguf_types:"):
        ExportConfig(gguf_types=["q5_k"])
    assert ExportConfig(gguf_types="f16,q4_0").gguf_types == ["f16", "q4_0"]
    assert ExportConfig().gguf_types == ["q8_0"]


def test_export_refuses_foreign_and_corrupt_checkpoints(tmp_path, tokenizer_file):
    mdir = make_model_dir(tmp_path, tokenizer_file)
    cfg = json.loads((mdir / "model_config.json").read_text())
    cfg["arch"] = "gpt2"
    (mdir / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=str(mdir)):
        run_export(ExportConfig(), mdir, tmp_path / "export")
    mdir2 = make_model_dir(tmp_path / "b", tokenizer_file)
    (mdir2 / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="model.safetensors"):
        run_export(ExportConfig(), mdir2, tmp_path / "export")
    assert not (tmp_path / "export").exists()
