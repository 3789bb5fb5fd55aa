"""Foreign tokenizers: use a base model's own tokenizer (Hugging Face folder, tinyfoundry model dir, or GGUF) for a run.

Design and invariants
- A tokenizer is a folder with `tokenizer.json` (the contract every stage reads) and, beside it,
  `tokenizer_config.json` naming its special tokens (`bos_token`, `eos_token`, `pad_token`) and its
  `chat_template` (Jinja, as transformers writes it). Ours has `<|pad|>`/`<|bos|>`/`<|endoftext|>` at ids 0/1/2;
  a foreign one has whatever its model was trained with, and `special_ids` reads them from that config
  (falling back to well-known names), so packing ends documents with *that* tokenizer's EOS.
- `import_tokenizer(src, out_dir)` accepts a tokenizer.json, a folder holding one (an HF model folder, a
  tinyfoundry model dir or tokenizer dir), or a `.gguf` file, whose `tokenizer.ggml.*` metadata is rebuilt
  into a tokenizer.json by transformers' GGUF tokenizer converter (the reference implementation of that
  format), with the chat template from `tokenizer.chat_template`. The folder is written atomically.
- A tokenizer without any EOS-like token cannot delimit documents: ValueError naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from models.export.gguf_pretokenizer import pre_tokenizer_for

TOKENIZER_FILE, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # transformers >= 4.43 may keep the template in its own file
_EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|eot_id|>")
_BOS_NAMES = ("<|bos|>", "<s>", "<|begin_of_text|>", "<bos>")
_PAD_NAMES = ("<|pad|>", "<pad>", "[PAD]")


def _content(v: Any) -> str | None:
    if isinstance(v, dict):
        return v.get("content")
    return v if isinstance(v, str) else None


def tokenizer_config(tokenizer_file: str | Path) -> dict[str, Any]:
    """The tokenizer_config.json beside a tokenizer.json ({} when absent or unreadable); chat_template filled in
    from chat_template.jinja when the config has none."""
    folder = Path(tokenizer_file).parent
    cfg: dict[str, Any] = {}
    try:
        obj = json.loads((folder / TOKENIZER_CONFIG).read_text())
        cfg = obj if isinstance(obj, dict) else {}
    except (OSError, json.JSONDecodeError):
        pass
    if not cfg.get("chat_template") and (folder / CHAT_TEMPLATE_FILE).is_file():
        cfg["chat_template"] = (folder / CHAT_TEMPLATE_FILE).read_text()
    return cfg


def special_ids(tokenizer_file: str | Path, tok: Tokenizer | None = None) -> dict[str, int]:
    """{"bos_id", "eos_id", "pad_id"} of a tokenizer: named in its tokenizer_config.json, else well-known names.

    bos falls back to eos and pad to eos (documents are separated by EOS; no BOS is required)."""
    tokenizer_file = Path(tokenizer_file)
    if tok is None:
        tok = Tokenizer.from_file(str(tokenizer_file))
    cfg = tokenizer_config(tokenizer_file)

    def find(key: str, names: tuple[str, ...]) -> int | None:
        name = _content(cfg.get(key))
        if name is not None and tok.token_to_id(name) is not None:
            return int(tok.token_to_id(name))
        for n in names:
            if tok.token_to_id(n) is not None:
                return int(tok.token_to_id(n))
        return None

    eos = find("eos_token", _EOS_NAMES)
    if eos is None:
        raise ValueError(f"{tokenizer_file}: no end-of-text token (eos_token in {TOKENIZER_CONFIG}, or one of "
                         f"{', '.join(_EOS_NAMES)}): documents cannot be delimited")
    bos = find("bos_token", _BOS_NAMES)
    pad = find("pad_token", _PAD_NAMES)
    return {"bos_id": eos if bos is None else bos, "eos_id": eos, "pad_id": eos if pad is None else pad}


def chat_template(tokenizer_file: str | Path) -> str:
    """The tokenizer's Jinja chat template, or "" when it has none."""
    t = tokenizer_config(tokenizer_file).get("chat_template") or ""
    if isinstance(t, list):  # transformers' list of named templates: take "default"
        t = next((x.get("template", "") for x in t if x.get("name") == "default"), "")
    return str(t)


def _from_gguf(path: Path, out: Path) -> None:
    try:
        from transformers import AutoTokenizer
    except ImportError as e:
        raise ValueError(f"{path}: rebuilding a tokenizer from GGUF metadata needs transformers ({e})") from e
    try:
        hf_tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as e:  # transformers raises many types for an unsupported tokenizer model
        raise ValueError(f"{path}: cannot rebuild its tokenizer from GGUF metadata ({e})") from e
    meta = _gguf_scalars(path)
    tok_json = json.loads(hf_tok.backend_tokenizer.to_str())
    pre_name = meta.get("tokenizer.ggml.pre")
    pre = pre_tokenizer_for(str(pre_name)) if pre_name else None
    if pre is not None:  # transformers rebuilds every byte-level BPE with GPT-2's split: put the source's back
        tok_json["pre_tokenizer"] = pre
    (out / TOKENIZER_FILE).write_text(json.dumps(tok_json, ensure_ascii=False))
    tok = Tokenizer.from_file(str(out / TOKENIZER_FILE))

    def name(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}")
        return tok.id_to_token(int(i)) if i is not None else None

    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": name("bos_token_id"),
        "eos_token": name("eos_token_id"),
        "pad_token": name("padding_token_id"),
        "unk_token": name("unknown_token_id"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(meta.get("llama.context_length", 1 << 30)),
    }
    if pre_name:
        cfg["gguf_pre"] = str(pre_name)  # llama.cpp's name for the split, kept for the GGUF export
    if meta.get("tokenizer.chat_template"):
        cfg["chat_template"] = str(meta["tokenizer.chat_template"])
    (out / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")


def _gguf_scalars(path: Path) -> dict[str, Any]:
    """The scalar (non-array) header fields of a GGUF file."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.") and len(f.data) <= 1}


def resolve_source(src: str | Path) -> Path:
    """The tokenizer.json or .gguf a `tokenizer_file` setting points at (a folder resolves to its tokenizer.json)."""
    p = Path(src)
    if p.is_dir():
        if (p / TOKENIZER_FILE).is_file():
            return p / TOKENIZER_FILE
        ggufs = sorted(p.glob("*.gguf"))
        if len(ggufs) == 1:
            return ggufs[0]
        raise ValueError(f"{p}: folder without {TOKENIZER_FILE} (or a single .gguf)")
    if not p.is_file():
        raise ValueError(f"{p}: tokenizer file not found")
    return p


def import_tokenizer(src: str | Path, out_dir: str | Path) -> Path:
    """Write out_dir/tokenizer.json (+ tokenizer_config.json) from a tokenizer.json, a folder or a GGUF file;
    returns the tokenizer.json path. Replaces out_dir's tokenizer files atomically (folder swap)."""
    src, out_dir = resolve_source(src), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if src.suffix == ".gguf":
            _from_gguf(src, tmp)
        else:
            shutil.copyfile(src, tmp / TOKENIZER_FILE)  # the exact bytes: the shard index records their sha256
            cfg = tokenizer_config(src)
            if cfg:
                (tmp / TOKENIZER_CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
            for extra in ("special_tokens_map.json",):
                if (src.parent / extra).is_file():
                    shutil.copyfile(src.parent / extra, tmp / extra)
        special_ids(tmp / TOKENIZER_FILE)  # refuse a tokenizer that cannot end a document
        os.chmod(tmp, 0o777 & ~_umask())
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / TOKENIZER_FILE


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
