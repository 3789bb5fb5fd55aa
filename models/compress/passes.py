"""One interface for a compression pass, and the passes, registered by method name.

Why: a method used to be spread over parallel tables (a list of method names, the options each reads, the
runner's if/else per method). Now a method is one `CompressionPass` subclass and one options dataclass:
- `method`: the name used in YAML (`compress.passes: [{method: gptq, ...}]`),
- `Options`: a dataclass of its options, each with a docstring; it validates itself in `__post_init__`,
- `apply(model, ctx)`: compress `model` (a fresh copy of the pass's input) and return a `PassOutput`: the
  (possibly new, smaller) model, the quantized tensors by name when it quantizes, and facts for the report,
- `gguf_type(options)`: the llama.cpp block type the pass's weights already lie on (exported byte for byte),
  or None: its weights are full precision (pruned) or on a grid llama.cpp has no type for (int4 groups of 128),
- `exports`: which deliverables it can produce (for the docs and the export stage's checks).
Register with `@register`; `PASSES[method]` finds it. The runner measures, saves and reports every pass the
same way, so adding a method touches nothing else.

Example (a new method):
    @dataclass
    class MyOptions:
        bits: int = 3
        '''Bits per weight.'''

    @register
    class MyPass(CompressionPass):
        method = "my"
        Options = MyOptions
        exports = ("hf",)

        def apply(self, model, ctx):
            ...  # change model in place or build a new one
            return PassOutput(model, qtensors={...})
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from models.compress import ggml_quants
from models.compress.calibration import quantize_blocks
from models.compress.gptq import gptq_ggml, gptq_quantize
from models.compress.prune import masked_training, prunable_weights, prune
from models.compress.quantize import QTensor, is_embedding, quantizable_weights, quantize_int4, quantize_int8
from models.compress.structured import structured_prune


@dataclass
class PassContext:
    """What a pass may use besides its model: calibration windows, the teacher for recovery, budgets."""

    calib_NT: torch.Tensor
    batch_size: int
    teacher: nn.Module
    recover: Callable[[nn.Module, nn.Module | None], nn.Module] | None = None
    """Recovery training `recover(student, teacher) -> student` (teacher None: plain CE); None: prune passes skip it."""
    eval_bpb: Callable[[nn.Module], float] | None = None


@dataclass
class PassOutput:
    model: nn.Module
    qtensors: dict[str, QTensor] = field(default_factory=dict)
    """Quantized weights by parameter name (empty for pruning passes: their weights are plain tensors)."""
    info: dict[str, Any] = field(default_factory=dict)
    """Method-specific facts for the report (structured summary, recovery, ...)."""


class CompressionPass:
    method: ClassVar[str]
    Options: ClassVar[type]
    exports: ClassVar[tuple[str, ...]] = ("hf", "gguf")
    """hf: the full-precision HF folder; gguf: GGUF files; hf-quant: a quantized HF folder (compressed-tensors)."""
    quantizes: ClassVar[bool] = False

    def __init__(self, options: Any) -> None:
        self.options = options

    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        raise NotImplementedError

    def gguf_type(self) -> str | None:
        return None


PASSES: dict[str, type[CompressionPass]] = {}


def register(cls: type[CompressionPass]) -> type[CompressionPass]:
    PASSES[cls.method] = cls
    return cls


def _check_fraction(name: str, v: float) -> None:
    if not 0.0 <= v < 1.0:
        raise ValueError(f"{name}: must be in [0, 1), got {v}")


def _check_choice(name: str, v: Any, choices: tuple) -> None:
    if v not in choices:
        raise ValueError(f"{name}: must be one of {', '.join(map(str, choices))}, got {v!r}")


# ---------------------------------------------------------------------------------------------------------
# Quantization


Embeddings = Literal["int8", "int4", "fp32"]
GGUF_GRID_TYPES = ("", *ggml_quants.GGML_TYPES)


def _quantize_rest(model: nn.Module, done: dict[str, QTensor], block_kind: str, embeddings: str, group_size: int,
                   sym: bool, gguf_type: str) -> dict[str, QTensor]:
    """Quantize every quantizable weight not in `done`: block weights as `block_kind`, the embedding (and an
    untied head) as `embeddings`; on llama.cpp grids when `gguf_type` is set (embeddings int8 -> q8_0)."""
    qt = dict(done)
    block_weights = set(prunable_weights(model))
    for name, w in quantizable_weights(model).items():
        if name in qt:
            continue
        outer = name not in block_weights or is_embedding(model, name)
        kind = embeddings if outer else block_kind
        if kind == "fp32":
            continue
        if gguf_type:
            t = {"int8": "q8_0", "int4": "q4_0"}.get(kind, kind)
            blocks = ggml_quants.quantize_rtn(t, w.data)
            q = QTensor(t, tuple(w.shape), blocks, torch.empty(0, dtype=torch.float16), None, ggml_quants.BLOCK)
        elif kind == "int8":
            q = quantize_int8(w.data)
        else:
            q = quantize_int4(w.data, group_size, sym)
        w.data.copy_(q.dequantize(w.dtype))
        qt[name] = q
    return qt


@dataclass
class Int8Options:
    embeddings: Embeddings = "int8"
    """Precision of the token embedding (and of an untied output head)."""
    runtime: Literal["auto", "dequant", "torchao", "int8"] = "auto"
    """Runtime measured for tokens/s (auto = torchao if installed, else Int8Linear)."""
    activations: Literal["none", "int8"] = "none"
    """With torchao: also quantize activations dynamically (Int8DynamicActivationInt8WeightConfig)."""

    def __post_init__(self) -> None:
        _check_choice("embeddings", self.embeddings, ("int8", "int4", "fp32"))
        _check_choice("runtime", self.runtime, ("auto", "dequant", "torchao", "int8"))
        _check_choice("activations", self.activations, ("none", "int8"))


@register
class Int8Pass(CompressionPass):
    """Per-output-channel symmetric int8 weights (fp16 scale per row)."""

    method = "int8"
    Options = Int8Options
    exports = ("hf", "hf-quant", "gguf")
    quantizes = True

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        return PassOutput(model, _quantize_rest(model, {}, "int8", self.options.embeddings, 128, True, ""))


@dataclass
class Int4Options:
    group_size: int = 128
    """Inputs sharing one scale (32, 64, 128 or 256); falls back to a divisor of the row length."""
    sym: bool = False
    """Symmetric codes (no zero point) instead of asymmetric min/max."""
    embeddings: Embeddings = "int8"
    """Precision of the token embedding (and of an untied output head)."""

    def __post_init__(self) -> None:
        _check_choice("group_size", self.group_size, (32, 64, 128, 256))
        _check_choice("embeddings", self.embeddings, ("int8", "int4", "fp32"))


@register
class Int4Pass(CompressionPass):
    """Group-wise round-to-nearest int4."""

    method = "int4"
    Options = Int4Options
    exports = ("hf", "hf-quant", "gguf")
    quantizes = True

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options
        return PassOutput(model, _quantize_rest(model, {}, "int4", o.embeddings, o.group_size, o.sym, ""))


@dataclass
class GptqOptions:
    gguf_type: str = ""
    """'' = our int4 groups (group_size, sym); q4_0, q4_1, q5_0, q5_1 or q8_0 = llama.cpp's block grid, exported
    to GGUF byte for byte (the embedding then goes on q8_0, or stays fp32 with embeddings: fp32)."""
    group_size: int = 128
    """Int4 groups: inputs sharing one scale (32, 64, 128 or 256); ignored on a GGUF grid (always 32)."""
    sym: bool = False
    """Int4 groups: symmetric codes instead of asymmetric min/max."""
    damp: float = 0.01
    """Dampening added to the Hessian diagonal, as a fraction of its mean."""
    block_size: int = 128
    """Columns per lazy batch update."""
    act_order: bool = False
    """Int4 groups: visit columns by decreasing Hessian diagonal (with static groups)."""
    embeddings: Embeddings = "int8"
    """Precision of the token embedding (and of an untied output head)."""

    def __post_init__(self) -> None:
        self.gguf_type = str(self.gguf_type).lower()
        _check_choice("gguf_type", self.gguf_type, GGUF_GRID_TYPES)
        _check_choice("group_size", self.group_size, (32, 64, 128, 256))
        _check_choice("embeddings", self.embeddings, ("int8", "int4", "fp32"))
        if not 0.0 <= self.damp < 1.0:
            raise ValueError(f"damp: must be in [0, 1), got {self.damp}")
        if self.block_size <= 0:
            raise ValueError(f"block_size: must be positive, got {self.block_size}")
        if self.act_order and self.gguf_type:
            raise ValueError("act_order: not supported on a GGUF grid (its blocks must stay contiguous), got true")


@register
class GptqPass(CompressionPass):
    """GPTQ: sequential, Hessian-corrected quantization of the block weights (Frantar et al. 2022)."""

    method = "gptq"
    Options = GptqOptions
    exports = ("hf", "hf-quant", "gguf")
    quantizes = True

    def gguf_type(self) -> str | None:
        return self.options.gguf_type or None

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options

        def quantize(_name: str, w: torch.Tensor, gram: torch.Tensor) -> QTensor:
            if o.gguf_type:
                return gptq_ggml(w, gram, o.gguf_type, o.damp, o.block_size)
            return gptq_quantize(w, gram, o.group_size, o.sym, o.damp, o.block_size, o.act_order)

        qt = quantize_blocks(model, ctx.calib_NT, ctx.batch_size, "gptq", quantize)
        block_kind = o.gguf_type or "int4"
        return PassOutput(model, _quantize_rest(model, qt, block_kind, o.embeddings, o.group_size, o.sym, o.gguf_type))


@dataclass
class RtnOptions:
    gguf_type: str = "q8_0"
    """llama.cpp block grid of the block weights: q8_0, q4_0, q4_1, q5_0 or q5_1."""
    embeddings: Embeddings = "int8"
    """Token embedding (and untied head): int8 = q8_0, int4 = q4_0, fp32 = unquantized."""
    fit: Literal["search", "ref"] = "search"
    """Scale per block: 'ref' = llama.cpp's own reference rounding (bit-identical to its quantizer without an
    importance matrix), 'search' = the best of a few shrunk scales (same grid, lower error)."""

    def __post_init__(self) -> None:
        self.gguf_type = str(self.gguf_type).lower()
        _check_choice("gguf_type", self.gguf_type, ggml_quants.GGML_TYPES)
        _check_choice("embeddings", self.embeddings, ("int8", "int4", "fp32"))
        _check_choice("fit", self.fit, ("search", "ref"))


@register
class RtnPass(CompressionPass):
    """Round-to-nearest onto a llama.cpp block grid (no calibration): the GGUF holds exactly these bytes."""

    method = "rtn"
    Options = RtnOptions
    exports = ("hf", "hf-quant", "gguf")
    quantizes = True

    def gguf_type(self) -> str | None:
        return self.options.gguf_type

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options
        qt: dict[str, QTensor] = {}
        block_weights = set(prunable_weights(model))
        for name, w in quantizable_weights(model).items():
            outer = name not in block_weights or is_embedding(model, name)
            t = ({"int8": "q8_0", "int4": "q4_0"}.get(o.embeddings) if outer else o.gguf_type)
            if t is None:
                continue
            blocks = (ggml_quants.quantize_ref(t, w.data) if o.fit == "ref" else ggml_quants.quantize_rtn(t, w.data))
            q = QTensor(t, tuple(w.shape), blocks, torch.empty(0, dtype=torch.float16), None, ggml_quants.BLOCK)
            w.data.copy_(q.dequantize(w.dtype))
            qt[name] = q
        return PassOutput(model, qt)


# ---------------------------------------------------------------------------------------------------------
# Pruning


RECOVERY_MODES = ("distill", "plain")


def _recover(model: nn.Module, ctx: PassContext, masks: dict[str, torch.Tensor], enabled: bool,
             mode: str = "distill") -> tuple[nn.Module, dict]:
    """Recovery training when enabled and the caller wired it: `ctx.recover(student, teacher)` with the pass's input
    as the teacher ('distill') or None ('plain'); masks keep pruned weights exactly zero throughout."""
    info: dict[str, Any] = {"recovered": False}
    if enabled and ctx.recover is not None:
        if ctx.eval_bpb is not None:
            info["val_bpb_before_recovery"] = ctx.eval_bpb(model)
        teacher = ctx.teacher.eval() if mode == "distill" else None
        with masked_training(model, masks):
            model = ctx.recover(model, teacher)
        with torch.no_grad():
            for name, keep in masks.items():
                model.get_parameter(name).mul_(keep)
        info["recovered"] = True
        info["recovery"] = mode
    model.eval()
    return model, info


@dataclass
class MagnitudeOptions:
    sparsity: float = 0.5
    """Fraction of block weights set to zero."""
    per_row: bool = False
    """Compare weights within each output row instead of within the whole layer."""
    recover: bool = True
    """Run recovery training after pruning when the caller provides it (the compress stage does: train's recipe)."""
    recovery: Literal["distill", "plain"] = "distill"
    """How to recover: 'distill' (logit distillation from this pass's input: alpha * CE + (1 - alpha) * T^2 * KL at
    temperature T) or 'plain' (next-token cross-entropy only)."""

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        _check_choice("recovery", self.recovery, RECOVERY_MODES)


@register
class MagnitudePass(CompressionPass):
    """Unstructured magnitude pruning (exports dense, sparsity stated in the card)."""

    method = "magnitude"
    Options = MagnitudeOptions

    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options
        masks = prune(model, "magnitude", o.sparsity, "magnitude", o.per_row, ctx.calib_NT, ctx.batch_size)
        model, info = _recover(model, ctx, masks, o.recover, o.recovery)
        return PassOutput(model, info=info)


@dataclass
class WandaOptions:
    sparsity: float = 0.5
    """Fraction of block weights set to zero."""
    recover: bool = True
    """Run recovery training after pruning when the caller provides it (the compress stage does: train's recipe)."""
    recovery: Literal["distill", "plain"] = "distill"
    """How to recover: 'distill' (logit distillation from this pass's input: alpha * CE + (1 - alpha) * T^2 * KL at
    temperature T) or 'plain' (next-token cross-entropy only)."""

    def __post_init__(self) -> None:
        _check_fraction("sparsity", self.sparsity)
        _check_choice("recovery", self.recovery, RECOVERY_MODES)


@register
class WandaPass(CompressionPass):
    """Wanda: |W| * ||X|| per output row (Sun et al. 2023)."""

    method = "wanda"
    Options = WandaOptions

    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        masks = prune(model, "wanda", self.options.sparsity, "wanda", True, ctx.calib_NT, ctx.batch_size)
        model, info = _recover(model, ctx, masks, self.options.recover, self.options.recovery)
        return PassOutput(model, info=info)


@dataclass
class Sparse24Options:
    metric: Literal["magnitude", "wanda"] = "wanda"
    """Score deciding which 2 of every 4 weights stay."""
    recover: bool = True
    """Run recovery training after pruning when the caller provides it (the compress stage does: train's recipe)."""
    recovery: Literal["distill", "plain"] = "distill"
    """How to recover: 'distill' (logit distillation from this pass's input: alpha * CE + (1 - alpha) * T^2 * KL at
    temperature T) or 'plain' (next-token cross-entropy only)."""

    def __post_init__(self) -> None:
        _check_choice("metric", self.metric, ("magnitude", "wanda"))
        _check_choice("recovery", self.recovery, RECOVERY_MODES)


@register
class Sparse24Pass(CompressionPass):
    """2:4 semi-structured sparsity (exports dense, sparsity stated in the card)."""

    method = "sparse24"
    Options = Sparse24Options

    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        masks = prune(model, "sparse24", 0.5, self.options.metric, True, ctx.calib_NT, ctx.batch_size)
        model, info = _recover(model, ctx, masks, self.options.recover, self.options.recovery)
        return PassOutput(model, info=info)


@dataclass
class StructuredOptions:
    heads_fraction: float = 0.3
    """Fraction of GQA groups (kv head + its query heads) removed per layer."""
    mlp_fraction: float = 0.3
    """Fraction of MLP hidden neurons removed per layer (dense models)."""
    experts_fraction: float = 0.0
    """Fraction of MoE experts removed per layer, least routed first."""
    recover: bool = True
    """Run recovery training after pruning when the caller provides it (the compress stage does: train's recipe)."""
    recovery: Literal["distill", "plain"] = "distill"
    """How to recover: 'distill' (logit distillation from this pass's input: alpha * CE + (1 - alpha) * T^2 * KL at
    temperature T) or 'plain' (next-token cross-entropy only)."""

    def __post_init__(self) -> None:
        for f in ("heads_fraction", "mlp_fraction", "experts_fraction"):
            _check_fraction(f, getattr(self, f))
        _check_choice("recovery", self.recovery, RECOVERY_MODES)


@register
class StructuredPass(CompressionPass):
    """Structured width pruning: a smaller dense model (exports at its pruned shape)."""

    method = "structured"
    Options = StructuredOptions

    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options
        model, summary = structured_prune(model, ctx.calib_NT, o.heads_fraction, o.mlp_fraction,
                                          o.experts_fraction, ctx.batch_size)
        model, info = _recover(model, ctx, {}, o.recover, o.recovery)
        return PassOutput(model, info={"structured": summary, **info})


# Passes defined in their own files register themselves on import (after everything above is defined).
from models.compress import lowbit, lowrank  # noqa: E402, F401
