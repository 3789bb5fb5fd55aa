"""GGUF export: metadata, tensor layout (RoPE permutation, Mixtral experts), quantized blocks, and —
when llama-cpp-python is installed — llama.cpp loading the files and matching our greedy generation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelConfig, Transformer
from models.export.gguf import export_gguf, permute_rope
from models.generate import generate
from models.hf_mapping import to_hf

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package")

VOCAB = 300



def tiny(moe: int = 0, tie: bool = True, init_std: float = 0.2) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=128,
                      num_experts=moe, tie_embeddings=tie, init_std=init_std)
    return Transformer(cfg).eval()


def fields(reader) -> dict:
    out = {}
    for name, f in reader.fields.items():
        if not f.types:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            out[name] = len(f.data)
        elif f.types[0] == gguf.GGUFValueType.STRING:
            out[name] = bytes(f.parts[f.data[0]]).decode()
        else:
            out[name] = f.parts[f.data[0]][0]
    return out


def test_permute_rope_matches_converter_pairing():
    """After the permutation, row 2i / 2i+1 of each head are HF's rows i / i + K/2 (llama.cpp pairs them)."""
    K, H = 8, 2
    w = np.arange(H * K, dtype=np.float32)[:, None]
    p = permute_rope(w, H)[:, 0].reshape(H, K)
    assert p[0].tolist() == [0, 4, 1, 5, 2, 6, 3, 7] and p[1].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]


@pytest.mark.parametrize("moe", [0, 4])
def test_gguf_metadata_layout_and_quantized_blocks(tmp_path, tokenizer_file, moe):
    model = tiny(moe, tie=moe == 0)
    _, hf = to_hf(model)
    f32 = export_gguf(model, tokenizer_file, tmp_path / "m-f32.gguf", "f32")
    q8 = export_gguf(model, tokenizer_file, tmp_path / "m-q8_0.gguf", "q8_0")
    q4 = export_gguf(model, tokenizer_file, tmp_path / "m-q4_0.gguf", "q4_0")
    assert q4["bytes"] < q8["bytes"] < f32["bytes"]
    reader = gguf.GGUFReader(f32["path"])
    meta = fields(reader)
    assert meta["general.architecture"] == "llama" and meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.tokens"] == VOCAB and meta["tokenizer.ggml.merges"] > 0
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.rope.dimension_count"] == 16
    assert meta["tokenizer.ggml.eos_token_id"] == 2 and meta["tokenizer.ggml.bos_token_id"] == 1
    tensors = {t.name: t for t in reader.tensors}
    q = np.asarray(tensors["blk.0.attn_q.weight"].data).reshape(64, 64)
    np.testing.assert_array_equal(q, permute_rope(hf["model.layers.0.self_attn.q_proj.weight"].numpy(), 4))
    k = np.asarray(tensors["blk.1.attn_k.weight"].data).reshape(32, 64)
    np.testing.assert_array_equal(k, permute_rope(hf["model.layers.1.self_attn.k_proj.weight"].numpy(), 2))
    if moe:
        meta_e = fields(reader)
        assert meta_e["llama.expert_count"] == 4 and meta_e["llama.expert_used_count"] == 2
        gate = np.asarray(tensors["blk.0.ffn_gate_exps.weight"].data).reshape(4, 192, 64)
        np.testing.assert_array_equal(gate[3], hf["model.layers.0.block_sparse_moe.experts.3.w1.weight"].numpy())
        assert "blk.0.ffn_gate_inp.weight" in tensors and "output.weight" in tensors
    else:
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    r8 = {t.name: t for t in gguf.GGUFReader(q8["path"]).tensors}
    t = r8["blk.0.attn_v.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0
    deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(32, 64)
    ref = hf["model.layers.0.self_attn.v_proj.weight"].numpy()
    assert np.abs(deq - ref).max() <= np.abs(ref).max() / 127
    r4 = {t.name: t for t in gguf.GGUFReader(q4["path"]).tensors}
    assert r4["blk.0.attn_v.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert r4["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert r4["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


def test_gguf_export_refuses_non_bpe_tokenizer(tmp_path):
    tj = tmp_path / "tokenizer.json"
    tj.write_text('{"model": {"type": "Unigram", "vocab": []}, "added_tokens": []}')
    with pytest.raises(ValueError, match="byte-level BPE"):
        export_gguf(tiny(), tj, tmp_path / "x.gguf", "f16")
    assert not list(tmp_path.glob("*.gguf")) and not list(tmp_path.glob(".*tmp"))


def _llama_greedy(path: str, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python builds llama.cpp from source")
    from models.export.runtime_eval import open_gguf

    llm = open_gguf(Path(path), 128, threads=2)
    llm.eval(prompt)
    first = np.array(llm.scores[len(prompt) - 1], dtype=np.float32)
    out = []
    for _ in range(n):
        tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(tok)
        llm.eval([tok])
    return out, first


@pytest.mark.parametrize("moe", [0, 4])
def test_llama_cpp_runs_our_gguf_files(tmp_path, tokenizer_file, moe):
    pytest.importorskip("llama_cpp", reason="llama-cpp-python builds llama.cpp from source")
    model = tiny(moe, tie=moe == 0, init_std=0.05)  # logits spread like a trained model's, not chaotic
    prompt = [5, 17, 42, 99, 7, 150, 33, 8]
    ours = generate(model, [prompt], max_new_tokens=16, temperature=0.0)[0]
    with torch.no_grad():
        our_logits = model(torch.tensor([prompt])).logits[0, -1].numpy()
    for ftype in ("f16", "q8_0", "q4_0"):
        path = export_gguf(model, tokenizer_file, tmp_path / f"m-{ftype}.gguf", ftype)["path"]
        toks, first = _llama_greedy(path, prompt, 16)
        assert len(toks) == 16 and all(0 <= t < VOCAB for t in toks)
        tol = {"f16": 0.01, "q8_0": 0.05, "q4_0": 0.3}[ftype] * np.abs(our_logits).max()
        assert np.abs(first - our_logits).max() < tol, ftype
        if ftype == "f16":
            assert toks == ours
