"""Quantization-aware training: fake quantization onto llama.cpp's grids with a straight-through estimator.

Why: a model trained with its weights already on the grid it ships on loses far less than one rounded after
training (BitNet b1.58 trains ternary weights from scratch). The grids are the ones the GGUF file stores, so
`models/export/qat_gguf.py` writes the trained weights bit for bit:
- `int4`: llama.cpp's Q4_0 (blocks of 32 consecutive inputs along a row; d = the block's signed absmax / -8 in
  fp16; q = clamp(trunc(x / d + 8.5), 0, 15); value d * (q - 8)), exactly `ggml_quants.quantize_ref`'s rounding,
  so re-quantizing the trained weights with llama.cpp's reference quantizer reproduces them.
- `ternary`: BitNet b1.58's absmean: s = fp16(mean |w|) per block of `block` inputs along each row (256 = the
  TQ1_0 / TQ2_0 block; 0 = one scale per tensor), value s * clamp(round(w / s), -1, 1). llama.cpp's TQ types
  store d = fp16(max |block|) and codes in {-1, 0, 1}; on ternary values max |block| is s (or 0 when the block
  is all zeros), so TQ1_0 / TQ2_0 hold them exactly. (Absmean is not idempotent: on {-s, 0, s} the mean is below
  s, so a second QAT phase on a baked ternary model starts from a rescaled grid; the export never re-applies it.) Rows that 256 does not divide use the largest of 128, 64,
  32 that does (such tensors go to the file as Q4_0 with d = s, codes {7, 8, 9}, which holds {-s, 0, s} exactly).

Design and invariants (torchtitan's model converters)
- Applied from outside the model: `convert(model, mode, ...)` swaps the class of every `nn.Linear` inside the
  transformer blocks to `QATLinear` (and, with `embeddings=True`, the token embedding and the output head to the
  int4 grid). The parameter stays the same `weight` tensor, so state dicts, checkpoints, EMA and the optimizer's
  groups (Muon on the block matrices) are unchanged: the optimizer keeps and updates the full-precision shadow
  weights; only the forward sees the quantized ones.
- Straight-through estimator: the forward uses w + (Q(w) - w).detach(), so dL/dw = dL/dQ(w) (identity). Q4_0's
  scale is the block's absmax, so no weight lies outside its range (the +absmax side of a block rounds 8 -> 7,
  one value per block); for ternary, BitNet's own code uses the same plain identity.
- `bake(model)` writes Q(w) into the weights and turns the modules back into plain ones: the final model dir holds
  the on-grid weights (what validation scored) and any later consumer (export, compress, generate) sees them.

Shape legend: R rows (leading dims flattened), N blocks per row, B values per block.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

QATMode = Literal["none", "int4", "ternary"]
QAT_MODES = ("none", "int4", "ternary")
Q4_BLOCK = 32
TQ_BLOCK = 256


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def q4_0_fake(w: torch.Tensor) -> torch.Tensor:
    """Values of `w` on llama.cpp's Q4_0 grid with its reference rounding (ggml_quants.quantize_ref)."""
    if w.shape[-1] % Q4_BLOCK:
        raise ValueError(f"qat int4: rows must be multiples of {Q4_BLOCK}, got a row of {w.shape[-1]}")
    x_RB = w.float().reshape(-1, Q4_BLOCK)
    idx = x_RB.abs().argmax(-1, keepdim=True)
    d_R1 = x_RB.gather(-1, idx) / -8.0  # unrounded, as llama.cpp computes 1/d before storing d in fp16
    inv = torch.where(d_R1 == 0, torch.zeros_like(d_R1), 1.0 / torch.where(d_R1 == 0, torch.ones_like(d_R1), d_R1))
    q = torch.clamp(torch.trunc(x_RB * inv + 8.5), 0, 15)
    return (_fp16(d_R1) * (q - 8.0)).reshape(w.shape).to(w.dtype)


def ternary_block(row_len: int, block: int) -> int:
    """Scale-block length for a row: `block` if it divides the row, else the largest of 128, 64, 32 that does;
    0 (per tensor) stays 0."""
    if block == 0:
        return 0
    for b in (block, 128, 64, 32):
        if b <= block and row_len % b == 0:
            return b
    raise ValueError(f"qat ternary: rows must be multiples of 32, got a row of {row_len}")


def ternary_scale(w: torch.Tensor, block: int) -> torch.Tensor:
    """fp16-valued absmean scales: shape (R, N, 1) for blocks, (1, 1, 1) per tensor."""
    b = ternary_block(w.shape[-1], block)
    x = w.detach().float()
    if b == 0:
        s = x.abs().mean().reshape(1, 1, 1)
    else:
        s = x.reshape(-1, w.shape[-1] // b, b).abs().mean(-1, keepdim=True)
    return _fp16(s.clamp_min(1e-7))  # fp16-valued and never 0 (an all-zero block still gives t = 0)


def ternary_fake(w: torch.Tensor, block: int = TQ_BLOCK) -> torch.Tensor:
    """BitNet b1.58 absmean ternary values s * clamp(round(w / s), -1, 1) (module docstring)."""
    b = ternary_block(w.shape[-1], block)
    s = ternary_scale(w, block)
    x = w.float().reshape(-1, w.shape[-1] // b, b) if b else w.float().reshape(1, 1, -1)
    t = torch.clamp(torch.round(x / s), -1, 1)
    return (_fp16(s) * t).reshape(w.shape).to(w.dtype)


def fake_quant(w: torch.Tensor, mode: str, block: int = TQ_BLOCK) -> torch.Tensor:
    """On-grid values of `w` (no gradient path)."""
    if mode == "int4":
        return q4_0_fake(w)
    if mode == "ternary":
        return ternary_fake(w, block)
    raise ValueError(f"qat: mode must be one of {', '.join(QAT_MODES[1:])}, got {mode!r}")


def ste(w: torch.Tensor, mode: str, block: int) -> torch.Tensor:
    """Forward: the quantized weights; backward: the identity (straight-through estimator)."""
    return w + (fake_quant(w.detach(), mode, block) - w).detach()


class QATLinear(nn.Linear):
    """An nn.Linear whose forward multiplies by the fake-quantized weight (set by `convert`, not constructed)."""

    qat_mode: str
    qat_block: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, ste(self.weight, self.qat_mode, self.qat_block), self.bias)


class QATEmbedding(nn.Embedding):
    """An nn.Embedding whose lookup reads the fake-quantized table (the tied output head sees the same grid)."""

    qat_mode: str
    qat_block: int

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, ste(self.weight, self.qat_mode, self.qat_block))


def _swap(m: nn.Module, cls: type, mode: str, block: int) -> None:
    m.__class__ = cls
    m.qat_mode, m.qat_block = mode, block  # type: ignore[assignment]


def convert(model: nn.Module, mode: str, block: int = TQ_BLOCK, embeddings: bool = False) -> list[str]:
    """Fake-quantize the transformer's block linears (and, with `embeddings`, the token embedding and output head
    on the int4 grid) in place; returns the converted parameter names. Idempotent; mode 'none' does nothing."""
    if mode not in QAT_MODES:
        raise ValueError(f"qat: must be one of {', '.join(QAT_MODES)}, got {mode!r}")
    if mode == "none":
        return []
    if block not in (0, 32, 64, 128, 256):
        raise ValueError(f"qat_block: ternary scale block must be 0 (per tensor), 32, 64, 128 or 256, got {block}")
    names = []
    for name, m in model.named_modules():
        if (name.startswith("layers.") or ".layers." in name) and type(m) in (nn.Linear, QATLinear):
            _swap(m, QATLinear, mode, block)
            names.append(f"{name}.weight")
    if embeddings:
        for name, m in model.named_modules():
            if type(m) in (nn.Embedding, QATEmbedding) and name.endswith("tok_emb"):
                _swap(m, QATEmbedding, "int4", block)
                names.append(f"{name}.weight")
            elif type(m) in (nn.Linear, QATLinear) and name.endswith("lm_head"):
                _swap(m, QATLinear, "int4", block)
                names.append(f"{name}.weight")
    return names


def qat_modules(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Parameter name -> (mode, block) of every fake-quantized weight (tied weights under each name)."""
    return {f"{n}.weight": (m.qat_mode, m.qat_block) for n, m in model.named_modules()
            if isinstance(m, (QATLinear, QATEmbedding))}


@torch.no_grad()
def bake(model: nn.Module) -> dict[str, tuple[str, int]]:
    """Write the quantized values into the weights and restore plain modules; returns `qat_modules` before."""
    mods = qat_modules(model)
    done: set[int] = set()
    for _, m in model.named_modules():
        if isinstance(m, (QATLinear, QATEmbedding)):
            if id(m.weight) not in done:
                m.weight.copy_(fake_quant(m.weight, m.qat_mode, m.qat_block))
                done.add(id(m.weight))
            m.__class__ = nn.Linear if isinstance(m, QATLinear) else nn.Embedding
            del m.qat_mode, m.qat_block
    return mods
