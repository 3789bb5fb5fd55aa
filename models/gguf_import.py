"""Read a llama.cpp GGUF file (Llama architecture) back into a tinyfoundry Transformer.

Design and invariants
- Through gguf-py only (`gguf.GGUFReader` + `gguf.quants.dequantize`): every tensor, whatever its GGML type
  (F32, F16, Q8_0, Q4_0, Q4_1, K-quants ...), is dequantized to fp32 exactly as llama.cpp would read it.
  transformers' own GGUF loader (`from_pretrained(..., gguf_file=...)`) is the parity reference in the tests.
- The GGUF stores q/k rows in llama.cpp's interleaved RoPE order (convert_hf_to_gguf.py `permute`); we apply
  the inverse permutation, reshape(heads, K/2, 2, D).swapaxes(1, 2), to get back the HF rotate_half order our
  attention uses. Without it the model loads and speaks garbage.
- The file is turned into an HF-style config dict + state dict and built by `models.hf_mapping.from_hf`, so
  the architecture checks (no biases, default RoPE, silu) are the HF import's: one place decides what we can
  represent. Anything other than `general.architecture = llama` raises ValueError naming the file.
- Tied embeddings: a file without `output.weight` reuses `token_embd` (llama.cpp's rule), so tie_embeddings.
- The tokenizer is not rebuilt here (models/ stays free of tokenizer code): `metadata(path)` exposes the
  `tokenizer.*` fields, and data_pipelines.tokenize.foreign turns them into a tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

_LAYER = {  # GGUF name -> HF name (inverse of llama.cpp's converter map)
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp interleaved pairs -> HF rotate_half row order (inverse of export's permute_rope)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _reader(path: Path) -> Any:
    import gguf

    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError/struct.error/... on a bad or truncated file
        raise ValueError(f"{path}: cannot read GGUF ({e})") from e


def metadata(path: str | Path, skip_arrays: bool = False) -> dict[str, Any]:
    """Every key/value of a GGUF file's header as plain Python values (strings, numbers, lists)."""
    path = Path(path)
    r = _reader(path)
    out: dict[str, Any] = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        if skip_arrays and len(field.data) > 1:
            continue
        out[key] = field.contents()
    return out


def hf_config_from_gguf(meta: dict[str, Any], path: Path, has_output: bool, num_embeddings: int) -> dict[str, Any]:
    """The HF config.json dict equivalent to a Llama GGUF's header."""
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"{path}: general.architecture: only 'llama' GGUF files can be imported, got {arch!r}")
    a = "llama."
    try:
        dim, heads = int(meta[a + "embedding_length"]), int(meta[a + "attention.head_count"])
        vocab = int(meta.get(a + "vocab_size") or num_embeddings)
        cfg = {
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": dim,
            "intermediate_size": int(meta[a + "feed_forward_length"]),
            "num_hidden_layers": int(meta[a + "block_count"]),
            "num_attention_heads": heads,
            "num_key_value_heads": int(meta.get(a + "attention.head_count_kv", heads)),
            "head_dim": int(meta.get(a + "attention.key_length", meta.get(a + "rope.dimension_count", dim // heads))),
            "max_position_embeddings": int(meta.get(a + "context_length", 2048)),
            "rope_theta": float(meta.get(a + "rope.freq_base", 10000.0)),
            "rms_norm_eps": float(meta[a + "attention.layer_norm_rms_epsilon"]),
            "tie_word_embeddings": not has_output,
        }
    except KeyError as e:
        raise ValueError(f"{path}: GGUF header lacks {e.args[0]}") from None
    if meta.get(a + "rope.scaling.type", "none") not in ("none", None):
        raise ValueError(f"{path}: llama.rope.scaling.type: only unscaled RoPE is supported, "
                         f"got {meta[a + 'rope.scaling.type']!r}")
    if meta.get(a + "expert_count"):
        raise ValueError(f"{path}: llama.expert_count: MoE GGUF import is not supported, got {meta[a + 'expert_count']}")
    return cfg


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(HF config dict, HF state dict in fp32) of a Llama GGUF file; ValueError naming the file otherwise."""
    import gguf

    path = Path(path)
    r = _reader(path)
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.") and len(f.data) <= 1}
    shapes = {t.name: [int(d) for d in t.shape] for t in r.tensors}
    if "token_embd.weight" not in shapes:
        raise ValueError(f"{path}: no token_embd.weight tensor (not a Llama GGUF)")
    hf_cfg = hf_config_from_gguf(meta, path, "output.weight" in shapes, shapes["token_embd.weight"][-1])
    n_head, n_kv = hf_cfg["num_attention_heads"], hf_cfg["num_key_value_heads"]
    sd: dict[str, torch.Tensor] = {}
    for t in r.tensors:
        try:
            arr = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ValueError(f"{path}: tensor {t.name}: cannot dequantize {t.tensor_type.name} ({e})") from None
        arr = np.asarray(arr, dtype=np.float32).reshape(tuple(int(d) for d in reversed(t.shape)))
        name = t.name
        if name == "token_embd.weight":
            key = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            key = "model.norm.weight"
        elif name == "output.weight":
            key = "lm_head.weight"
        elif name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if rest not in _LAYER:
                raise ValueError(f"{path}: tensor {name}: not part of a Llama block we can import")
            if rest == "attn_q.weight":
                arr = unpermute_rope(arr, n_head)
            elif rest == "attn_k.weight":
                arr = unpermute_rope(arr, n_kv)
            key = f"model.layers.{int(i)}.{_LAYER[rest]}"
        elif name.startswith("rope_"):
            continue  # precomputed RoPE factors of scaled-RoPE models (refused by the config check)
        else:
            raise ValueError(f"{path}: tensor {name}: not part of a Llama model we can import")
        sd[key] = torch.from_numpy(np.array(arr, dtype=np.float32, order="C"))  # a writable copy
    return hf_cfg, sd


def load_gguf(path: str | Path) -> Any:
    """Our Transformer (fp32) built from a Llama GGUF file."""
    from models.hf_mapping import config_from_hf, state_dict_from_hf
    from models.transformer import Transformer

    path = Path(path)
    hf_cfg, sd = read_gguf(path)
    try:
        cfg = config_from_hf(hf_cfg)
        return Transformer.from_state_dict(cfg, state_dict_from_hf(cfg, sd))
    except (ValueError, TypeError, RuntimeError, KeyError) as e:
        raise ValueError(f"{path}: not an importable Llama GGUF ({e})") from e
