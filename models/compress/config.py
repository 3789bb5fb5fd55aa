"""CompressConfig: which compression passes to try, in which order, and how they are measured.

Design and invariants
- A pass is one method (a `CompressionPass` registered by name in models/compress/passes.py) with its own
  typed options dataclass; `passes` is an ordered list, run in that order. Each pass starts from the trained
  model (`input: baseline`) or from an earlier pass's output by name, so a chain such as structured pruning +
  recovery -> int8 is two passes, and the report shows both steps.
- Pass names are unique (they are folder names under compressed/); an empty name means the method name.
- YAML gives each pass as one flat mapping, `{method: gptq, name: gptq-q4_0, gguf_type: q4_0}`: `method`,
  `name` and `input` belong to PassConfig, every other key to the method's options (an `options:` mapping is
  accepted too, which is how the resolved config is written back). An option the method does not have is an
  error naming the pass and the key. The run-config loader builds each pass through `PassConfig.from_config` with
  its typed builder; a mapping given in Python code goes through the same function with plain construction.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from models.compress.passes import PASSES, CompressionPass

PASS_KEYS = ("method", "name", "input", "options")
Builder = Callable[[type, dict[str, Any], str], Any]


@dataclass
class PassConfig:
    """One compression pass: a registered method, its folder name, its input, and the method's options."""

    method: str = "int8"
    """A registered method: int8, int4, gptq, rtn, lowbit, lowrank, magnitude, wanda, sparse24, structured
    (models/compress/passes.py, lowbit.py, lowrank.py)."""
    name: str = ""
    """Folder under compressed/ and label in the report; '' means the method name."""
    input: str = "baseline"
    """Start from the trained model ('baseline') or from an earlier pass, by name."""
    options: Any = None
    """The method's options dataclass (`from_config` builds it from the flat mapping); None = its defaults."""

    def __post_init__(self) -> None:
        if self.method not in PASSES:
            raise ValueError(f"method: must be one of {', '.join(PASSES)}, got {self.method!r}")
        if not self.name:
            self.name = self.method
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name) or self.name in (".", "..", "baseline"):
            raise ValueError(f"name: must be a plain folder name (letters, digits, _.-), not 'baseline', got {self.name!r}")
        opts_cls = PASSES[self.method].Options
        if self.options is None:
            self.options = opts_cls()
        elif not isinstance(self.options, opts_cls):
            raise ValueError(f"options: must be {opts_cls.__name__}, got {type(self.options).__name__}")

    @classmethod
    def from_config(cls, raw: dict[str, Any], build: Builder, key: str) -> PassConfig:
        """A flat mapping (method/name/input + the method's options; an `options:` mapping is merged in) -> PassConfig.

        `build(cls, mapping, key)` turns a mapping into a dataclass: the run-config loader passes its typed builder
        (coercion, `Literal` checks, errors naming `key.option`), so a pass's options go through the same path as
        every other section; `from_mapping` passes plain construction for configs written in Python."""
        method = raw.get("method", "int8")
        if method not in PASSES:
            raise ValueError(f"method: must be one of {', '.join(PASSES)}, got {method!r}")
        opts_cls = PASSES[method].Options
        opts = dict(raw.get("options") or {})
        opts.update({k: v for k, v in raw.items() if k not in PASS_KEYS})
        known = {f.name for f in dataclasses.fields(opts_cls)}
        unknown = sorted(set(opts) - known)
        if unknown:
            raise ValueError(f"{unknown[0]}: not an option of method {method!r} (its options: {', '.join(sorted(known))})")
        head = build(cls, {k: raw[k] for k in ("method", "name", "input") if k in raw}, key)
        return dataclasses.replace(head, options=build(opts_cls, opts, key))

    @classmethod
    def from_mapping(cls, raw: dict[str, Any]) -> PassConfig:
        """A flat mapping -> PassConfig, for configs written in Python (no type coercion)."""
        return cls.from_config(raw, lambda c, d, _key: c(**d), "")

    def build(self) -> CompressionPass:
        return PASSES[self.method](self.options)

    @property
    def is_quant(self) -> bool:
        return PASSES[self.method].quantizes

    def as_options(self) -> dict[str, Any]:
        """The method's options as a plain dict (for the report and compression.json)."""
        return dataclasses.asdict(self.options)


def _default_passes() -> list[PassConfig]:
    return [PassConfig(method="int8")]


@dataclass
class CompressConfig:
    """The compress stage: an ordered list of passes, calibration and evaluation budgets."""

    passes: list[PassConfig] = field(default_factory=_default_passes)
    """Ordered passes, each a flat mapping of method, name, input and the method's options (PassConfig after
    validation), e.g. [{method: int8}, {method: gptq, name: gptq-q4_0, gguf_type: q4_0}, {method: wanda, sparsity: 0.5}]."""
    num_calib_tokens: int = 32768
    """Calibration tokens (GPTQ, Wanda, structured importance), taken from val tokens not used for eval."""
    calib_seq_len: int = 256
    """Window length of calibration sequences (clipped to the model's max_seq_len)."""
    num_eval_tokens: int = 65536
    """Val tokens scored for bits-per-byte, from the start of the val split."""
    eval_seq_len: int = 0
    """Window length for scoring; 0 means the model's max_seq_len."""
    batch_size: int = 8
    """Windows per forward during calibration and scoring."""
    num_gen_tokens: int = 64
    """New tokens per generation when measuring tokens/s (greedy, KV cache)."""
    gen_batch_size: int = 1
    """Sequences generated at once when measuring tokens/s."""
    num_prompt_tokens: int = 16
    """Tokens of val text used as the prompt for the sample and the speed measurement."""
    num_sample_tokens: int = 48
    """New tokens of the greedy sample stored in the report for each pass."""
    plot: bool = True
    """Write compressed/report.png (size against bits-per-byte)."""
    probes: bool = True
    """Run the story-quality and fairness probes (train.eval) on the baseline and every pass, when the caller wires them."""
    num_probe_prompts: int = 4
    """Prompts per probe (word-usage prompts, occupations' samples) when probes run: small, they run once per pass."""
    seed: int = 0
    """Seed for anything random (none of the current passes draws random numbers)."""
    recovery_tokens: int = 200_000
    """Training tokens of each prune pass's recovery (plain or distill alike, so the two compare at equal tokens)."""
    recovery_lr: float = 3e-4
    """Peak AdamW learning rate of recovery (Muon's is 10x, as in training from scratch); train's recipe otherwise."""
    distill_alpha: float = 0.5
    """Distillation recovery: loss = alpha * CE + (1 - alpha) * T^2 * KL(teacher || student)."""
    distill_temperature: float = 2.0
    """Distillation recovery: softmax temperature T."""

    def __post_init__(self) -> None:
        if not isinstance(self.passes, list):
            raise ValueError(f"passes: must be a list of pass configs, got {type(self.passes).__name__}")
        parsed: list[PassConfig] = []
        for i, p in enumerate(self.passes):
            if isinstance(p, PassConfig):
                parsed.append(p)
            elif isinstance(p, dict):
                try:
                    parsed.append(PassConfig.from_mapping(p))
                except (ValueError, TypeError) as e:
                    raise ValueError(f"passes: pass {i} ({p.get('name') or p.get('method')}): {e}") from None
            else:
                raise ValueError(f"passes: pass {i} must be a mapping, got {p!r}")
        self.passes = parsed
        names = [p.name for p in parsed]
        for i, p in enumerate(parsed):
            if p.name in names[:i]:
                raise ValueError(f"passes: pass names must be unique (set `name`), got {p.name!r} twice")
            if p.input != "baseline" and p.input not in names[:i]:
                raise ValueError(f"passes: pass {p.name!r} input must be 'baseline' or an earlier pass, got {p.input!r}")
        for f in ("num_calib_tokens", "calib_seq_len", "num_eval_tokens", "batch_size", "num_gen_tokens",
                  "gen_batch_size", "num_prompt_tokens", "num_sample_tokens"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{f}: must be a positive integer, got {v!r}")
        if not isinstance(self.recovery_tokens, int) or isinstance(self.recovery_tokens, bool) \
                or self.recovery_tokens <= 0:
            raise ValueError(f"recovery_tokens: must be a positive integer, got {self.recovery_tokens!r}")
        if not self.recovery_lr > 0:
            raise ValueError(f"recovery_lr: must be positive, got {self.recovery_lr}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ValueError(f"distill_alpha: must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            raise ValueError(f"distill_temperature: must be positive, got {self.distill_temperature}")
        if self.eval_seq_len < 0:
            raise ValueError(f"eval_seq_len: must be >= 0, got {self.eval_seq_len}")
