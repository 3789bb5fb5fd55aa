"""Weight quantization: int8 per-channel symmetric and int4 group-wise, their storage and their runtimes.

Design and invariants
- Every weight is quantized along its *last* dimension, the input dimension of an `nn.Linear` weight
  (out, in) and of each expert of a 3-D MoE weight (E, out, in) alike: int8 keeps one scale per row
  ("per output channel"), int4 one scale (and, asymmetric, one zero point) per group of `group_size`
  consecutive inputs. The leading dimensions are never mixed, so 3-D expert tensors need no special case.
- Scales are rounded to fp16 *before* the values are quantized with them, so `dequantize(quantize(w))`
  is exactly what is stored and what the runtime computes; nothing is quantized twice.
- int4 codes are packed two per byte (low nibble = even column) so bytes on disk are 4-bit bytes.
  A group size that does not divide the row falls back to the largest power-of-two divisor >= 32 (every
  row length of a ModelConfig is a multiple of 32); the size used is recorded per tensor.
- Runtimes: `dequant` writes the dequantized fp weights into an ordinary model (always correct, any
  device, any layer kind); `torchao` applies torchao's int8 `quantize_` to the nn.Linear layers where
  torchao is installed (its own per-channel re-quantization of our already-on-grid weights) and keeps the
  dequantized 3-D expert weights, which torchao skips; `int8` swaps nn.Linear for `Int8Linear`, a small
  dependency-free module holding int8 weights (the fallback when torchao is missing).

Shape legend: O output rows (leading dims flattened), I input columns, N groups per row, S group size.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

QuantKind = Literal["int8", "int4", "int3", "int2", "lowrank", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
"""int8 / int4 / int3 / int2: our formats (int3, int2: models/compress/lowbit.py); lowrank: no grid, only the factors
of its `lowrank` term (models/compress/lowrank.py); q8_0 ... q5_1: llama.cpp block formats (models/compress/ggml_quants.py), whose `codes`
are the GGUF block bytes themselves (scales inside), so the GGUF writer copies them unchanged."""
OUR_KINDS = ("int8", "int4", "int3", "int2", "lowrank")
FP16_TINY = 1e-7  # smallest scale kept (fp16 subnormals reach ~6e-8); an all-zero row quantizes to zeros


@dataclass
class QTensor:
    """A quantized weight: codes + scales (+ zero points) and how to read them back."""

    kind: QuantKind
    shape: tuple[int, ...]
    codes: torch.Tensor
    """int8 (int8 kind, same shape as the weight) or uint8 with two 4-bit codes per byte (int4)."""
    scale: torch.Tensor
    """fp16, shape[:-1] (int8) or shape[:-1] + (num_groups,) (int4)."""
    zero: torch.Tensor | None = None
    """uint8 zero points (asymmetric int4), same shape as scale; None when symmetric."""
    group_size: int = 0
    """Inputs per scale along the last dim (int4); 0 for int8 (the whole row)."""
    lowrank: Any = None
    """A low-rank term U V added to the grid's values (models/compress/lowrank.py LowRank), or None."""

    @property
    def is_ggml(self) -> bool:
        return self.kind not in OUR_KINDS

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        base = self._dequantize_grid(dtype)
        return base if self.lowrank is None else base + self.lowrank.dense().to(dtype).reshape(self.shape)

    def _dequantize_grid(self, dtype: torch.dtype) -> torch.Tensor:
        if self.kind == "lowrank":
            return torch.zeros(self.shape, dtype=dtype)
        if self.kind in ("int2", "int3"):
            from models.compress.lowbit import dequantize_lowbit

            return dequantize_lowbit(self, dtype)
        if self.is_ggml:
            from models.compress.ggml_quants import dequantize

            return dequantize(self.kind, self.codes, self.shape, dtype)
        if self.kind == "int8":
            return (self.codes.to(dtype) * self.scale.to(dtype)[..., None]).reshape(self.shape)
        q_ONS = unpack_int4(self.codes, self.shape[-1]).reshape(*self.shape[:-1], -1, self.group_size)
        q_ONS = q_ONS.to(dtype)
        zero = self.zero.to(dtype)[..., None] if self.zero is not None else 8.0
        return ((q_ONS - zero) * self.scale.to(dtype)[..., None]).reshape(self.shape)

    def nbytes(self) -> int:
        """Bytes of the codes, scales, zero points and low-rank factors."""
        lr = self.lowrank.nbytes() if self.lowrank is not None else 0
        if self.is_ggml:
            return self.codes.numel() + lr
        extra = self.zero.numel() * self.zero.element_size() if self.zero is not None else 0
        return self.codes.numel() * self.codes.element_size() + self.scale.numel() * 2 + extra + lr


def effective_group_size(row_len: int, group_size: int) -> int:
    """`group_size` if it divides the row, else the largest power-of-two divisor in [32, group_size]."""
    if row_len % group_size == 0:
        return group_size
    g = group_size
    while g > 32 and row_len % g:
        g //= 2
    if row_len % g:
        raise ValueError(f"group_size: no group size <= {group_size} divides a row of {row_len}, got {group_size}")
    return g


def int8_scale(w: torch.Tensor) -> torch.Tensor:
    """Per-row symmetric scale amax/127, rounded to fp16 (returned in fp32)."""
    amax = w.detach().abs().amax(dim=-1).float()
    return (amax / 127.0).clamp_min(FP16_TINY).half().float()


def quantize_int8(w: torch.Tensor) -> QTensor:
    """Symmetric per-output-channel int8 (codes in [-127, 127])."""
    scale = int8_scale(w)
    q = torch.clamp(torch.round(w.detach().float() / scale[..., None]), -127, 127).to(torch.int8)
    return QTensor("int8", tuple(w.shape), q, scale.half())


def int4_params(
    w_ONS: torch.Tensor, sym: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero (fp32, fp16-rounded scale; integer-valued zero) for groups in the last dim."""
    w = w_ONS.detach().float()
    if sym:
        amax = w.abs().amax(dim=-1)
        scale = (amax / 7.0).clamp_min(FP16_TINY).half().float()
        return scale, torch.full_like(scale, 8.0)
    wmin = w.amin(dim=-1).clamp(max=0.0)
    wmax = w.amax(dim=-1).clamp(min=0.0)
    scale = ((wmax - wmin) / 15.0).clamp_min(FP16_TINY).half().float()
    zero = torch.clamp(torch.round(-wmin / scale), 0, 15)
    return scale, zero


def quantize_with(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Integer codes in [0, 15] of w (..., S) given broadcastable scale/zero (..., 1)."""
    return torch.clamp(torch.round(w / scale) + zero, 0, 15)


def quantize_int4(w: torch.Tensor, group_size: int = 128, sym: bool = False) -> QTensor:
    """Round-to-nearest int4, one fp16 scale (+ 4-bit zero, asymmetric) per group of inputs."""
    g = effective_group_size(w.shape[-1], group_size)
    w_ONS = w.detach().float().reshape(*w.shape[:-1], -1, g)
    scale, zero = int4_params(w_ONS, sym)
    q_ONS = quantize_with(w_ONS, scale[..., None], zero[..., None])
    return int4_from_codes(q_ONS.reshape(w.shape), scale, None if sym else zero, g)


def int4_from_codes(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, group_size: int) -> QTensor:
    return QTensor(
        "int4",
        tuple(q.shape),
        pack_int4(q.to(torch.uint8)),
        scale.half(),
        zero.to(torch.uint8) if zero is not None else None,
        group_size,
    )


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(..., I) codes in [0, 15] -> (..., ceil(I/2)) uint8, even column in the low nibble."""
    if q.shape[-1] % 2:
        q = F.pad(q, (0, 1))
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, row_len: int) -> torch.Tensor:
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1)[..., :row_len]


# ---------------------------------------------------------------------------------------------------------
# Which tensors a pass quantizes


def quantizable_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Name -> weight of every matrix worth quantizing: nn.Linear / nn.Embedding weights and >= 2-D
    parameters such as 3-D MoE expert weights (each a distinct storage: tied weights appear once). Norm
    vectors and the MoE router stay in full precision (tiny, and routing is sensitive to them)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=True):
        if p.ndim < 2 or "router" in name or "gate_inp" in name:
            continue
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        out[name] = p
    return out


def param_aliases(model: nn.Module) -> dict[str, str]:
    """Every parameter name -> the canonical name of its storage (tied weights map to the first name)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out[name] = first.setdefault(p.data_ptr(), name)
    return out


def is_embedding(model: nn.Module, name: str) -> bool:
    mod_name = name.rsplit(".", 1)[0]
    mod = dict(model.named_modules()).get(mod_name)
    return isinstance(mod, nn.Embedding)


# ---------------------------------------------------------------------------------------------------------
# Runtimes


class Int8Linear(nn.Module):
    """y = (x @ q^T) * scale with int8 weights kept int8 in memory (dependency-free fallback runtime)."""

    def __init__(self, codes_OI: torch.Tensor, scale_O: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = codes_OI.shape[1], codes_OI.shape[0]
        self.register_buffer("codes_OI", codes_OI.to(torch.int8))
        self.register_buffer("scale_O", scale_O.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.codes_OI.to(x.dtype)) * self.scale_O.to(x.dtype)


def torchao_available() -> bool:
    try:
        with _quiet():
            import torchao  # noqa: F401
    except Exception:
        return False
    return True


@contextlib.contextmanager
def _quiet():
    """torchao prints loader noise for CUDA-only extensions on import; keep stderr clean."""
    level = logging.root.level
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
        logging.root.setLevel(level)


def apply_runtime(
    model: nn.Module,
    qtensors: dict[str, QTensor],
    runtime: Literal["dequant", "torchao", "int8", "auto", "factored"] = "auto",
    activations: Literal["none", "int8"] = "none",
) -> str:
    """Turn a model holding dequantized weights into the chosen runtime; returns the runtime used.

    `auto` picks torchao for int8 weights when it is installed, else `int8` (Int8Linear), and `dequant`
    for int4 (torchao's CPU int4 kernels need bf16 tinygemm layouts; our dequantized weights are exact).
    """
    aliases = param_aliases(model)
    int8_linears = [
        name.rsplit(".", 1)[0]
        for name, canon in aliases.items()
        if canon in qtensors
        and qtensors[canon].kind == "int8"
        and isinstance(_module(model, name.rsplit(".", 1)[0]), nn.Linear)
    ]
    if runtime == "auto":
        if not int8_linears:
            runtime = "dequant"
        else:
            runtime = "torchao" if torchao_available() else "int8"
    if runtime == "dequant":
        return runtime
    if runtime == "factored":
        from models.compress.lowrank import apply_factored

        return apply_factored(model, qtensors)
    if runtime == "torchao":
        with _quiet():
            from torchao.quantization import (
                Int8DynamicActivationInt8WeightConfig,
                Int8WeightOnlyConfig,
                quantize_,
            )
        names = set(int8_linears)
        config = Int8DynamicActivationInt8WeightConfig() if activations == "int8" else Int8WeightOnlyConfig()
        with _quiet():
            quantize_(model, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in names)
        return "torchao-" + ("int8-dynamic" if activations == "int8" else "int8-weight-only")
    if runtime == "int8":
        for mod_name in int8_linears:
            q = qtensors[aliases[mod_name + ".weight"]]
            parent_name, _, child = mod_name.rpartition(".")
            parent = _module(model, parent_name)
            setattr(parent, child, Int8Linear(q.codes, q.scale))
        return "int8-linear"
    raise ValueError(f"runtime: must be one of dequant, torchao, int8, auto, got {runtime!r}")


def _module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model
