"""export/gguf/: GGUF files (F16, Q8_0, Q4_0) that llama.cpp loads and generates from.

Design and invariants (mirroring llama.cpp's own `convert_hf_to_gguf.py` for Llama / Mixtral)
- Source: the HF state dict from `models.hf_mapping.to_hf`, so the GGUF sees exactly what an HF
  checkpoint holds and the tensor-name map is the converter's:
  embed_tokens -> token_embd, q/k/v/o_proj -> attn_q/k/v/output, gate/up/down_proj -> ffn_gate/up/down,
  input_layernorm -> attn_norm, post_attention_layernorm -> ffn_norm, norm -> output_norm,
  lm_head -> output (absent when tied: llama.cpp then reuses token_embd).
- RoPE: HF's rotate_half pairs dimension i with i + K/2; llama.cpp's LLAMA rope (mode 0) pairs 2i with
  2i+1. The converter therefore permutes the rows of q_proj (by num_heads) and k_proj (by num_kv_heads)
  within each head: reshape(heads, 2, K/2, D).swapaxes(1, 2). Without it the file loads and speaks garbage.
- MoE goes out in the Mixtral layout: the E experts' w1/w3/w2 stacked into 3-D ffn_gate_exps /
  ffn_up_exps / ffn_down_exps (numpy shape (E, out, in)), the router as ffn_gate_inp (kept F32, as the
  converter does), llama.expert_count / expert_used_count set.
- Types: 1-D tensors (norms) and the router stay F32; matrices are F16, Q8_0 or Q4_0 (32-value blocks
  along each row; ModelConfig guarantees rows are multiples of 32). In Q4_0 files the token embedding
  / output matrix is Q8_0, as llama.cpp's quantizer also keeps the output layer at higher precision.
- Tokenizer embedded as tokenizer.ggml.model = "gpt2" (byte-level BPE) with the GPT-2 pre-tokenizer
  ("gpt-2"), the tokens in id order (control type for special tokens), the merges, and bos/eos/pad ids;
  no BOS is added automatically (our models are trained without one at document starts).
- Written to a temporary file in the target folder and renamed: no partial file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from models.export.hf import foreign_tokens, special_token_ids
from models.hf_mapping import to_hf
from models.transformer import Transformer

GGUFType = Literal["f32", "f16", "q8_0", "q4_0"]

_LAYER = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
    "block_sparse_moe.gate.weight": "ffn_gate_inp.weight",
}
_EXPERTS = {"w1": "ffn_gate_exps.weight", "w3": "ffn_up_exps.weight", "w2": "ffn_down_exps.weight"}


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate_half row order -> llama.cpp interleaved pairs (convert_hf_to_gguf.py LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model: Transformer) -> list[tuple[str, np.ndarray]]:
    """(GGUF name, fp32 array) for every tensor, in the converter's names, layout and order."""
    cfg = model.cfg
    _, sd = to_hf(model)
    out: list[tuple[str, np.ndarray]] = [("token_embd.weight", sd["model.embed_tokens.weight"].float().numpy())]
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        for hf_name, g_name in _LAYER.items():
            if pre + hf_name not in sd:
                continue
            w = sd[pre + hf_name].float().numpy()
            if hf_name == "self_attn.q_proj.weight":
                w = permute_rope(w, cfg.num_heads)
            elif hf_name == "self_attn.k_proj.weight":
                w = permute_rope(w, cfg.num_kv_heads)
            out.append((f"blk.{i}.{g_name}", w))
        if cfg.is_moe:
            for wid, g_name in _EXPERTS.items():
                stack = [sd[f"{pre}block_sparse_moe.experts.{e}.{wid}.weight"] for e in range(cfg.num_experts)]
                out.append((f"blk.{i}.{g_name}", torch.stack(stack).float().numpy()))
    out.append(("output_norm.weight", sd["model.norm.weight"].float().numpy()))
    if "lm_head.weight" in sd:
        out.append(("output.weight", sd["lm_head.weight"].float().numpy()))
    return out


def _tensor_type(name: str, arr: np.ndarray, ftype: GGUFType):
    import gguf

    Q = gguf.GGMLQuantizationType
    if arr.ndim == 1 or name.endswith("ffn_gate_inp.weight") or ftype == "f32":
        return Q.F32
    if ftype == "f16" or arr.shape[-1] % 32:
        return Q.F16
    if ftype == "q4_0" and name in ("token_embd.weight", "output.weight"):
        return Q.Q8_0
    return {"q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[ftype]


def _vocab(tokenizer_file: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """Tokens in id order, their GGUF token types and the BPE merges, from a byte-level tokenizer.json."""
    import gguf

    tj = json.loads(Path(tokenizer_file).read_text())
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise ValueError(f"{tokenizer_file}: GGUF export needs a byte-level BPE tokenizer, got {model.get('type')!r}")
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    special: set[int] = set()
    for t in tj.get("added_tokens", []):
        by_id[int(t["id"])] = t["content"]
        if t.get("special", False):
            special.add(int(t["id"]))
    if max(by_id) >= vocab_size:
        raise ValueError(f"{tokenizer_file}: token id {max(by_id)} >= the model's vocab_size {vocab_size}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL)
        else:  # the model's vocabulary may be padded beyond the tokenizer's
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, [int(t) for t in types], merges


def export_gguf(
    model: Transformer, tokenizer_file: Path | None, out_path: Path, ftype: GGUFType = "q8_0", name: str = "tinyfoundry"
) -> dict:
    """Write one GGUF file atomically; returns {path, type, bytes, tensors}."""
    import gguf

    cfg = model.cfg
    if cfg.num_shared_experts:
        raise ValueError(f"num_shared_experts: the Mixtral GGUF layout has no shared expert, got {cfg.num_shared_experts}")
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        raise ValueError(f"tokenizer_file: GGUF export embeds the tokenizer, got {tokenizer_file}")
    if ftype not in ("f32", "f16", "q8_0", "q4_0"):
        raise ValueError(f"gguf_types: must be f32, f16, q8_0 or q4_0, got {ftype!r}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tokens, types, merges = _vocab(Path(tokenizer_file), cfg.vocab_size)
    special = special_token_ids(tokenizer_file)
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0}[ftype]

    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, "llama")
        w.add_name(name)
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.dim)
        w.add_block_count(cfg.num_layers)
        w.add_feed_forward_length(cfg.moe_hidden_dim if cfg.is_moe else cfg.hidden_dim)
        w.add_head_count(cfg.num_heads)
        w.add_head_count_kv(cfg.num_kv_heads)
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
        w.add_rope_dimension_count(cfg.head_dim)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(cfg.norm_eps))
        w.add_vocab_size(cfg.vocab_size)
        w.add_file_type(int(file_type))
        if cfg.is_moe:
            w.add_expert_count(cfg.num_experts)
            w.add_expert_used_count(cfg.num_experts_per_tok)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre("gpt-2")
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(special["bos_token_id"])
        w.add_eos_token_id(special["eos_token_id"])
        w.add_pad_token_id(special["pad_token_id"])
        template = foreign_tokens(tokenizer_file).get("chat_template")
        if template:  # a base model's chat template travels with it
            w.add_chat_template(template)
        w.add_add_bos_token(False)
        w.add_add_eos_token(False)
        n = 0
        for tname, arr in gguf_tensors(model):
            qtype = _tensor_type(tname, arr, ftype)
            data = gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qtype)
            w.add_tensor(tname, data, raw_dtype=qtype)
            n += 1
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(out_path), "type": ftype, "bytes": out_path.stat().st_size, "tensors": n}
