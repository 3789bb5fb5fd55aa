"""Quality gates: a story is kept only if it passes every gate; each rejection names one reason.

Design
- Gates run cheapest-first and the first failure is the reason (datatrove's habit: tests assert
  the reason, stats count by reason). Order: teacher_error, empty, refusal, copied_prompt, chatter, not_prose, garbage, truncated,
  too_short, too_long, repetitive, missing_words, missing_dialogue, not_simple, duplicate_exact,
  duplicate_near. Of the features only dialogue is checkable by pattern (quoted speech present).
- Required words match any inflection generated from the lemma (`vocab.forms`), so "jumped",
  "ran" and "bunnies" count for jump, run and bunny.
- Simplicity is the share of word tokens outside the simple vocabulary. A capitalised word that
  does not start a sentence is a name and is skipped; the sampled words always count as simple
  (the prompt asked for them).
- A small teacher's failures have their own gates: `copied_prompt` (a share of the story's 6-grams
  found in the prompt or its example stories: copying the example, echoing the instruction), `chatter` (talk about the story: "Sure! Here is a
  story", "I hope you enjoyed it", "This story teaches..."), `not_prose` (headings, bullets, numbered
  lists, "Title:" lines), `repetitive` (a repeated-sentence share as well as the 3-gram share: loops
  repeat whole sentences) and `truncated` (also when the server says it stopped at max_tokens).
- Refusals are looked for at the start of the answer only: "I am sorry," inside a story's dialogue
  is not a refusal; "as an AI" / "language model" anywhere is.
- Dedup uses curation's ExactDeduper / MinHashDeduper, so synth and curate agree on what a
  duplicate is; the first story wins and later copies are rejected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from .config import GateConfig
from .prompts import StoryRequest
from .vocab import Vocabulary, forms, tokenize_words

REASONS = (
    "teacher_error", "empty", "refusal", "copied_prompt", "chatter", "not_prose", "garbage", "truncated", "too_short", "too_long",
    "repetitive", "missing_words", "missing_dialogue", "not_simple", "duplicate_exact", "duplicate_near",
)
# Talk about the story instead of the story: what a small chat model adds around (or instead of) it. The
# first chatty line is stripped by teachers.clean_answer; what is left anywhere else drops the story.
_CHATTER = re.compile(
    r"^\s*(?:(?:sure|certainly|of course|absolutely|okay|great)[!,.:]|here(?:'s| is| are)\b|i hope\b"
    r"|i['’](?:d|ll|ve) (?:be|love|write|written|created)\b|let me\b|this (?:story|is a story)\b)"
    r"|\b(?:hope you (?:enjoy|like|liked|love|loved)\b|let me know|feel free to|happy reading"
    r"|(?:this|the) story (?:teaches|shows|is about|highlights|emphasizes|encourages|uses)\b"
    r"|(?:here is|here's) (?:a|the|your|another) (?:short |simple |little )?(?:story|tale|version)"
    r"|in this story\b|words? used:|note:"
    # narration about the story itself, which SmolLM2 tacks on as a closing line (LOG.md, session 10):
    # "The story ends with a big hug.", "The end was very sad", "In summary, ...", "That's all for today"
    r"|(?:this|the) story (?:ends with|has (?:a|an|no|some|several)\b|is written|was written|should|must|needs)"
    r"|\bthe end (?:was|is)\b|\bin (?:conclusion|summary)\b|\b(?:the|this) narrative\b|that['’]?s all for today)",
    re.IGNORECASE | re.MULTILINE,
)
# Lists and headings: markdown heads, bullets, numbered items, bold titles, "Title:"/"Chapter 1".
_NOT_PROSE = re.compile(
    r"^\s*(?:#{1,6}\s|[-*•]\s|\d+[.)]\s|\*\*[^*\n]{1,80}\*\*\s*:?\s*$|chapter \w+\b"
    r"|(?:title|characters?|setting|summary|words|story|plot|the end)\s*:)",
    re.IGNORECASE | re.MULTILINE,
)
# one word three times running with only spaces between ("special special special cushion", "so so so"): a
# small teacher's stutter; real stories write "honk, honk, honk" with commas (none of the shared 2,000 has it)
_STUTTER = re.compile(r"\b(\w+)(?: +\1\b){2,}", re.IGNORECASE)
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_QUOTE = re.compile(r"[\"“”]")
_REFUSAL_START = re.compile(
    r"^\s*(?:i['’]?m sorry|i am sorry|sorry,? but|i (?:cannot|can['’]?t|can not|won['’]?t|am unable)"
    r"|unfortunately,? i|as an ai)",
    re.IGNORECASE,
)
_REFUSAL_ANYWHERE = re.compile(r"\b(?:as an ai\b|ai language model|language model\b|openai)", re.IGNORECASE)
_ENDS_WELL = re.compile(r"(?:[.!?][\"'”’)]*|\bthe end)\s*$", re.IGNORECASE)


_TOKEN_OR_STOP = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|[.!?]")


def unknown_share(text: str, simple: frozenset[str], allowed: set[str] = frozenset()) -> float:
    """Share of word tokens that are not simple (names and `allowed` words skipped/counted simple)."""
    total = unknown = 0
    start = True  # next token starts a sentence
    for tok in _TOKEN_OR_STOP.findall(text):
        if tok in ".!?":
            start = True
            continue
        low = tok.lower()
        if low in simple or low in allowed:
            total += 1
        elif tok[0].isupper() and not start:
            pass  # a name
        else:
            total += 1
            unknown += 1
        start = False
    return unknown / total if total else 1.0


@lru_cache(maxsize=65536)
def lemma_forms(lemma: str) -> frozenset[str]:
    """Every inflection of a required word (a lemma, possibly several words like "kick ball")."""
    return frozenset(f for part in lemma.split() for f in forms(part))


def copied_share(text: str, source: str, n: int = 6) -> float:
    """Share of the story's word n-grams found in `source` (the prompt and its example stories): a small
    teacher shown an example often copies it, or echoes the instruction, instead of writing a story."""
    words = [w.lower() for w in tokenize_words(text)]
    grams = {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}
    if not grams:
        return 0.0
    src = [w.lower() for w in tokenize_words(source)]
    seen = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    return len(grams & seen) / len(grams)


def repeated_sentence_share(text: str) -> float:
    """Share of sentences (3+ words) that repeat an earlier one: a small teacher's loop ("The mother jumped
    on the ball." again and again) repeats whole sentences long before its 3-gram share gives it away."""
    seen: set[str] = set()
    total = repeats = 0
    for m in _SENTENCE.finditer(text):
        key = " ".join(w.lower() for w in tokenize_words(m.group(0)))
        if key.count(" ") < 2:
            continue
        total += 1
        if key in seen:
            repeats += 1
        seen.add(key)
    return repeats / total if total else 0.0


def repeated_trigram_share(words: Sequence[str]) -> float:
    grams = [tuple(words[i : i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


class QualityGates:
    """Stateful (dedup tables): call `check_batch` in story order."""

    def __init__(self, cfg: GateConfig, vocab: Vocabulary) -> None:
        self.cfg = cfg
        self.simple = vocab.simple_forms
        self.exact = self.near = None
        if cfg.dedup in ("exact", "near"):
            from data_pipelines.curate.dedup import ExactDeduper

            self.exact = ExactDeduper(normalize=True)
        if cfg.dedup == "near":
            from data_pipelines.curate.dedup import MinHashDeduper

            self.near = MinHashDeduper(
                ngram=cfg.near_ngram, num_bands=cfg.near_num_bands, rows_per_band=cfg.near_rows_per_band
            )

    def check_text(self, req: StoryRequest, text: str | None, finish_reason: str = "") -> str | None:
        """The first gate (not dedup) the story fails, or None. finish_reason "length" (the server cut the
        answer at max_tokens) counts as truncated whatever the last character is."""
        if text is None:
            return "teacher_error"
        if not text.strip():
            return "empty"
        head = text.lstrip()[:200]
        if _REFUSAL_START.search(head) or _REFUSAL_ANYWHERE.search(text):
            return "refusal"
        if copied_share(text, req.full_prompt) > self.cfg.max_copied_share:
            return "copied_prompt"
        if self.cfg.reject_chatter and _CHATTER.search(text):
            return "chatter"
        if self.cfg.reject_lists and _NOT_PROSE.search(text):
            return "not_prose"
        nonspace = len(text) - sum(map(str.isspace, text))
        alpha = sum(map(str.isalpha, text))
        words = [w.lower() for w in tokenize_words(text)]
        if alpha < 0.7 * nonspace or any(len(w) > 30 for w in words):
            return "garbage"
        if finish_reason == "length" or not _ENDS_WELL.search(text):
            return "truncated"
        if len(words) < self.cfg.min_words:
            return "too_short"
        if len(words) > self.cfg.max_words:
            return "too_long"
        if (repeated_trigram_share(words) > self.cfg.max_repeated_share
                or repeated_sentence_share(text) > self.cfg.max_repeated_sentences or _STUTTER.search(text)):
            return "repetitive"
        present = set(words)
        allowed: set[str] = set()
        for lemma in (req.verb.text, req.noun.text, req.adjective.text):
            fs = lemma_forms(lemma)
            allowed |= fs
            if self.cfg.require_words and not (fs & present):
                return "missing_words"
        if self.cfg.require_dialogue and "dialogue" in req.features and not _QUOTE.search(text):
            return "missing_dialogue"
        if unknown_share(text, self.simple, allowed) > self.cfg.max_unknown_share:
            return "not_simple"
        return None

    def choose(self, req: StoryRequest, cands: Sequence[tuple[str | None, str, float | None]],
               by_score: bool = True) -> tuple[int, list[str | None]]:
        """Best-of-n: (index of the candidate to keep, each candidate's reason). Candidates are (text,
        finish_reason, score); among those that pass every gate but dedup the best score wins (ties and
        missing scores: the earlier one), else the first. With none passing, the first is returned."""
        reasons = [self.check_text(req, t, fr) for t, fr, _ in cands]
        ok = [i for i, why in enumerate(reasons) if why is None]
        if not ok:
            return 0, reasons
        if not by_score:
            return ok[0], reasons
        return max(ok, key=lambda i: (cands[i][2] if cands[i][2] is not None else float("-inf"), -i)), reasons

    def check_batch(self, reqs: Sequence[StoryRequest], texts: Sequence[str | None],
                    finish_reasons: Sequence[str] | None = None) -> list[str | None]:
        """Reason per story (None = keep); dedup tables remember the kept ones."""
        frs = finish_reasons or [""] * len(texts)
        reasons = [self.check_text(r, t, fr) for r, t, fr in zip(reqs, texts, frs)]
        if self.exact is not None:
            for i, (r, t) in enumerate(zip(reqs, texts)):
                if reasons[i] is None and self.exact.is_duplicate(r.id, t) is not None:
                    reasons[i] = "duplicate_exact"
        if self.near is not None:
            idx = [i for i, why in enumerate(reasons) if why is None]
            if idx:
                keys = self.near.band_keys([texts[i] for i in idx]).tolist()
                for i, k in zip(idx, keys):
                    if self.near.check_keys(reqs[i].id, k) is not None:
                        reasons[i] = "duplicate_near"
        return reasons
