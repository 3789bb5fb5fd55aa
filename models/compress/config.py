"""CompressConfig: which compression passes to try, in which order, and how they are measured.

Design and invariants
- A pass is one method with its options; `passes` is an ordered list, run in that order. Each pass
  starts from the trained model (`input: baseline`) or from an earlier pass's output by name, so a
  chain such as structured pruning + recovery -> int8 is two passes, and the report shows both steps.
- Pass names are unique (they are folder names under compressed/); an empty name means the method name.
- Plain dicts in `passes` (as YAML gives them) are turned into PassConfig here, so the lead's loader
  need not know about nested lists of dataclasses.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["int8", "int4", "gptq", "magnitude", "wanda", "sparse24", "structured"]
METHODS = ("int8", "int4", "gptq", "magnitude", "wanda", "sparse24", "structured")
QUANT_METHODS = ("int8", "int4", "gptq")


@dataclass
class PassConfig:
    """One compression pass: a method and its options (options a method does not use are ignored)."""

    method: Method = "int8"
    """int8 (per-channel weight-only), int4 (group-wise round-to-nearest), gptq (int4), magnitude, wanda, sparse24 (2:4), structured (heads/neurons/experts)."""
    name: str = ""
    """Folder under compressed/ and label in the report; '' means the method name."""
    input: str = "baseline"
    """Start from the trained model ('baseline') or from an earlier pass, by name."""
    group_size: int = 128
    """int4/gptq: inputs sharing one scale (32, 64 or 128); falls back to a divisor of the row length."""
    sym: bool = False
    """int4/gptq: symmetric codes (no zero point) instead of asymmetric min/max."""
    damp: float = 0.01
    """gptq: dampening added to the Hessian diagonal, as a fraction of its mean."""
    block_size: int = 128
    """gptq: columns per lazy batch update."""
    act_order: bool = False
    """gptq: visit columns by decreasing Hessian diagonal (with static groups)."""
    embeddings: Literal["int8", "int4", "fp32"] = "int8"
    """Quant passes: precision of the token embedding (and of an untied output head unless gptq takes it)."""
    sparsity: float = 0.5
    """magnitude/wanda: fraction of block weights set to zero."""
    metric: Literal["magnitude", "wanda"] = "wanda"
    """sparse24: score deciding which 2 of every 4 weights stay."""
    per_row: bool = False
    """magnitude: compare weights within each output row instead of within the whole layer."""
    heads_fraction: float = 0.3
    """structured: fraction of GQA groups (kv head + its query heads) removed per layer."""
    mlp_fraction: float = 0.3
    """structured: fraction of MLP hidden neurons removed per layer (dense models)."""
    experts_fraction: float = 0.0
    """structured: fraction of MoE experts removed per layer, least routed first."""
    recover: bool = True
    """Pruning passes: run the recovery (distillation) callable when the caller provides one."""
    runtime: Literal["auto", "dequant", "torchao", "int8"] = "auto"
    """int8: runtime measured for tokens/s (auto = torchao if installed, else Int8Linear)."""
    activations: Literal["none", "int8"] = "none"
    """int8 with torchao: also quantize activations dynamically (Int8DynamicActivationInt8WeightConfig)."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.name:
            self.name = self.method
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name) or self.name in (".", "..", "baseline"):
            raise ValueError(f"name: must be a plain folder name (letters, digits, _.-), not 'baseline', got {self.name!r}")
        if self.group_size not in (32, 64, 128, 256):
            raise ValueError(f"group_size: must be 32, 64, 128 or 256, got {self.group_size}")
        if not 0.0 <= self.damp < 1.0:
            raise ValueError(f"damp: must be in [0, 1), got {self.damp}")
        if self.block_size <= 0:
            raise ValueError(f"block_size: must be positive, got {self.block_size}")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity: must be in [0, 1), got {self.sparsity}")
        for f in ("heads_fraction", "mlp_fraction", "experts_fraction"):
            if not 0.0 <= getattr(self, f) < 1.0:
                raise ValueError(f"{f}: must be in [0, 1), got {getattr(self, f)}")
        if self.embeddings not in ("int8", "int4", "fp32"):
            raise ValueError(f"embeddings: must be int8, int4 or fp32, got {self.embeddings!r}")
        if self.metric not in ("magnitude", "wanda"):
            raise ValueError(f"metric: must be magnitude or wanda, got {self.metric!r}")
        if self.runtime not in ("auto", "dequant", "torchao", "int8"):
            raise ValueError(f"runtime: must be auto, dequant, torchao or int8, got {self.runtime!r}")
        if self.activations not in ("none", "int8"):
            raise ValueError(f"activations: must be none or int8, got {self.activations!r}")

    @property
    def is_quant(self) -> bool:
        return self.method in QUANT_METHODS

    def options(self) -> dict[str, Any]:
        """The options this method uses (for the report)."""
        use = {
            "int8": ("embeddings", "runtime", "activations"),
            "int4": ("group_size", "sym", "embeddings"),
            "gptq": ("group_size", "sym", "damp", "block_size", "act_order", "embeddings"),
            "magnitude": ("sparsity", "per_row", "recover"),
            "wanda": ("sparsity", "recover"),
            "sparse24": ("metric", "recover"),
            "structured": ("heads_fraction", "mlp_fraction", "experts_fraction", "recover"),
        }[self.method]
        return {k: getattr(self, k) for k in use}


def _default_passes() -> list[PassConfig]:
    return [PassConfig(method="int8")]


@dataclass
class CompressConfig:
    """The compress stage: an ordered list of passes, calibration and evaluation budgets."""

    passes: list[PassConfig] = field(default_factory=_default_passes)
    """Ordered passes, e.g. [{method: int8}, {method: gptq, group_size: 64}, {method: wanda, sparsity: 0.5}]."""
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

    def __post_init__(self) -> None:
        if not isinstance(self.passes, list):
            raise ValueError(f"passes: must be a list of pass configs, got {type(self.passes).__name__}")
        parsed: list[PassConfig] = []
        for i, p in enumerate(self.passes):
            if isinstance(p, PassConfig):
                parsed.append(p)
            elif isinstance(p, dict):
                known = {f.name for f in dataclasses.fields(PassConfig)}
                unknown = sorted(set(p) - known)
                if unknown:
                    raise ValueError(f"passes: pass {i} has unknown option {unknown[0]!r}, got {p}")
                try:
                    parsed.append(PassConfig(**p))
                except ValueError as e:
                    raise ValueError(f"passes: pass {i}: {e}") from None
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
        if self.eval_seq_len < 0:
            raise ValueError(f"eval_seq_len: must be >= 0, got {self.eval_seq_len}")
