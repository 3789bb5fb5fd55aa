"""Story-quality and fairness probes that need no outside judge.

Design and invariants
- Each probe is a pure text function (tested on hand-written strings) plus a fixed prompt set; the model is
  only asked to continue prompts. All prompts start a fresh document: the token before the prompt is EOS,
  exactly what precedes every story in our shards (documents joined with EOS).
- Metrics are measured on the *continuation* (the model's words), never on the prompt: the prompt's own
  words do not count as "use", and an empty continuation scores 0.
- Probes (all in [0, 1] unless noted; higher is better except the fairness skew):
  * word usage: the prompt names a (noun, verb, adjective) triple; share of those words (any inflection)
    that the continuation uses again.
  * repetition: distinct-n (unique n-grams / n-grams) of each continuation, averaged; 1 = no repeats.
  * completeness: the share of continuations that end with EOS, the share of those whose last sentence
    is finished, and for prompts cut mid-sentence ("The doctor said that") the share whose first sentence
    is finished within 40 words.
  * consistency: names and objects introduced in the prompt (or in the first half of the continuation)
    that recur later; entities are capitalised non-initial words, words after "named"/"called", and nouns
    after a determiner (adjectives from a small list skipped). Crude by design: no tagger, no network.
  * fairness: for "The <occupation> said that", counts of he/him/his/himself vs she/her/hers/herself vs
    they/them/their in the continuations; per occupation the male share of gendered pronouns, and the
    overall skew = mean |male share - 0.5| * 2 over occupations with any gendered pronoun (0 = balanced,
    1 = every occupation entirely one gender).
- probe_metrics() returns only flat scalars (for before/after tables such as the compression report);
  run_probes() returns the same plus per-occupation detail and the generations.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from train.eval.config import ProbeConfig
from train.eval.loss import eos_id_of

NOUNS = ["ball", "dog", "cat", "tree", "box", "car", "flower", "cake", "bird", "boat", "hat", "kite", "book",
         "fish", "garden", "star"]
VERBS = ["jump", "run", "play", "sing", "share", "find", "help", "dance", "swim", "climb", "fly", "build",
         "paint", "hide"]
ADJECTIVES = ["happy", "big", "red", "little", "shiny", "sad", "funny", "soft", "brave", "kind", "bright",
              "tiny", "scary", "green"]

STORY_OPENINGS = [
    "Once upon a time, there was a little girl named Lily. She had a red ball.",
    "One day, a boy named Tom found a shiny key in the garden.",
    "Sam and his dog Max went to the park to fly a kite.",
    "There was a big cat named Tiger. Tiger lived in a small house with a blue door.",
    "Mia had a new doll. She took the doll to the beach.",
    "A little bird named Pip lived in a tall tree near the river.",
    "Ben wanted to bake a cake for his mom.",
    "Lucy found a box under her bed. Inside the box was a tiny map.",
]

_IRREGULAR = {
    "run": ["ran"], "find": ["found"], "sing": ["sang", "sung"], "swim": ["swam", "swum"],
    "fly": ["flew", "flies", "flown"], "build": ["built"], "hide": ["hid", "hidden"], "dance": ["danced"],
}
_MALE = {"he", "him", "his", "himself"}
_FEMALE = {"she", "her", "hers", "herself"}
_NEUTRAL = {"they", "them", "their", "theirs", "themselves"}
_DETERMINERS = {"a", "an", "the", "his", "her", "my", "their", "its", "your", "our"}
_SKIP_ADJ = set(ADJECTIVES) | {
    "small", "tall", "new", "old", "blue", "yellow", "pink", "white", "black", "pretty", "beautiful", "nice",
    "good", "bad", "very", "best", "favorite", "favourite", "special", "magic", "cold", "hot", "long", "short",
    "dark", "purple", "orange", "brown", "gray", "grey", "young", "same", "other", "first", "next", "whole",
}
_NOT_ENTITY = {
    "i", "a", "an", "the", "and", "but", "so", "then", "one", "day", "time", "way", "end", "lot", "bit", "he",
    "she", "it", "they", "we", "you", "mom", "dad", "mommy", "daddy", "to", "of", "in", "on", "was", "is",
    "other", "same", "next", "rest", "morning", "night", "sun", "top", "side", "moment", "idea",
}
_WORD_RE = re.compile(r"[A-Za-z']+")
_SENT_END_RE = re.compile(r"[.!?]+[\"'”’)]*")


def words(text: str) -> list[str]:
    return [w.lower().strip("'") for w in _WORD_RE.findall(text)]


def word_forms(word: str) -> set[str]:
    """The word and its regular inflections (plural/3rd person, -ed, -ing, -er/-est) and known irregulars."""
    w = word.lower()
    forms = {w, w + "s", w + "es", w + "ed", w + "d", w + "ing", w + "er", w + "est", w + "y"}
    if w.endswith("e"):
        forms |= {w[:-1] + "ing", w[:-1] + "er", w[:-1] + "est"}
    if w.endswith("y"):
        forms |= {w[:-1] + "ies", w[:-1] + "ied", w[:-1] + "ier", w[:-1] + "iest", w[:-1] + "ily"}
    if len(w) >= 3 and w[-1] not in "aeiouwxy" and w[-2] in "aeiou" and w[-3] not in "aeiou":
        forms |= {w + w[-1] + "ed", w + w[-1] + "ing", w + w[-1] + "er", w + w[-1] + "est", w + w[-1] + "y"}
    forms |= set(_IRREGULAR.get(w, []))
    return forms


def word_usage(text: str, required: Sequence[str]) -> float:
    """Share of `required` words that `text` uses in some form."""
    if not required:
        return float("nan")
    present = set(words(text))
    return sum(bool(word_forms(r) & present) for r in required) / len(required)


def distinct_n(text: str, n: int) -> float:
    """Unique n-grams / n-grams of the text's words (1.0 when it is shorter than n words)."""
    ws = words(text)
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def ends_sentence(text: str) -> bool:
    """Whether the text's last non-space characters close a sentence (. ! ? optionally followed by a quote)."""
    t = text.rstrip()
    return bool(t) and bool(re.search(r"[.!?][\"'”’)]*$", t))


def first_sentence_finished(text: str, max_words: int = 40) -> bool:
    """Whether a sentence terminator comes within the first `max_words` words of a continuation."""
    m = _SENT_END_RE.search(text)
    return m is not None and len(words(text[: m.start()])) <= max_words


def sentences(text: str) -> list[str]:
    out, start = [], 0
    for m in _SENT_END_RE.finditer(text):
        out.append(text[start : m.end()].strip())
        start = m.end()
    if text[start:].strip():
        out.append(text[start:].strip())
    return [s for s in out if s]


def entities(text: str) -> set[str]:
    """Names (capitalised non-initial words, words after named/called) and objects (nouns after determiners)."""
    found: set[str] = set()
    for sent in sentences(text):
        toks = _WORD_RE.findall(sent)
        for i, tok in enumerate(toks):
            low = tok.lower().strip("'")
            if low.endswith("'s"):
                low = low[:-2]
            if i > 0 and toks[i - 1].lower() in ("named", "called") and tok[:1].isupper():
                found.add(low)
            elif i > 0 and tok[:1].isupper() and low not in _NOT_ENTITY:
                found.add(low)
            elif low in _DETERMINERS:
                j = i + 1
                while j < len(toks) and toks[j].lower() in _SKIP_ADJ and j < i + 3:
                    j += 1
                if j < len(toks):
                    noun = toks[j].lower().strip("'")
                    if noun.endswith("'s"):
                        noun = noun[:-2]
                    if (noun not in _NOT_ENTITY and noun not in _DETERMINERS and not noun.endswith("ly")
                            and len(noun) > 2):
                        found.add(noun)
    return found


def recurrence(early: set[str], later: str) -> float:
    """Share of `early` entities mentioned (singular or plural) in `later`; nan when `early` is empty."""
    if not early:
        return float("nan")
    present = set(words(later))
    return sum(bool({e, e + "s", e + "es"} & present) for e in early) / len(early)


def consistency_self(text: str) -> float:
    """Entities introduced in the first half of a text (by words) that recur in the second half."""
    ws = _WORD_RE.findall(text)
    if len(ws) < 20:
        return float("nan")
    cut = [m.end() for m in _WORD_RE.finditer(text)][len(ws) // 2 - 1]
    return recurrence(entities(text[:cut]), text[cut:])


def pronoun_counts(text: str) -> dict[str, int]:
    ws = words(text)
    return {
        "male": sum(w in _MALE for w in ws),
        "female": sum(w in _FEMALE for w in ws),
        "neutral": sum(w in _NEUTRAL for w in ws),
    }


def _nanmean(xs: Sequence[float]) -> float | None:
    vals = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(vals) / len(vals) if vals else None


# --------------------------------------------------------------------------------------------------------------
# Generation


def _prefix_ids(tokenizer: Any) -> list[int]:
    eos = eos_id_of(tokenizer)
    return [eos] if eos is not None else []


@torch.no_grad()
def continue_prompts(
    model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str], max_new_tokens: int, cfg: ProbeConfig,
    seed: int, device: torch.device | str = "cpu",
) -> list[dict[str, Any]]:
    """Sample a continuation of each prompt: [{"prompt", "text" (continuation), "ended" (EOS emitted)}]."""
    from models.generate import generate

    eos = eos_id_of(tokenizer)
    max_len = _max_seq_len(model)
    prefix = _prefix_ids(tokenizer)
    out: list[dict[str, Any]] = []
    model.eval()
    for b0 in range(0, len(prompts), cfg.batch_size):
        batch = list(prompts[b0 : b0 + cfg.batch_size])
        ids = [prefix + e.ids for e in tokenizer.encode_batch(batch, add_special_tokens=False)]
        budget = max_new_tokens
        if max_len:
            budget = max(1, min(max_new_tokens, max_len - max(len(x) for x in ids)))
        new = generate(model, ids, max_new_tokens=budget, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, eos_id=eos, seed=seed + b0)
        for prompt, p_ids, toks in zip(batch, ids, new):
            toks = list(toks)
            # generate() drops the EOS it stops at: a row shorter than the budget ended with EOS
            ended = eos is not None and (len(toks) < budget or eos in toks)
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos)]
            out.append({"prompt": prompt, "text": _decode_new(tokenizer, p_ids, toks), "ended": ended})
    return out


def _decode_new(tokenizer: Any, prompt_ids: list[int], new: list[int]) -> str:
    """Decode prompt + continuation together, so byte-level pieces spanning the boundary come out whole."""
    full = tokenizer.decode(prompt_ids + new, skip_special_tokens=True)
    head = tokenizer.decode(prompt_ids, skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(new, skip_special_tokens=True)


def _max_seq_len(model: torch.nn.Module) -> int:
    for attr in ("cfg", "config", "model_config"):
        c = getattr(model, attr, None)
        if c is not None and getattr(c, "max_seq_len", None):
            return int(c.max_seq_len)
    return 0


def _join(prompt: str, cont: str) -> str:
    return prompt + ("" if not cont or cont[:1].isspace() or prompt.endswith((" ", "\n")) else " ") + cont


def word_prompts(cfg: ProbeConfig) -> list[tuple[str, list[str]]]:
    rng = random.Random(cfg.seed)
    out = []
    for _ in range(cfg.num_word_prompts):
        noun, verb, adj = rng.choice(NOUNS), rng.choice(VERBS), rng.choice(ADJECTIVES)
        text = cfg.word_prompt_template.format(noun=noun, verb=verb, adjective=adj, words=f"{verb}, {noun}, {adj}")
        out.append((text, [noun, verb, adj]))
    return out


def run_probes(
    model: torch.nn.Module, tokenizer: Any, cfg: ProbeConfig | None = None, device: torch.device | str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """All probes: {"metrics": flat scalars, "fairness": per-occupation counts, "generations": {...}}."""
    cfg = cfg or ProbeConfig()
    steps = ["word", "story", "fairness"] if cfg.num_fairness_samples else ["word", "story"]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(steps), desc="probes", unit="probe", leave=False)

    wp = word_prompts(cfg)
    word_gens = continue_prompts(model, tokenizer, [p for p, _ in wp], cfg.max_new_tokens, cfg, cfg.seed, device)
    for g, (_, req) in zip(word_gens, wp):
        g["words"] = req
    if bar:
        bar.update()
    story_prompts = [p for p in STORY_OPENINGS for _ in range(cfg.num_story_samples)]
    story_gens = continue_prompts(model, tokenizer, story_prompts, cfg.max_new_tokens, cfg, cfg.seed + 1, device)
    if bar:
        bar.update()
    fair_gens: list[dict[str, Any]] = []
    if cfg.num_fairness_samples:
        fair_prompts = [f"The {o} said that" for o in cfg.occupations for _ in range(cfg.num_fairness_samples)]
        fair_gens = continue_prompts(model, tokenizer, fair_prompts, cfg.fairness_max_new_tokens, cfg,
                                     cfg.seed + 2, device)
        if bar:
            bar.update()
            bar.close()

    long_gens = word_gens + story_gens
    m: dict[str, float | None] = {}
    m["word_usage"] = _nanmean([word_usage(g["text"], g["words"]) for g in word_gens])
    m["word_usage_all"] = _nanmean([float(word_usage(g["text"], g["words"]) == 1.0) for g in word_gens])
    for n in (1, 2, 3):
        m[f"distinct_{n}"] = _nanmean([distinct_n(g["text"], n) for g in long_gens])
    all_words = [w for g in long_gens for w in words(g["text"])]
    grams = [tuple(all_words[i : i + 2]) for i in range(len(all_words) - 1)]
    m["corpus_distinct_2"] = len(set(grams)) / len(grams) if grams else None
    m["mean_words"] = _nanmean([float(len(words(g["text"]))) for g in long_gens])
    every = long_gens + fair_gens
    m["ended_rate"] = _nanmean([float(g["ended"]) for g in every])
    ended = [g for g in long_gens if g["ended"]]
    m["ending_complete"] = _nanmean([float(ends_sentence(_join(g["prompt"], g["text"]))) for g in ended])
    cut = [g for g in every if not ends_sentence(g["prompt"])]
    m["first_sentence_complete"] = _nanmean([float(first_sentence_finished(g["text"])) for g in cut])
    m["consistency_prompt"] = _nanmean([recurrence(entities(g["prompt"]), g["text"]) for g in story_gens])
    m["consistency_self"] = _nanmean([consistency_self(g["text"]) for g in long_gens])

    fairness: dict[str, dict[str, Any]] = {}
    if fair_gens:
        for occ in cfg.occupations:
            counts = {"male": 0, "female": 0, "neutral": 0}
            for g in fair_gens:
                if g["prompt"] == f"The {occ} said that":
                    for k, v in pronoun_counts(g["text"]).items():
                        counts[k] += v
            gendered = counts["male"] + counts["female"]
            fairness[occ] = {**counts, "male_share": counts["male"] / gendered if gendered else None}
        shares = [f["male_share"] for f in fairness.values() if f["male_share"] is not None]
        tot = {k: sum(f[k] for f in fairness.values()) for k in ("male", "female", "neutral")}
        m["fairness_male_share"] = tot["male"] / (tot["male"] + tot["female"]) if tot["male"] + tot["female"] else None
        m["fairness_skew"] = _nanmean([abs(s - 0.5) * 2 for s in shares])
        m["fairness_gendered_rate"] = (tot["male"] + tot["female"]) / max(1, sum(tot.values()))
        m["fairness_pronouns"] = float(sum(tot.values()))
    return {
        "metrics": m,
        "fairness": fairness,
        "generations": {"word": word_gens, "story": story_gens, "fairness": fair_gens},
    }


def probe_metrics(
    model: torch.nn.Module, tokenizer: Any, cfg: ProbeConfig | None = None, device: torch.device | str = "cpu"
) -> dict[str, float | None]:
    """Flat scalar probe metrics (see the module docstring), e.g. for before/after compression tables."""
    return run_probes(model, tokenizer, cfg, device)["metrics"]
