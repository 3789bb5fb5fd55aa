"""export/hf/: a Hugging Face folder that `transformers.AutoModelForCausalLM` loads as LlamaForCausalLM
(dense) or MixtralForCausalLM (MoE), plus the tokenizer files `AutoTokenizer` needs.

Design and invariants
- Weights come from `models.hf_mapping.to_hf` (a pure renaming: our layers compute what HF's do), in
  fp32, so HF logits equal ours to ~1e-5; the quantized deliverables are the GGUF files.
- Special tokens are read from tokenizer.json's added tokens by content (<|bos|>, <|endoftext|>,
  <|pad|>) and written to config.json, generation_config.json, tokenizer_config.json and
  special_tokens_map.json consistently.
- The folder is built under a temporary name beside the final one and swapped in with renames, so an
  interrupted export never leaves a half-written `hf/`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

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


def foreign_tokens(tokenizer_file: Path | None) -> dict[str, str]:
    """bos/eos/pad names and chat_template from the tokenizer_config.json beside a base model's tokenizer.json."""
    cfg_path = Path(tokenizer_file).parent / "tokenizer_config.json" if tokenizer_file else None
    if cfg_path is None or not cfg_path.is_file():
        return {}
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token", "chat_template"):
        v = cfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        if isinstance(v, str) and v:
            out[key] = v
    return out


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written temporary folder in under its final name."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def export_hf(model: Transformer, tokenizer_file: Path | None, out_dir: Path) -> dict:
    """Write `out_dir` (e.g. export/hf/) atomically; returns {path, architecture, files, bytes}."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    special = special_token_ids(tokenizer_file)
    config, sd = to_hf(model, **special)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        save_file({k: v.float().contiguous() for k, v in sd.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {k: special[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer_file is not None and Path(tokenizer_file).is_file():
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
            names = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, **foreign_tokens(tokenizer_file)}
            tok_cfg = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                **names,  # a base model's own special tokens and chat template are kept
                "model_max_length": model.cfg.max_seq_len,
                "add_bos_token": False,
                "add_eos_token": False,
                "clean_up_tokenization_spaces": False,
            }
            (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
            smap = {k: names[k] for k in ("bos_token", "eos_token", "pad_token")}
            (tmp / "special_tokens_map.json").write_text(json.dumps(smap, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    files = sorted(p.name for p in out_dir.iterdir())
    return {
        "path": str(out_dir),
        "architecture": config["architectures"][0],
        "files": files,
        "bytes": (out_dir / "model.safetensors").stat().st_size,
    }
