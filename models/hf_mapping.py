"""Mapping between tinyfoundry weights and Hugging Face Llama / Mixtral / Qwen2-MoE checkpoints (export format).

Design and invariants
- Our layers compute exactly what transformers' `LlamaForCausalLM` / `MixtralForCausalLM` compute (RoPE in the
  rotate_half layout, fp32 RMSNorm, fp32 softmax router with top-k renormalisation), so the mapping is a pure
  renaming: no permutation, no rescaling. Parity is tested to 1e-4 in fp32 (tests/models/test_hf_parity.py).
- `to_hf` writes the *on-disk* HF layout that `from_pretrained` and llama.cpp's `convert_hf_to_gguf.py` read:
  Mixtral experts as `block_sparse_moe.experts.{e}.w1/w2/w3.weight` (transformers >= 5 fuses them into
  `gate_up_proj` at load time through its conversion mapping). Tied embeddings are written once
  (`tie_word_embeddings: true`, no `lm_head.weight`), as HF does.
- `from_hf` accepts that layout, and also transformers-5 in-memory names (`mlp.experts.gate_up_proj`), so a
  `model.state_dict()` taken from a loaded HF model converts back too.
- Which HF architecture: dense -> `LlamaForCausalLM`; MoE -> `MixtralForCausalLM`; MoE with shared experts ->
  `Qwen2MoeForCausalLM` (the one widely supported HF + llama.cpp MoE with a shared expert and softmax top-k
  routing; `norm_topk_prob: true` gives Mixtral's renormalisation). Qwen2-MoE gates its shared expert with
  sigmoid(w . x); we write w = 0 and double the shared `down_proj`, so 0.5 * 2 = 1 exactly in floating point.
  Its q/k/v biases are written as zeros (`qkv_bias` only exists in recent transformers; zeros load everywhere).
  `from_hf` refuses a Qwen2-MoE whose shared gate or biases are not zero (a model we cannot represent).
- Parity of all three is tested to 1e-4 in fp32 by loading our export with `AutoModelForCausalLM`.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from models.config import ModelConfig
from models.transformer import Transformer

# ours -> HF (per layer i), dense and shared parts
_LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.wq.weight": "self_attn.q_proj.weight",
    "attn.wk.weight": "self_attn.k_proj.weight",
    "attn.wv.weight": "self_attn.v_proj.weight",
    "attn.wo.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.w_gate.weight": "mlp.gate_proj.weight",
    "mlp.w_up.weight": "mlp.up_proj.weight",
    "mlp.w_down.weight": "mlp.down_proj.weight",
}
_EXPERT_MAP = {"w_gate": "w1", "w_down": "w2", "w_up": "w3"}  # Mixtral's names
_QWEN_EXPERT_MAP = {"w_gate": "gate_proj", "w_down": "down_proj", "w_up": "up_proj"}
_QWEN_TO_MIXTRAL = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}


def hf_config(cfg: ModelConfig, bos_token_id: int = 1, eos_token_id: int = 2, pad_token_id: int = 0) -> dict:
    """The config.json dict of the equivalent HF model (special-token ids follow tinyfoundry's tokenizer)."""
    d: dict[str, Any] = {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.moe_hidden_dim if cfg.is_moe else cfg.hidden_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_dropout": 0.0,
        "initializer_range": cfg.init_std,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    if cfg.num_shared_experts:
        d.update(
            architectures=["Qwen2MoeForCausalLM"],
            model_type="qwen2_moe",
            intermediate_size=cfg.hidden_dim,  # unused: every layer is sparse
            num_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            moe_intermediate_size=cfg.moe_hidden_dim,
            shared_expert_intermediate_size=cfg.moe_hidden_dim * cfg.num_shared_experts,
            norm_topk_prob=True,
            decoder_sparse_step=1,
            mlp_only_layers=[],
            qkv_bias=True,
            use_sliding_window=False,
            sliding_window=None,
            max_window_layers=cfg.num_layers,
            router_aux_loss_coef=cfg.moe_aux_loss_coef,
        )
    elif cfg.is_moe:
        d.update(
            architectures=["MixtralForCausalLM"],
            model_type="mixtral",
            num_local_experts=cfg.num_experts,
            num_experts_per_tok=cfg.num_experts_per_tok,
            router_aux_loss_coef=cfg.moe_aux_loss_coef,
            router_jitter_noise=0.0,
            sliding_window=None,
        )
    else:
        d.update(
            architectures=["LlamaForCausalLM"],
            model_type="llama",
            attention_bias=False,
            mlp_bias=False,
            pretraining_tp=1,
        )
    return d


def to_hf(model: Transformer, **special_tokens: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """-> (HF config.json dict, HF on-disk state dict of contiguous tensors, sharing no storage). A model with
    shared blocks goes out unshared (HF Llama has no weight sharing: every repeat is stored)."""
    model = model.unshared()
    cfg = model.cfg
    config = hf_config(cfg, **special_tokens)
    sd = model.state_dict()
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    out["model.norm.weight"] = sd["norm.weight"]
    for i in range(cfg.num_layers):
        ours, hf = f"layers.{i}.", f"model.layers.{i}."
        for k, v in _LAYER_MAP.items():
            if ours + k in sd:
                out[hf + v] = sd[ours + k]
        if cfg.num_shared_experts:
            w = sd[ours + "attn.wq.weight"]
            for proj, n_out in (("q", cfg.num_heads), ("k", cfg.num_kv_heads), ("v", cfg.num_kv_heads)):
                out[f"{hf}self_attn.{proj}_proj.bias"] = w.new_zeros(n_out * cfg.head_dim)
            out[hf + "mlp.gate.weight"] = sd[ours + "mlp.router.weight"]
            for our_name, hf_name in _QWEN_EXPERT_MAP.items():
                w_EOI = sd[ours + "mlp." + our_name]
                for e in range(cfg.num_experts):
                    out[f"{hf}mlp.experts.{e}.{hf_name}.weight"] = w_EOI[e]
                shared = sd[f"{ours}mlp.shared.{our_name}.weight"]
                out[f"{hf}mlp.shared_expert.{hf_name}.weight"] = (
                    shared * 2 if our_name == "w_down" else shared
                )
            out[hf + "mlp.shared_expert_gate.weight"] = w.new_zeros(1, cfg.dim)  # sigmoid(0) = 1/2
        elif cfg.is_moe:
            moe = hf + "block_sparse_moe."
            out[moe + "gate.weight"] = sd[ours + "mlp.router.weight"]
            for our_name, hf_name in _EXPERT_MAP.items():
                w_EOI = sd[ours + "mlp." + our_name]
                for e in range(cfg.num_experts):
                    out[f"{moe}experts.{e}.{hf_name}.weight"] = w_EOI[e]
    return config, {k: v.detach().clone().contiguous() for k, v in out.items()}


def config_from_hf(hf: dict) -> ModelConfig:
    """ModelConfig of an HF Llama/Mixtral/Qwen2-MoE config.json dict; what we cannot reproduce raises ValueError."""
    model_type = hf.get("model_type")
    if model_type not in ("llama", "mixtral", "qwen2_moe"):
        raise ValueError(
            f"model_type: only 'llama', 'mixtral' and 'qwen2_moe' are supported, got {model_type!r}"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hidden_act: only 'silu' is supported, got {hf.get('hidden_act')!r}")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ValueError("attention_bias: biases are not supported, got true")
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", scaling.get("rope_type", scaling.get("type", "default")))
    if rope_type not in ("default", None):
        raise ValueError(f"rope_parameters: only default RoPE is supported, got {rope_type!r}")
    dim, heads = hf["hidden_size"], hf["num_attention_heads"]
    head_dim = hf.get("head_dim") or dim // heads
    kw: dict[str, Any] = dict(
        vocab_size=hf["vocab_size"],
        dim=dim,
        num_layers=hf["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=head_dim,
        max_seq_len=hf.get("max_position_embeddings", 2048),
        rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )
    if model_type == "mixtral":
        kw.update(
            num_experts=hf["num_local_experts"],
            num_experts_per_tok=hf["num_experts_per_tok"],
            moe_hidden_dim=hf["intermediate_size"],
        )  # hidden_dim (unused by an all-MoE model) is left to derive from dim
    elif model_type == "qwen2_moe":
        F_, shared = hf["moe_intermediate_size"], hf.get("shared_expert_intermediate_size", 0)
        if not hf.get("norm_topk_prob", False):
            raise ValueError("norm_topk_prob: only renormalised top-k routing is supported, got false")
        if hf.get("decoder_sparse_step", 1) != 1 or hf.get("mlp_only_layers"):
            raise ValueError(
                "decoder_sparse_step: only all-MoE models are supported (step 1, no mlp_only_layers)"
            )
        if hf.get("use_sliding_window"):
            raise ValueError("use_sliding_window: sliding-window attention is not supported, got true")
        if shared % F_:
            raise ValueError(
                f"shared_expert_intermediate_size: must be a multiple of moe_intermediate_size={F_}, got {shared}"
            )
        kw.update(
            num_experts=hf["num_experts"],
            num_experts_per_tok=hf["num_experts_per_tok"],
            moe_hidden_dim=F_,
            num_shared_experts=shared // F_,
        )
    else:
        kw["hidden_dim"] = hf["intermediate_size"]
    return ModelConfig(**kw)


def state_dict_from_hf(cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF state dict (on-disk or transformers-5 in-memory names) -> our state dict; missing keys raise."""
    inv = {v: k for k, v in _LAYER_MAP.items()}
    out: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str, int], torch.Tensor] = {}
    for key, t in sd.items():
        if key == "model.embed_tokens.weight":
            out["tok_emb.weight"] = t
        elif key == "lm_head.weight":
            if not cfg.tie_embeddings:
                out["lm_head.weight"] = t
        elif key == "model.norm.weight":
            out["norm.weight"] = t
        elif m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key):
            i, rest = int(m.group(1)), m.group(2)
            rest = rest.replace("block_sparse_moe.", "mlp.")
            if rest in inv:
                out[f"layers.{i}.{inv[rest]}"] = t
            elif rest == "mlp.gate.weight":
                out[f"layers.{i}.mlp.router.weight"] = t
            elif em := re.fullmatch(
                r"mlp\.experts\.(\d+)\.(w[123]|gate_proj|up_proj|down_proj)\.weight", rest
            ):
                experts[(i, _QWEN_TO_MIXTRAL.get(em.group(2), em.group(2)), int(em.group(1)))] = t
            elif sm := re.fullmatch(r"mlp\.shared_expert\.(gate_proj|up_proj|down_proj)\.weight", rest):
                our = {v: k for k, v in _QWEN_EXPERT_MAP.items()}[sm.group(1)]
                out[f"layers.{i}.mlp.shared.{our}.weight"] = t / 2 if our == "w_down" else t
            elif rest == "mlp.shared_expert_gate.weight" or re.fullmatch(
                r"self_attn\.[qkv]_proj\.bias", rest
            ):
                if t.abs().max() != 0:
                    raise ValueError(f"{key}: only an all-zero tensor can be represented (no gate/bias here)")
            elif rest == "mlp.experts.gate_up_proj":  # transformers >= 5 in memory: (E, 2F, D)
                gate_EFD, up_EFD = t.chunk(2, dim=1)
                out[f"layers.{i}.mlp.w_gate"], out[f"layers.{i}.mlp.w_up"] = gate_EFD, up_EFD
            elif rest == "mlp.experts.down_proj":
                out[f"layers.{i}.mlp.w_down"] = t
            elif not rest.endswith("rotary_emb.inv_freq"):
                raise ValueError(f"{key}: unexpected HF weight")
        elif not key.endswith("rotary_emb.inv_freq"):
            raise ValueError(f"{key}: unexpected HF weight")
    inv_e = {v: k for k, v in _EXPERT_MAP.items()}
    missing = [k for k in experts if any((k[0], k[1], e) not in experts for e in range(cfg.num_experts))]
    if missing:
        raise ValueError(
            f"model.layers.{missing[0][0]}: expert weights missing for some of {cfg.num_experts}"
        )
    for i in range(cfg.num_layers):
        for hf_name, our_name in inv_e.items():
            if (i, hf_name, 0) in experts:
                out[f"layers.{i}.mlp.{our_name}"] = torch.stack(
                    [experts[(i, hf_name, e)] for e in range(cfg.num_experts)]
                )
    return out


def from_hf(hf_cfg: dict, state_dict: dict[str, torch.Tensor]) -> Transformer:
    """Build our Transformer from an HF Llama/Mixtral/Qwen2-MoE config dict and state dict."""
    cfg = config_from_hf(hf_cfg)
    return Transformer.from_state_dict(cfg, state_dict_from_hf(cfg, state_dict))
