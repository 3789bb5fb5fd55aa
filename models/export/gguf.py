"""export/gguf/: GGUF files that llama.cpp loads and generates from.

Three ways a tensor gets its bytes:
- native: a compressed pass that quantized onto one of llama.cpp's block grids (models/compress/ggml_quants.py:
  Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, by RTN or GPTQ) stored the GGUF block bytes; they are copied unchanged
  (rows permuted for RoPE like any other tensor: blocks run along rows, so a row permutation moves whole
  blocks). The file then holds exactly the weights compress evaluated.
- ours: F32 / F16 casts, or our round-to-nearest onto a block grid (`ggml_quants.quantize_rtn`) of a
  full-precision model.
- llama.cpp's quantizer: K-quants and IQ4_NL (`llama_quantize`), from our F16 file.

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
- Tokenizer embedded as tokenizer.ggml.model = "gpt2" (byte-level BPE) with llama.cpp's name for its
  pre-tokenizer ("gpt-2" for ours, "smollm" for SmolLM2's digit split: models/export/gguf_pretokenizer.py), the tokens in id order (control type for special tokens), the merges, and bos/eos/pad ids;
  no BOS is added automatically (our models are trained without one at document starts).
- Written to a temporary file in the target folder and renamed: no partial file under the final name.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from models.atomic import atomic_file
from models.compress import ggml_quants
from models.compress.quantize import QTensor
from models.export.gguf_pretokenizer import gguf_pre_name
from models.export.hf import foreign_tokens, special_token_ids
from models.hf_mapping import to_hf
from models.transformer import Transformer, unshared_name

if TYPE_CHECKING:
    from gguf import GGUFWriter

    from models.config import ModelConfig

GGUFType = Literal["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
OUR_TYPES = ("f32", "f16", *ggml_quants.GGML_TYPES)
LLAMA_CPP_TYPES = {
    "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
    "q3_k_s": "LLAMA_FTYPE_MOSTLY_Q3_K_S",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL",
    # the same ftypes under llama.cpp's own names, for its quantizer's reference files
    "llama_q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "llama_q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
}
"""Types made by llama.cpp's own quantizer from our F16 file. The importance matrix is not wired: llama.cpp's
C API takes it as a pointer to a C++ std::unordered_map (llama_model_quantize_params.imatrix), which ctypes
cannot build; llama.cpp's `llama-imatrix` / `llama-quantize` tools (not shipped by llama-cpp-python) can."""

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


def gguf_name(ours: str, cfg) -> str | None:
    """GGUF tensor name of one of our parameter names (None when the file has no such tensor)."""
    from models.hf_mapping import _LAYER_MAP

    if ours == "tok_emb.weight" or (ours == "lm_head.weight" and cfg.tie_embeddings):
        return "token_embd.weight"
    if ours == "lm_head.weight":
        return "output.weight"
    if ours == "norm.weight":
        return "output_norm.weight"
    parts = ours.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers":
        i, rest = parts[1], parts[2]
        if rest in _LAYER_MAP:
            return f"blk.{i}.{_LAYER[_LAYER_MAP[rest]]}"
        moe = {"mlp.w_gate": "ffn_gate_exps.weight", "mlp.w_up": "ffn_up_exps.weight",
               "mlp.w_down": "ffn_down_exps.weight", "mlp.router.weight": "ffn_gate_inp.weight"}
        if rest in moe:
            return f"blk.{i}.{moe[rest]}"
    return None


def native_blocks(model: Transformer, qtensors: dict[str, QTensor]) -> dict[str, tuple[str, np.ndarray]]:
    """GGUF name -> (type, block bytes in the file's row order) of every tensor already on a llama.cpp grid."""
    cfg = model.cfg
    out: dict[str, tuple[str, np.ndarray]] = {}
    for name, q in qtensors.items():
        if not q.is_ggml:
            continue
        g = gguf_name(name, cfg)
        if g is None:
            continue
        b = q.codes.cpu().numpy()
        if g.endswith("attn_q.weight"):
            b = permute_rope(b, cfg.num_heads)
        elif g.endswith("attn_k.weight"):
            b = permute_rope(b, cfg.num_kv_heads)
        out[g] = (q.kind, np.ascontiguousarray(b))
    return out


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


def _tensor_type(name: str, arr: np.ndarray, ftype: str) -> str:
    if arr.ndim == 1 or name.endswith("ffn_gate_inp.weight") or ftype == "f32":
        return "f32"
    if ftype == "f16" or arr.shape[-1] % 32:
        return "f16"
    if ftype not in ("q8_0",) and name in ("token_embd.weight", "output.weight"):
        return "q8_0"  # as llama.cpp's quantizer, the embedding / output matrix keeps more precision
    return ftype


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


def _add_hparams(w: GGUFWriter, cfg: ModelConfig, name: str, file_type: int) -> None:
    """llama.cpp's `llama` architecture keys (Mixtral's expert keys for a MoE model)."""
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
    w.add_file_type(file_type)
    if cfg.is_moe:
        w.add_expert_count(cfg.num_experts)
        w.add_expert_used_count(cfg.num_experts_per_tok)


def _add_tokenizer(w: GGUFWriter, tokenizer_file: Path, tokens: list, types: list, merges: list, special: dict) -> None:
    """The embedded tokenizer with its special ids and chat template; llama.cpp is told to add no BOS/EOS."""
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(gguf_pre_name(tokenizer_file))
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


def _add_tensors(w: GGUFWriter, model: Transformer, native: dict[str, tuple[str, np.ndarray]], ftype: str,
                 other_type: str) -> int:
    """Every tensor: native blocks copied byte for byte, the rest quantized to `other_type or ftype`; returns
    how many were added."""
    import gguf

    n = 0
    for tname, arr in gguf_tensors(model):
        if tname in native:
            kind, data = native[tname]
        else:
            kind = _tensor_type(tname, arr, other_type or ftype)
            if native and kind not in ("f32",) and not other_type:
                kind = "f32"  # a pass's unquantized matrix (embeddings: fp32): kept exact
            if kind in ggml_quants.GGML_TYPES:
                data = ggml_quants.quantize_rtn(kind, torch.from_numpy(arr)).numpy()
            else:
                data = np.ascontiguousarray(arr, dtype=np.float16 if kind == "f16" else np.float32)
        w.add_tensor(tname, data, raw_dtype=getattr(gguf.GGMLQuantizationType, kind.upper()))
        n += 1
    return n


def export_gguf(
    model: Transformer,
    tokenizer_file: Path | None,
    out_path: Path,
    ftype: str = "q8_0",
    name: str = "tinyfoundry",
    qtensors: dict[str, QTensor] | None = None,
    blocks: dict[str, tuple[str, np.ndarray]] | None = None,
    other_type: str = "",
) -> dict:
    """Write one GGUF file atomically; returns {path, type, bytes, tensors, native}.

    With `qtensors` (a compressed pass), every tensor already on a llama.cpp grid is copied byte for byte
    and `ftype` only names the file; the others follow `ftype` (norms F32). `blocks` (GGUF name -> (type, block
    bytes), e.g. models/export/qat_gguf.py's TQ1_0 / TQ2_0 of a QAT model) are copied the same way; with
    `other_type` the remaining matrices take that type instead of F32 (norms and router stay F32)."""
    import gguf

    if model.cfg.share_blocks > 1:  # GGUF's llama has no weight sharing: every repeat is stored
        k = model.cfg.share_blocks
        qtensors = {u: q for n, q in (qtensors or {}).items() for u in unshared_name(n, k)}
        model = model.unshared()
    cfg = model.cfg
    if cfg.num_shared_experts:
        raise ValueError(f"num_shared_experts: the Mixtral GGUF layout has no shared expert, got {cfg.num_shared_experts}")
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        raise ValueError(f"tokenizer_file: GGUF export embeds the tokenizer, got {tokenizer_file}")
    if ftype not in OUR_TYPES and not (blocks and ftype in ("tq1_0", "tq2_0")):
        raise ValueError(f"gguf_types: must be one of {', '.join(OUR_TYPES)}, got {ftype!r}")
    if other_type and other_type not in OUR_TYPES:
        raise ValueError(f"other_type: must be one of {', '.join(OUR_TYPES)}, got {other_type!r}")
    out_path = Path(out_path)
    tokens, types, merges = _vocab(Path(tokenizer_file), cfg.vocab_size)
    special = special_token_ids(tokenizer_file)
    native = {**native_blocks(model, qtensors or {}), **(blocks or {})}
    file_type = getattr(gguf.LlamaFileType, {"f32": "ALL_F32", "f16": "MOSTLY_F16"}.get(ftype, "MOSTLY_" + ftype.upper()))
    with atomic_file(out_path) as tmp:
        w = gguf.GGUFWriter(str(tmp), "llama")
        _add_hparams(w, cfg, name, int(file_type))
        _add_tokenizer(w, Path(tokenizer_file), tokens, types, merges, special)
        n = _add_tensors(w, model, native, ftype, other_type)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return {"path": str(out_path), "type": ftype, "bytes": out_path.stat().st_size, "tensors": n,
            "native": sorted({k for k, _ in native.values()})}


def llama_quantize(f16_path: Path, out_path: Path, qtype: str, threads: int = 1) -> dict:
    """llama.cpp's own quantizer (llama_model_quantize) from our F16 file, atomically; no importance matrix."""
    import llama_cpp

    if qtype not in LLAMA_CPP_TYPES:
        raise ValueError(f"gguf_types: llama.cpp types are {', '.join(LLAMA_CPP_TYPES)}, got {qtype!r}")
    out_path = Path(out_path)
    with atomic_file(out_path) as tmp:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, LLAMA_CPP_TYPES[qtype])
        params.nthread = max(1, threads)
        rc = llama_cpp.llama_model_quantize(str(f16_path).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise ValueError(f"{f16_path}: llama.cpp's quantizer failed for {qtype} (status {rc})")
    return {"path": str(out_path), "type": qtype, "bytes": out_path.stat().st_size, "native": [],
            "quantizer": "llama.cpp"}
