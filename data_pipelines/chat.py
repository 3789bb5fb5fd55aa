"""Fine-tuning examples -> token ids + a loss mask: chat / instruction JSONL rendered with the tokenizer's chat template.

Design and invariants
- One JSON object per line, one of three shapes: `{"messages": [{"role": ..., "content": ...}, ...]}` (chat),
  `{"prompt": ..., "completion": ...}` (instruction; `response` / `output` are accepted for completion) turned into a
  user + assistant exchange, or `{"text": ...}` (plain text: every token is trained). A bad line raises ValueError
  naming `file:line`.
- Rendering uses the tokenizer's own Jinja chat template (tokenizer_config.json `chat_template`), and ChatML when it
  has none, in a sandboxed jinja2 environment set up as transformers' `apply_chat_template` sets it up
  (trim_blocks, lstrip_blocks, `raise_exception`, bos/eos variables), so our text equals transformers' text.
- Loss on assistant tokens only: message i's text is the difference between rendering messages[:i] with the
  generation prompt and rendering messages[:i+1]; the assistant header belongs to the prompt (masked), the reply and
  its end-of-turn marker are trained. Segments are tokenized separately and concatenated (boundaries fall on
  template markup, where tokenizing the whole string gives the same ids); special tokens in the markup map to
  their ids. Each example ends with the tokenizer's EOS (trained when the last message is the assistant's), so
  examples packed back to back stay delimited.
- Examples that carry a `words` list (instruct_from_synth writes them) also get `first_use`: the reply tokens of
  each word's first use, the only spots where the reply depends on the instruction (finetune.word_weight
  weights their loss).
- bytes_per_token counts the UTF-8 bytes of the trained text over the trained tokens, so bits-per-byte of a masked
  validation split measures the replies alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
COMPLETION_KEYS = ("completion", "response", "output")


def compile_template(template: str) -> Any:
    """A jinja2 template compiled as transformers compiles chat templates."""
    from jinja2.exceptions import TemplateError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    return env.from_string(template)


def to_messages(obj: Any, where: str) -> list[dict[str, str]] | None:
    """The example's messages, or None for a plain-text example; ValueError naming `where` when malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise ValueError(f"{where}: messages: expected a non-empty list")
        for m in msgs:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError(f"{where}: messages: each message needs string 'role' and 'content'")
        return [{"role": m["role"], "content": m["content"]} for m in msgs]
    if "prompt" in obj:
        reply = next((obj[k] for k in COMPLETION_KEYS if k in obj), None)
        if not isinstance(obj["prompt"], str) or not isinstance(reply, str):
            raise ValueError(f"{where}: prompt: needs a string prompt and a string completion")
        return [{"role": "user", "content": obj["prompt"]}, {"role": "assistant", "content": reply}]
    if isinstance(obj.get("text"), str):
        return None
    raise ValueError(f"{where}: expected 'messages', 'prompt' + 'completion', or 'text'")


def render_segments(messages: list[dict[str, str]], template: Any, bos: str, eos: str) -> list[tuple[str, bool]]:
    """[(text, trained)] whose concatenation is the rendered conversation; trained = an assistant reply."""
    def render(msgs: list[dict[str, str]], gen: bool) -> str:
        return template.render(messages=msgs, add_generation_prompt=gen, bos_token=bos, eos_token=eos)

    out: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = render(messages[:i], True)
            if not prompt.startswith(done):
                raise ValueError("chat template: rendering is not incremental (a prefix changed)")
            out.append((prompt[len(done):], False))
            done = prompt
        full = render(messages[: i + 1], False)
        if not full.startswith(done):
            raise ValueError("chat template: rendering is not incremental (a prefix changed)")
        out.append((full[len(done):], m["role"] == "assistant"))
        done = full
    return [(t, trained) for t, trained in out if t]


@dataclass
class Encoded:
    """Token ids and a same-length 0/1 mask: mask[j] = 1 when token j is a target the loss sees. `first_use` (0/1,
    same length) marks the reply tokens of each required word's first use (`first_uses`), for examples that carry
    a `words` list; all zeros otherwise."""

    ids: np.ndarray
    mask: np.ndarray
    trained_bytes: int
    first_use: np.ndarray | None = None


def first_uses(text: str, words: list[str]) -> list[tuple[int, int]]:
    """Character spans of each required word's first use in `text`, in any inflection synth's required-word gate
    accepts (`gates.lemma_forms`); a word not used has none. Only these spots of a story depend on its instruction:
    later uses are copies of the story's own text."""
    import re

    from data_pipelines.synthetic.gates import lemma_forms

    tokens = list(re.finditer(r"[A-Za-z']+", text))
    spans = []
    for w in words:
        forms = lemma_forms(w)
        hit = next((m.span() for m in tokens if m.group().lower() in forms), None)
        if hit is not None:
            spans.append(hit)
    return spans


class ChatEncoder:
    """Encodes examples with one tokenizer (a tokenizer.json path) and its chat template (ChatML when none)."""

    def __init__(self, tokenizer_file: str | Path) -> None:
        from tokenizers import Tokenizer

        from data_pipelines.tokenize.foreign import chat_template, special_ids

        self.tok = Tokenizer.from_file(str(tokenizer_file))
        self.tok.encode_special_tokens = False  # template markup like <|im_start|> maps to its special id
        ids = special_ids(tokenizer_file, self.tok)
        self.eos_id, self.bos_id = ids["eos_id"], ids["bos_id"]
        self.template_source = chat_template(tokenizer_file) or CHATML
        self.template = compile_template(self.template_source)
        self.bos, self.eos = self.tok.id_to_token(self.bos_id), self.tok.id_to_token(self.eos_id)
        self.vocab_size = self.tok.get_vocab_size()

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        return self.template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                    bos_token=self.bos, eos_token=self.eos)

    def _ids(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode(self, obj: Any, where: str = "<example>") -> Encoded:
        messages = to_messages(obj, where)
        if messages is None:
            segments = [(obj["text"], True)]
        else:
            segments = render_segments(messages, self.template, self.bos, self.eos)
        words = obj.get("words") if isinstance(obj, dict) else None
        words = [w for w in words if isinstance(w, str)] if isinstance(words, list) else []
        ids: list[int] = []
        mask: list[int] = []
        first: list[int] = []
        nbytes = 0
        for text, trained in segments:
            if trained and words:
                e = self.tok.encode(text, add_special_tokens=False)
                seg, spans = e.ids, first_uses(text, words)
                first += [int(any(a < y and b > x for x, y in spans)) for a, b in e.offsets]
            else:
                seg = self._ids(text)
                first += [0] * len(seg)
            ids += seg
            mask += [int(trained)] * len(seg)
            nbytes += len(text.encode("utf-8")) if trained else 0
        last_trained = bool(mask[-1]) if mask else False
        ids.append(self.eos_id)
        mask.append(int(last_trained))
        first.append(0)
        return Encoded(np.asarray(ids, dtype=np.int64), np.asarray(mask, dtype=np.uint8), nbytes,
                       np.asarray(first, dtype=np.uint8))


def read_jsonl(path: str | Path) -> Iterator[tuple[Any, str]]:
    """(object, "file:line") for each non-empty line; a bad line raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: fine-tuning data file not found")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{n}"
            try:
                yield json.loads(line), where
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg})") from None


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines atomically (temp file + rename)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


INSTRUCT_STYLES = ("words", "prompt")


def instruct_from_synth(synth_dir: str | Path, out_path: str | Path, exclude_last: int = 0,
                        style: str = "words") -> dict[str, Any]:
    """TinyStories-Instruct from a run's synth/ stories: each story's instruction as the user turn, the story as
    the assistant's reply. `words` and `features` ride along for probes.

    style "words" writes TinyStories-Instruct's lines ("Features: Dialogue, MoralValue" / "Words: pat, pond,
    lumpy"; data_pipelines/synthetic/prompts.py); "prompt" the teacher prompt synth recorded (~180 tokens with a
    1024-token BPE). The first spells each word with the same tokens as the story does (` pond`, where the
    prompt's `"pond"` is other tokens) and stays ~15 tokens, so instruction and story share one short window.

    The last `exclude_last` stories (in file order) are left out, so a probe can use their instructions as held-out
    prompts. Returns {"examples", "held_out": [{"prompt", "words", "features", "story"}, ...], "path"}."""
    import pyarrow.parquet as pq

    from data_pipelines.synthetic.prompts import INSTRUCT_NAMES, instruct_lines

    if style not in INSTRUCT_STYLES:
        raise ValueError(f"style: must be one of {', '.join(INSTRUCT_STYLES)}, got {style!r}")
    files = sorted(Path(synth_dir).glob("*.parquet"))
    if not files:
        raise ValueError(f"{synth_dir}: no synth/*.parquet stories")
    rows: list[dict[str, Any]] = []
    for f in files:
        t = pq.read_table(f, columns=["text", "prompt", "words", "features"]).to_pylist()
        for r in t:
            words, features = list(r["words"] or []), list(r["features"] or [])
            if style == "words":
                unknown = [x for x in features if x not in INSTRUCT_NAMES]
                if unknown or not words:
                    raise ValueError(f"{f}: story without words or with unknown features {unknown}")
                prompt = instruct_lines(words, features).rstrip("\n")
            else:
                prompt = r["prompt"]
            if prompt and r["text"]:
                rows.append({"messages": [{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": r["text"]}],
                             "words": words, "features": features})
    keep, held = (rows[:-exclude_last], rows[-exclude_last:]) if exclude_last else (rows, [])
    write_jsonl(out_path, keep)
    return {"examples": len(keep), "path": str(out_path),
            "held_out": [{"prompt": r["messages"][0]["content"], "words": r["words"], "features": r["features"],
                          "story": r["messages"][1]["content"]} for r in held]}
