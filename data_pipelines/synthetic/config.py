"""Typed config for `synth`: which teacher, how many stories, the prompt recipe and the quality gates.

Every field carries a one-line docstring (the CLI's --help reads them with `ast`); `__post_init__`
checks ranges and raises `ValueError("<field>: ...")`. The run-config loader (launch/loader.py) builds the
nested sections (`openai`, `local`, `gates`) from YAML and checks the `Literal` options.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from .grammar import FEATURES

DEFAULT_TEMPLATE = (
    "Write a short story (3-5 paragraphs) which only uses very simple words that a 3 year old child "
    'would likely understand. The story should use the verb "{verb}", the noun "{noun}" and the '
    'adjective "{adjective}". {features_sentence}Remember to only use simple words!'
)
TEMPLATE_FIELDS = frozenset({"verb", "noun", "adjective", "features", "features_sentence"})
# the fields an `openai.opening` may name (values here only check a template; teachers.opening_for fills them)
OPENING_FIELDS = {"name": "Lily", "kid": "girl", "He": "She", "he": "she", "His": "Her", "his": "her",
                  "adjective": "red", "a_adjective": "a red", "noun": "ball", "a_noun": "a ball", "verb": "jump"}


@dataclass
class OpenAITeacherConfig:
    """An OpenAI-compatible server (vLLM, llama.cpp server, Ollama, OpenAI, `tinyfoundry serve`)."""

    base_url: str = "http://127.0.0.1:8000/v1"
    """Server base URL including /v1."""
    model: str = ""
    """Model name sent with each request; empty = the first model the server lists at /v1/models."""
    api_key_env: str = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (unset = a dummy key for local servers)."""
    api: Literal["chat", "completions"] = "chat"
    """Endpoint: /v1/chat/completions (instruction models) or /v1/completions (base models)."""
    num_concurrent: int = 8
    """Requests in flight at once."""
    timeout_s: float = 120.0
    """Per-request timeout in seconds."""
    max_retries: int = 5
    """Retries per request on 429, 5xx, timeouts and connection errors (exponential backoff)."""
    backoff_s: float = 1.0
    """First backoff delay in seconds; doubles each retry (with jitter), capped at 60 s."""
    max_tokens: int = 700
    """Most tokens a story may use."""
    temperature: float = 1.0
    """Sampling temperature sent to the server."""
    top_p: float = 1.0
    """Nucleus sampling threshold sent to the server."""
    frequency_penalty: float = 0.0
    """OpenAI frequency penalty (0 = not sent): pushes a small teacher out of its loops."""
    presence_penalty: float = 0.0
    """OpenAI presence penalty (0 = not sent)."""
    repeat_penalty: float = 0.0
    """llama.cpp's repeat penalty (e.g. 1.1; 0 = not sent; other servers may reject the field)."""
    top_k: int = 0
    """Top-k sampling, a llama.cpp / vLLM extension (0 = not sent)."""
    seed: int = -1
    """Sampling seed base (-1 = not sent); each request gets a seed derived from it, the run seed and its index, so a rerun asks the same."""
    stop: list[str] = field(default_factory=list)
    """Stop strings sent to the server (e.g. the chat template's turn end)."""
    word_bias: float = 0.0
    """Logit bias on the first token of each required word (" jump", " Jump"; 0 = off): a small teacher then uses the words it was asked for. Token ids from the server's own tokenizer (llama.cpp server's /extras/tokenize)."""
    candidates: int = 1
    """Best-of-n: answers asked per prompt; the one that passes the gates and scores best is kept."""
    scorer: Literal["logprob", "first"] = "logprob"
    """How best-of-n ranks candidates that pass the gates: the teacher's own mean token log-prob, or the first."""
    opening: list[str] = field(default_factory=list)
    """Openings the story is made to begin with, one drawn per request: the rendered chat (api chat; api completions: the plain prompt) plus the opening goes to /v1/completions and the teacher continues it (assistant prefill), so a small teacher starts a story, in the TinyStories manner, with its words in place. Fields: {name} {kid} {He} {he} {His} {his} {adjective} {a_adjective} {noun} {a_noun} {verb}. Empty = the teacher writes the whole answer."""
    chat_template: str = ""
    """With `opening`: the GGUF file or model folder whose chat template renders the messages; empty = the file the server names as its model at /v1/models (llama.cpp's server names its GGUF)."""

    def __post_init__(self) -> None:
        self.stop = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if self.candidates < 1:
            raise ValueError(f"candidates: must be >= 1, got {self.candidates}")
        if not 0 <= self.word_bias <= 20:
            raise ValueError(f"word_bias: must be in [0, 20], got {self.word_bias}")
        if self.top_k < 0:
            raise ValueError(f"top_k: must be >= 0, got {self.top_k}")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: must start with http:// or https://, got {self.base_url!r}")
        if self.num_concurrent < 1:
            raise ValueError(f"num_concurrent: must be >= 1, got {self.num_concurrent}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {self.max_retries}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be >= 1, got {self.max_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        self.opening = [self.opening] if isinstance(self.opening, str) else list(self.opening)
        for i, text in enumerate(self.opening):
            try:
                text.format(**OPENING_FIELDS)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"opening[{i}]: {text!r}: unknown field or bad format ({e}); fields: "
                                 f"{', '.join('{' + k + '}' for k in OPENING_FIELDS)}") from None


@dataclass
class LocalTeacherConfig:
    """A model run in this process: a transformers causal LM (`hf`) or a tinyfoundry model (`tinyfoundry`)."""

    model_path: str = ""
    """Model folder: an HF model dir for `hf`; a tinyfoundry model dir, export or .ckpt for `tinyfoundry`."""
    prefix: Literal["prompt", "instruct", "once"] = "prompt"
    """What the model is given: the prompt (chat template if the tokenizer has one), a TinyStories-Instruct header, or 'Once upon a time'."""
    device: str = "cpu"
    """torch device."""
    batch_size: int = 8
    """Prompts generated together."""
    max_new_tokens: int = 400
    """Most new tokens per story."""
    temperature: float = 0.8
    """Sampling temperature (0 = greedy)."""
    top_k: int = 0
    """Top-k sampling (0 = off)."""
    top_p: float = 0.95
    """Nucleus sampling threshold."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens: must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")


@dataclass
class GateConfig:
    """Quality gates every story passes before it is kept; each rejection is counted by reason."""

    require_words: bool = True
    """Reject stories that miss the sampled noun, verb or adjective (any inflection counts)."""
    max_unknown_share: float = 0.15
    """Most share of words outside the simple vocabulary (names and inflections count as simple)."""
    require_dialogue: bool = True
    """Reject stories asked for the dialogue feature that contain no quoted speech."""
    min_words: int = 50
    """Fewest words in a story."""
    max_words: int = 700
    """Most words in a story."""
    max_repeated_share: float = 0.35
    """Most share of repeated word 3-grams (catches loops and garbage)."""
    max_repeated_sentences: float = 0.1
    """Most share of sentences (3+ words) that repeat an earlier one (catches a small teacher's loops)."""
    max_copied_share: float = 0.2
    """Most share of the story's word 6-grams found in the prompt and its example stories (copies, echoes)."""
    reject_chatter: bool = True
    """Reject stories with talk about the story ("Here is a story", "I hope you enjoyed", "This story teaches")."""
    reject_lists: bool = True
    """Reject headings, bullets, numbered lists and "Title:" lines (a story is prose)."""
    dedup: Literal["none", "exact", "near"] = "near"
    """Drop exact copies ("exact") or exact and MinHash near-duplicates ("near")."""
    near_ngram: int = 5
    """Word n-gram size for MinHash."""
    near_num_bands: int = 14
    """LSH bands (more bands = lower Jaccard threshold)."""
    near_rows_per_band: int = 8
    """Rows per LSH band (effective Jaccard threshold = (1/bands)^(1/rows), 0.72 at 14x8)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_unknown_share <= 1:
            raise ValueError(f"max_unknown_share: must be in [0, 1], got {self.max_unknown_share}")
        if self.min_words < 0:
            raise ValueError(f"min_words: must be >= 0, got {self.min_words}")
        if self.max_words < self.min_words:
            raise ValueError(f"max_words: must be >= min_words ({self.min_words}), got {self.max_words}")
        if not 0 <= self.max_copied_share <= 1:
            raise ValueError(f"max_copied_share: must be in [0, 1], got {self.max_copied_share}")
        if not 0 <= self.max_repeated_sentences <= 1:
            raise ValueError(f"max_repeated_sentences: must be in [0, 1], got {self.max_repeated_sentences}")
        if not 0 < self.max_repeated_share <= 1:
            raise ValueError(f"max_repeated_share: must be in (0, 1], got {self.max_repeated_share}")
        for name in ("near_ngram", "near_num_bands", "near_rows_per_band"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class SynthConfig:
    """Synthetic TinyStories-style stories (Eldan & Li 2023): prompt recipe, teacher, quality gates."""

    teacher: str = "grammar"
    """Who writes the stories, a registered backend (teacher_registry.py): grammar (offline, no model), openai (an OpenAI-compatible server), hf (a transformers model) or tinyfoundry (our model)."""
    num_stories: int = 2000
    """Stories to keep (after the quality gates)."""
    max_attempts_factor: float = 3.0
    """Give up after num_stories * this many prompts (a teacher that fails every gate cannot loop forever)."""
    nouns_file: str = ""
    """Own noun list (one word per line, optional '## kind' headers); empty = the built-in list."""
    verbs_file: str = ""
    """Own verb list (one per line, optional 'verb: usual object'); empty = the built-in list."""
    adjectives_file: str = ""
    """Own adjective list (one per line); empty = the built-in list."""
    features: list[str] = field(default_factory=lambda: list(FEATURES))
    """Story features to sample from (subset of: dialogue, bad ending, moral value, plot twist, foreshadowing, conflict)."""
    min_features: int = 0
    """Fewest features per story."""
    max_features: int = 2
    """Most features per story."""
    prompt_templates: list[str] = field(default_factory=lambda: [DEFAULT_TEMPLATE])
    """Prompt templates (one drawn per story); fields {verb} {noun} {adjective} {features} {features_sentence}."""
    system_prompt: str = ""
    """System message for chat teachers (empty = none)."""
    examples_file: str = ""
    """Seed stories for few-shot prompts (a text file, stories separated by blank lines or <|endoftext|>); empty = the built-in ones (templates/seed_stories.txt)."""
    num_examples: int = 0
    """Seed stories shown before each model-teacher prompt (0-2 suit small teachers); drawn per request."""
    reference: str = ""
    """Real stories (text file, as examples_file): train a tiny student on the kept stories and report its bits/byte on these in stats.json."""
    reference_tokens: int = 400_000
    """Training tokens of that student (the transfer check's budget)."""
    instruct_format: bool = False
    """Write `text` in the TinyStories-Instruct format (Features / Words / Summary / Story) instead of the bare story."""
    stories_per_file: int = 20000
    """Stories per output parquet file."""
    grammar_workers: int = 1
    """Processes for the offline grammar (it writes ~thousands of stories/s per process)."""
    openai: OpenAITeacherConfig = field(default_factory=OpenAITeacherConfig)
    """OpenAI-compatible teacher settings (teacher: openai)."""
    local: LocalTeacherConfig = field(default_factory=LocalTeacherConfig)
    """Local model teacher settings (teacher: hf or tinyfoundry)."""
    gates: GateConfig = field(default_factory=GateConfig)
    """Quality gates."""

    def __post_init__(self) -> None:
        from .teacher_registry import teacher_backend  # the registry imports teachers.py, which imports this

        backend = teacher_backend(self.teacher)
        if self.num_stories < 1:
            raise ValueError(f"num_stories: must be >= 1, got {self.num_stories}")
        if self.max_attempts_factor < 1:
            raise ValueError(f"max_attempts_factor: must be >= 1, got {self.max_attempts_factor}")
        self.features = list(self.features)
        bad = [f for f in self.features if f not in FEATURES]
        if bad:
            raise ValueError(f"features: unknown feature {bad[0]!r}, expected some of {list(FEATURES)}")
        if not 0 <= self.min_features <= self.max_features:
            raise ValueError(f"min_features: must be in [0, max_features], got {self.min_features}")
        if self.max_features > len(self.features):
            raise ValueError(f"max_features: must be <= len(features) = {len(self.features)}, got {self.max_features}")
        if isinstance(self.prompt_templates, str):
            self.prompt_templates = [self.prompt_templates]
        if not self.prompt_templates:
            raise ValueError("prompt_templates: need at least one template, got []")
        for t in self.prompt_templates:
            try:
                names = {f for _, f, _, _ in string.Formatter().parse(t) if f is not None}
            except ValueError as e:
                raise ValueError(f"prompt_templates: cannot parse template ({e}), got {t!r}") from None
            unknown = names - TEMPLATE_FIELDS
            if unknown:
                raise ValueError(
                    f"prompt_templates: unknown field {{{sorted(unknown)[0]}}}, allowed {sorted(TEMPLATE_FIELDS)}"
                )
        if self.stories_per_file < 1:
            raise ValueError(f"stories_per_file: must be >= 1, got {self.stories_per_file}")
        if self.num_examples < 0:
            raise ValueError(f"num_examples: must be >= 0, got {self.num_examples}")
        if self.reference_tokens < 1:
            raise ValueError(f"reference_tokens: must be >= 1, got {self.reference_tokens}")
        if self.grammar_workers < 1:
            raise ValueError(f"grammar_workers: must be >= 1, got {self.grammar_workers}")
        backend.check(self)
