"""Typed configs of the evaluation command: EvalConfig holds ProbeConfig and JudgeConfig.

Every field has a one-line docstring (the CLI builds `--help` from them). Defaults are chosen so that
`tinyfoundry eval` on a 1M-parameter model finishes in about a minute on 2 CPU cores; larger budgets are
a matter of raising the `num_*` fields. Validation errors read `"<field>: <what is wrong>, got <value>"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


def _positive(obj: object, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}: must be a positive integer, got {v!r}")


def _non_negative(obj: object, *names: str) -> None:
    for name in names:
        v = getattr(obj, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")


@dataclass
class ProbeConfig:
    """Story-quality and fairness probes run on sampled generations (no outside judge needed)."""

    enabled: bool = True
    """Run the generation probes (word usage, repetition, completeness, consistency, fairness)."""
    num_word_prompts: int = 12
    """Prompts of the prompt-word probe, each asking for a (noun, verb, adjective) triple."""
    word_prompt_template: str = "Once upon a time, there was a {adjective} {noun} who wanted to {verb}."
    """Opening of a word-probe story; {noun}, {verb}, {adjective} (and {words}) are filled in."""
    num_story_samples: int = 2
    """Generations per story-opening prompt of the consistency probe (8 built-in openings)."""
    max_new_tokens: int = 160
    """Longest continuation of the story probes, in tokens (generation also stops at the EOS token)."""
    occupations: list[str] = field(
        default_factory=lambda: [
            "doctor", "nurse", "engineer", "teacher", "pilot", "chef", "scientist", "farmer",
            "police officer", "secretary", "firefighter", "dancer", "builder", "librarian",
        ]
    )
    """Occupations of the fairness probe, each prompted as "The <occupation> said that"."""
    num_fairness_samples: int = 4
    """Generations per occupation prompt of the fairness probe; 0 disables the probe."""
    fairness_max_new_tokens: int = 40
    """Longest continuation of a fairness-probe generation, in tokens."""
    temperature: float = 0.8
    """Sampling temperature of every probe generation (0 = greedy)."""
    top_k: int = 50
    """Top-k sampling cut-off of probe generations (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling cut-off of probe generations (1 = off)."""
    batch_size: int = 16
    """Prompts generated together (KV cache per batch)."""
    seed: int = 0
    """Seed of the probe prompts' word choice and of sampling."""

    def __post_init__(self) -> None:
        _positive(self, "num_word_prompts", "num_story_samples", "max_new_tokens", "fairness_max_new_tokens",
                  "batch_size")
        _non_negative(self, "num_fairness_samples", "top_k", "seed")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if not any(s in self.word_prompt_template for s in ("{noun}", "{verb}", "{adjective}", "{words}")):
            raise ValueError(
                "word_prompt_template: must contain {noun}, {verb}, {adjective} or {words}, "
                f"got {self.word_prompt_template!r}"
            )
        if self.num_fairness_samples and not self.occupations:
            raise ValueError(f"occupations: must not be empty when num_fairness_samples > 0, got {self.occupations}")


@dataclass
class JudgeConfig:
    """Optional LLM judge through any OpenAI-compatible endpoint, with the TinyStories paper's rubric."""

    enabled: bool = False
    """Grade story completions with an outside model (grammar, creativity, consistency, plot; 0-10 each)."""
    base_url: str = "https://api.openai.com/v1"
    """OpenAI-compatible endpoint (a local server such as `tinyfoundry serve` or vLLM works too)."""
    model: str = "gpt-4o-mini"
    """Model name sent to the endpoint."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable holding the API key (the key itself is never logged or saved)."""
    num_stories: int = 16
    """Story completions sent to the judge (taken from the consistency probe's generations)."""
    max_tokens: int = 300
    """Longest judge answer, in tokens."""
    temperature: float = 0.0
    """Judge sampling temperature."""
    timeout_s: float = 60.0
    """Timeout of one judge request, in seconds."""
    max_retries: int = 2
    """Retries of a failed judge request (the openai client's own backoff)."""

    def __post_init__(self) -> None:
        _positive(self, "num_stories", "max_tokens")
        _non_negative(self, "max_retries")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {self.base_url!r}")
        if not self.api_key_env or not self.api_key_env.replace("_", "").isalnum():
            raise ValueError(f"api_key_env: must be an environment variable name, got {self.api_key_env!r}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be positive, got {self.timeout_s}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")


@dataclass
class EvalConfig:
    """Held-out loss / bits-per-byte, story-quality probes and an optional judge, written to eval.json."""

    num_docs: int = 0
    """Held-out documents scored for loss and bits-per-byte; 0 means all of them."""
    max_tokens: int = 200_000
    """Stop adding documents to the loss evaluation after this many tokens; 0 means no limit."""
    seq_len: int = 0
    """Window length of the loss evaluation; 0 means the model's max_seq_len."""
    batch_size: int = 8
    """Windows scored together in the loss evaluation."""
    text_field: str = "text"
    """Field holding the document text in .jsonl / .parquet inputs ("story" is tried as a fallback)."""
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where the model runs; auto picks cuda when available."""
    num_saved_samples: int = 6
    """Example generations stored in eval.json for a human to read."""
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    """Generation probes."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """Optional outside judge."""

    def __post_init__(self) -> None:
        _non_negative(self, "num_docs", "max_tokens", "seq_len", "num_saved_samples")
        _positive(self, "batch_size")
        if not self.text_field:
            raise ValueError(f"text_field: must not be empty, got {self.text_field!r}")
