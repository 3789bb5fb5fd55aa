"""TinyStories-Instruct probe: does a model's story follow its instruction (use the required words, show dialogue)?

Design and invariants
- Each held-out instruction ({"prompt", "words", "features"}, data_pipelines/chat.py `instruct_from_synth`) is
  rendered with the tokenizer's chat template plus the generation prompt; the reply is decoded greedily up to
  the end-of-turn marker or `max_new_tokens`.
- A reply counts only when it is a story (`is_story`): at least `MIN_WORDS` words and `MIN_SENTENCES` finished
  sentences, no echoed instruction lines ("Words:", "Features:"), and not looping (distinct-3-gram share at least
  `MIN_DISTINCT3`). So a model that lists the words, or repeats one sentence with them, does not follow.
- Required words match as synth's required-word gate matches them (`vocab.forms`: plurals, tenses, -ly,
  irregular pasts), so the grammar's own stories score ~100% on their own instructions.
- The control: every reply is also scored against the words of another held-out instruction (the next one,
  cyclically). A model that ignores its instruction scores the same on both; the gap is what following adds.
- `conditioning_gap`: the held-out stories' loss (nats per story token) after their own instruction and after
  another one. Greedy replies can miss a weak preference; this shows whether the model reads its instruction
  at all (0 = it does not).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

MIN_WORDS = 40
MIN_SENTENCES = 3
MIN_DISTINCT3 = 0.5
_SENTENCE_END = re.compile(r"[.!?][\"'”’)]*(?=\s|$)")
_ECHO = re.compile(r"^\s*(Words|Features|Summary|Story)\s*:", re.MULTILINE)
_QUOTE = re.compile(r"[\"“”]")


def reply_words(text: str) -> list[str]:
    from data_pipelines.synthetic.vocab import tokenize_words

    return [w.lower() for w in tokenize_words(text)]


def is_story(text: str) -> bool:
    """Prose of some length, finished sentences, no instruction echo, not a loop."""
    ws = reply_words(text)
    if len(ws) < MIN_WORDS or len(_SENTENCE_END.findall(text)) < MIN_SENTENCES or _ECHO.search(text):
        return False
    from data_pipelines.synthetic.gates import repeated_trigram_share

    return 1.0 - repeated_trigram_share(ws) >= MIN_DISTINCT3


def uses_all(text: str, words: Sequence[str]) -> bool:
    """Every required word (a lemma, possibly several words like "kick ball") appears in some inflection."""
    from data_pipelines.synthetic.gates import lemma_forms

    present = set(reply_words(text))
    return bool(words) and all(lemma_forms(w) & present for w in words)


def score(replies: Sequence[str], held: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Shares over the held-out instructions (see the module docstring)."""
    n = len(held)
    if n == 0 or len(replies) != n:
        raise ValueError(f"score: {len(replies)} replies for {n} instructions")
    story = [is_story(r) for r in replies]
    follow = [s and uses_all(r, h["words"]) for r, s, h in zip(replies, story, held)]
    control = [s and uses_all(r, held[(i + 1) % n]["words"]) for i, (r, s) in enumerate(zip(replies, story))]
    asked = [i for i, h in enumerate(held) if "dialogue" in h["features"]]
    dialogue = [story[i] and bool(_QUOTE.search(replies[i])) for i in asked]
    return {"stories": sum(story) / n, "all_words": sum(follow) / n, "control": sum(control) / n,
            "dialogue": sum(dialogue) / len(asked) if asked else float("nan")}


def generate_replies(model: torch.nn.Module, tokenizer_file: Any, held: Sequence[dict[str, Any]],
                     max_new_tokens: int, batch_size: int = 8) -> list[str]:
    """Greedy replies to the held-out instructions, rendered with the tokenizer's chat template."""
    from data_pipelines.chat import ChatEncoder
    from models.generate import generate

    enc = ChatEncoder(tokenizer_file)
    prompts = [enc.tok.encode(enc.render([{"role": "user", "content": h["prompt"]}], add_generation_prompt=True),
                              add_special_tokens=False).ids for h in held]
    end = enc.render([{"role": "assistant", "content": "\x00"}]).split("\x00", 1)[1].strip() or enc.eos
    outs: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        outs += generate(model, prompts[i : i + batch_size], max_new_tokens=max_new_tokens, temperature=0.0,
                         eos_id=enc.eos_id, seed=0)
    return [enc.tok.decode(ids, skip_special_tokens=False).split(end)[0] for ids in outs]


def conditioning_gap(model: torch.nn.Module, tokenizer_file: Any, held: Sequence[dict[str, Any]],
                     max_len: int | None = None) -> dict[str, float]:
    """Mean story loss (nats/token, story tokens only) after each story's own instruction and after the next one's."""
    import torch.nn.functional as F

    from data_pipelines.chat import ChatEncoder

    enc = ChatEncoder(tokenizer_file)
    limit = max_len or model.cfg.max_seq_len
    model.eval()

    def loss(prompt: str, story: str) -> float:
        e = enc.encode({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": story}]})
        ids = torch.from_numpy(e.ids[:limit])[None]
        y = ids[0, 1:].clone()
        y[~torch.from_numpy(e.mask[1:limit]).bool()] = -100
        with torch.no_grad():
            return float(F.cross_entropy(model(ids).logits[0, :-1].float(), y))

    n = len(held)
    own = [loss(h["prompt"], h["story"]) for h in held]
    other = [loss(held[(i + 1) % n]["prompt"], h["story"]) for i, h in enumerate(held)]
    return {"own_nats": sum(own) / n, "other_nats": sum(other) / n, "gap_nats": (sum(other) - sum(own)) / n}


def instruct_probe(model: torch.nn.Module, tokenizer_file: Any, held: Sequence[dict[str, Any]],
                   max_new_tokens: int) -> dict[str, Any]:
    """score() of the model's greedy replies; the replies ride along under "replies"."""
    replies = generate_replies(model, tokenizer_file, held, max_new_tokens)
    return {**score(replies, held), "replies": replies}
