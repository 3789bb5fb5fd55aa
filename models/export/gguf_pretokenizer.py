"""Which llama.cpp pre-tokenizer (`tokenizer.ggml.pre`) a byte-level BPE tokenizer.json needs, and back.

Why: a GGUF file does not carry the pre-tokenizer's regex, only a name that llama.cpp maps to its own regex
(llama-vocab.cpp). With the wrong name the file loads and runs but splits text differently from the tokenizer the
model was trained with: SmolLM2 splits every digit apart ("smollm"), GPT-2 keeps runs of digits ("gpt-2"). The
mapping goes both ways:
- export: the tokenizer.json's `pre_tokenizer` decides the name; a structure not in `PRE_TOKENIZERS` is refused
  (ValueError naming the file) rather than written under a name that would tokenize differently;
- import: transformers' GGUF tokenizer converter rebuilds every byte-level BPE with the plain GPT-2 pre-tokenizer,
  whatever `tokenizer.ggml.pre` says, so `pre_tokenizer_for` gives the structure that the name stands for and the
  importer puts it back (tested: SmolLM2's digits tokenize as llama.cpp tokenizes them).
A `gguf_pre` key in tokenizer_config.json (written on import from GGUF) names the source's pre-tokenizer outright.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from models.atomic import read_json_or_empty

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
_DIGITS = {"type": "Digits", "individual_digits": True}

# llama.cpp name -> the tokenizers pre_tokenizer it stands for (the keys that decide the split; others ignored)
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "gpt-2": _BYTE_LEVEL,
    "smollm": {"type": "Sequence", "pretokenizers": [_DIGITS, _BYTE_LEVEL]},
}


def _matches(spec: dict[str, Any], actual: Any) -> bool:
    if not isinstance(actual, dict) or actual.get("type") != spec["type"]:
        return False
    if spec["type"] == "Sequence":
        parts = actual.get("pretokenizers") or []
        return len(parts) == len(spec["pretokenizers"]) and all(
            _matches(s, a) for s, a in zip(spec["pretokenizers"], parts)
        )
    return all(actual.get(k, v) == v for k, v in spec.items() if k != "type")


def gguf_pre_name(tokenizer_file: Path) -> str:
    """The `tokenizer.ggml.pre` name for a tokenizer.json (see the module docstring)."""
    tokenizer_file = Path(tokenizer_file)
    cfg = read_json_or_empty(tokenizer_file.parent / "tokenizer_config.json")
    named = cfg.get("gguf_pre") if isinstance(cfg, dict) else None
    if isinstance(named, str) and named:
        return named
    pre = json.loads(tokenizer_file.read_text()).get("pre_tokenizer")
    for name, spec in PRE_TOKENIZERS.items():
        if _matches(spec, pre):
            return name
    raise ValueError(
        f"{tokenizer_file}: pre_tokenizer {json.dumps(pre)[:200]} has no llama.cpp name that tokenizes the same way "
        f"(known: {', '.join(PRE_TOKENIZERS)}); a GGUF file would split text differently from this tokenizer"
    )


def pre_tokenizer_for(name: str) -> dict[str, Any] | None:
    """The tokenizers pre_tokenizer JSON that llama.cpp's `name` stands for, or None when we do not know it."""
    spec = PRE_TOKENIZERS.get(name)
    if spec is None:
        return None
    full = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    if spec["type"] == "Sequence":
        return {"type": "Sequence", "pretokenizers": [p if p["type"] != "ByteLevel" else {**full, **p}
                                                      for p in spec["pretokenizers"]]}
    return {**full, **spec}
