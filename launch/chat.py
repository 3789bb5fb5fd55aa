"""Chat templates: how `serve` turns `/v1/chat/completions` messages into the one prompt string a model continues.

Design
- The template is the model's own, found where the ecosystem keeps it: `chat_template` in the
  `tokenizer_config.json` beside the tokenizer (Hugging Face), or the GGUF metadata key
  `tokenizer.chat_template` (llama.cpp). A tokenizer without one gets ChatML (`<|im_start|>role ... <|im_end|>`),
  the format SmolLM2, Qwen and many small instruction models use.
- Templates are Jinja2, rendered in a sandbox with the variables transformers' `apply_chat_template` passes
  (`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `raise_exception`), so a template that works with
  transformers renders the same text here.
- `stop_tokens` names the end-of-turn token of the template (ChatML's `<|im_end|>`) so generation ends at the turn's
  end, not at the model's end-of-text only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class ChatTemplate:
    """A Jinja chat template plus the special-token strings it may name."""

    source: str = CHATML
    bos_token: str = ""
    eos_token: str = ""
    stop_strings: list[str] = field(default_factory=list)  # end-of-turn markers (token strings)

    def render(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(msg: str) -> None:
            raise TemplateError(msg)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        return env.from_string(self.source).render(
            messages=messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
            eos_token=self.eos_token)


def _token_str(v: Any) -> str:
    if isinstance(v, dict):  # {"content": "<|endoftext|>", "lstrip": false, ...}
        v = v.get("content")
    return v if isinstance(v, str) else ""


def _gguf_template(path: Path) -> str | None:
    try:
        from gguf import GGUFReader
    except ImportError:  # pragma: no cover - gguf ships with the models extra
        return None
    field_ = GGUFReader(str(path)).fields.get("tokenizer.chat_template")
    if field_ is None:
        return None
    return bytes(field_.parts[field_.data[0]]).decode("utf-8")


def load_chat_template(model_path: Path, tokenizer_file: Path | None) -> ChatTemplate:
    """The model's template: tokenizer_config.json beside the tokenizer or the model, GGUF metadata, else ChatML."""
    model_path = Path(model_path)
    folders = [p for p in (Path(tokenizer_file).parent if tokenizer_file else None,
                           model_path if model_path.is_dir() else model_path.parent) if p is not None]
    bos = eos = ""
    source = None
    for folder in folders:
        cfg_file = folder / "tokenizer_config.json"
        if not cfg_file.is_file():
            continue
        cfg = json.loads(cfg_file.read_text())
        bos, eos = _token_str(cfg.get("bos_token")), _token_str(cfg.get("eos_token"))
        tmpl = cfg.get("chat_template")
        if isinstance(tmpl, list):  # [{"name": "default", "template": ...}, ...]
            tmpl = next((t.get("template") for t in tmpl if t.get("name") == "default"), None)
        if isinstance(tmpl, str) and tmpl:
            source = tmpl
            break
    if source is None and model_path.suffix == ".gguf" and model_path.is_file():
        source = _gguf_template(model_path)
    source = source or CHATML
    stops = ["<|im_end|>"] if "<|im_end|>" in source else []
    stops += [s for s in ("<|eot_id|>", "<end_of_turn>", "<|end|>") if s in source]
    return ChatTemplate(source=source, bos_token=bos, eos_token=eos, stop_strings=stops)
