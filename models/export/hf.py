"""export/hf/: a Hugging Face folder that `transformers.AutoModelForCausalLM` loads as LlamaForCausalLM
(dense) or MixtralForCausalLM (MoE), plus the tokenizer files `AutoTokenizer` needs.

Design and invariants
- Weights come from `models.hf_mapping.to_hf` (a pure renaming: our layers compute what HF's do), in
  fp32, so HF logits equal ours to ~1e-5; the quantized deliverables are the GGUF files.
- Special tokens are read from tokenizer.json's added tokens by content (<|bos|>, <|endoftext|>,
  <|pad|>) and written to config.json, generation_config.json, tokenizer_config.json and
  special_tokens_map.json consistently.
- The folder is built under a temporary name beside the final one and swapped in with renames
  (`models.atomic.atomic_dir`, modes from the umask), so an interrupted export never leaves a half-written `hf/`.
- The model card is the folder's README.md, so a copied or uploaded folder carries it.
- A structured-pruned model keeps its real shape (fewer heads, `head_dim` in config.json) unless transformers'
  LlamaConfig would refuse it (hidden_size % num_attention_heads != 0): then whole zero GQA groups are added
  (`pad_heads`, exact: same logits) and the card says so; the GGUF files keep the real shape.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from models.atomic import atomic_dir, read_json_or_empty
from models.hf_mapping import to_hf
from models.transformer import Transformer

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"


def special_token_ids(tokenizer_file: Path | None) -> dict[str, int]:
    """bos/eos/pad ids from tokenizer.json's added tokens (tinyfoundry defaults 1/2/0 when absent)."""
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    if tokenizer_file is None or not Path(tokenizer_file).is_file():
        return ids
    added = {t["content"]: t["id"] for t in json.loads(Path(tokenizer_file).read_text()).get("added_tokens", [])}
    names = foreign_tokens(tokenizer_file)  # a base model's own tokenizer names its specials
    for key, tok in (("bos_token_id", BOS), ("eos_token_id", EOS), ("pad_token_id", PAD)):
        tok = names.get(key.replace("_id", ""), tok)
        if tok in added:
            ids[key] = int(added[tok])
    return ids


def hf_head_padding(cfg) -> tuple[int, int]:
    """(query heads, kv heads) of the HF config: ours, or, when transformers' LlamaConfig would refuse our pruned
    shape (it requires hidden_size % num_attention_heads == 0 even with an explicit head_dim), the fewest heads above
    ours that it accepts, in whole GQA groups. -> (num_heads, num_kv_heads)."""
    H, G = cfg.num_heads, cfg.num_kv_heads
    if cfg.is_moe or cfg.dim % H == 0:
        return H, G
    rep = H // G
    for H2 in range(H + rep, cfg.dim + 1, rep):
        if cfg.dim % H2 == 0:
            return H2, H2 // rep
    raise ValueError(f"num_heads: no head count >= {H} divides hidden size {cfg.dim} in groups of {rep}")


def foreign_tokens(tokenizer_file: Path | None) -> dict[str, str]:
    """bos/eos/pad names and chat_template from the tokenizer_config.json beside a base model's tokenizer.json."""
    cfg = read_json_or_empty(Path(tokenizer_file).parent / "tokenizer_config.json") if tokenizer_file else {}
    if not isinstance(cfg, dict):
        return {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "chat_template"):
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str) and v:
            out[key] = v
    return out



def pad_heads(config: dict, sd: dict[str, torch.Tensor], cfg) -> int:
    """Pad a pruned attention with all-zero GQA groups up to `hf_head_padding`: zero query and key rows give padded heads
    uniform attention over zero value rows, and zero output-projection columns drop them, so the logits are unchanged
    (tested against our model). GGUF keeps the real, smaller shape. Returns the number of added query heads."""
    H2, G2 = hf_head_padding(cfg)
    extra_q, extra_kv = (H2 - cfg.num_heads) * cfg.head_dim, (G2 - cfg.num_kv_heads) * cfg.head_dim
    if not extra_q:
        return 0
    for i in range(cfg.num_layers):
        a = f"model.layers.{i}.self_attn."
        for name, extra in (("q_proj", extra_q), ("k_proj", extra_kv), ("v_proj", extra_kv)):
            w = sd[a + name + ".weight"]
            sd[a + name + ".weight"] = torch.cat([w, w.new_zeros(extra, w.shape[1])], 0)
        w = sd[a + "o_proj.weight"]
        sd[a + "o_proj.weight"] = torch.cat([w, w.new_zeros(w.shape[0], extra_q)], 1)
    config["num_attention_heads"], config["num_key_value_heads"] = H2, G2
    return H2 - cfg.num_heads


def write_tokenizer_files(folder: Path, config: dict, special: dict[str, int], tokenizer_file: Path | None,
                          max_len: int) -> None:
    """config.json, generation_config.json and the tokenizer files AutoTokenizer needs, into `folder`."""
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {k: special[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (folder / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    if tokenizer_file is not None and Path(tokenizer_file).is_file():
        shutil.copyfile(tokenizer_file, folder / "tokenizer.json")
        names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, **foreign_tokens(tokenizer_file)}
        tok_cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            **names,  # a base model's own special tokens and chat template are kept
            "model_max_length": max_len,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
        }
        (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
        smap = {k: names[k] for k in ("bos_token", "eos_token", "pad_token")}
        (folder / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n")


def export_hf(model: Transformer, tokenizer_file: Path | None, out_dir: Path, card: str | None = None) -> dict:
    """Write `out_dir` (e.g. export/hf/) atomically, with `card` as its README.md; returns {path, architecture,
    files, bytes}."""
    out_dir = Path(out_dir)
    model = model.unshared()  # HF Llama stores every layer: shared blocks are repeated
    special = special_token_ids(tokenizer_file)
    config, sd = to_hf(model, **special)
    padded = pad_heads(config, sd, model.cfg)
    with atomic_dir(out_dir) as tmp:
        save_file({k: v.float().contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        write_tokenizer_files(tmp, config, special, tokenizer_file, model.cfg.max_seq_len)
        if card is not None:
            (tmp / "README.md").write_text(card)
    files = sorted(p.name for p in out_dir.iterdir())
    return {
        "path": str(out_dir),
        "architecture": config["architectures"][0],
        "files": files,
        "bytes": (out_dir / "model.safetensors").stat().st_size,
        "padded_heads": padded,
    }
