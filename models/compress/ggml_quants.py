"""llama.cpp's block formats Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 as quantization grids of our own quantizers.

Why: a GGUF that llama.cpp runs must hold codes on *its* grids. If compress quantizes on another grid
(int4 with 128-wide groups, say) and export re-rounds the full-precision weights with llama.cpp's rounding,
the file is not what compress scored, and GPTQ's error feedback is lost. Here compress itself quantizes
(round-to-nearest or GPTQ) onto the exact block formats llama.cpp decodes, stores the block bytes, and the
GGUF writer copies those bytes: the file holds, bit for bit, the weights the pass evaluated.

The formats (ggml-common.h; decoding in ggml-quants.c `dequantize_row_q*`, mirrored by gguf-py):
every row is cut into blocks of 32 consecutive inputs, each with an fp16 scale d (and an fp16 min m for the
`_1` types) followed by the codes:
| type | block bytes | codes | value |
|---|---|---|---|
| q8_0 | 2 + 32 | int8 q | d * q |
| q4_0 | 2 + 16 | 4-bit q, in [0, 15] | d * (q - 8) |
| q4_1 | 2 + 2 + 16 | 4-bit q | d * q + m |
| q5_0 | 2 + 4 + 16 | 5-bit q, in [0, 31] | d * (q - 16) |
| q5_1 | 2 + 2 + 4 + 16 | 5-bit q | d * q + m |
4-bit codes: byte j holds q[j] in its low nibble and q[j + 16] in its high nibble; 5-bit codes add a
little-endian uint32 `qh` whose bit j is the fifth bit of q[j].
Decoding is done in fp32 with one multiply (and one add), in the same order as gguf-py and llama.cpp's
reference, so our `dequantize` equals gguf-py's dequantization of the file bit for bit.

Fitting a block (choosing d, m): `fit(..., mode="ref")` is llama.cpp's reference (`quantize_row_q4_0_ref`
etc.: d = signed absmax / -8 for q4_0, (max - min) / 15 for q4_1, ...), and `quantize_ref` also copies its
rounding (trunc(x / d + 8.5) with the unrounded d), so it reproduces what llama.cpp's own quantizer writes
without an importance matrix. `mode="search"` tries a few shrunk scales and keeps the one with the least
(importance-weighted) squared error, rounding each value to the nearest code of the *stored* fp16 d: the
same grid, a better point on it. GPTQ (models/compress/gptq.py) uses `fit` and `nearest` column by column.

Shape legend: R rows, N blocks per row, B = 32 values per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

BLOCK = 32
GGML_TYPES = ("q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
FitMode = Literal["ref", "search"]
SEARCH_FACTORS = (1.0, 0.97, 0.94, 0.91, 0.88, 0.85, 0.82, 0.79, 0.76)
"""Scale shrink factors tried by mode="search" (clipping the largest weight a little often lowers the error)."""


@dataclass(frozen=True)
class Grid:
    name: str
    bits: int
    has_min: bool
    """`_1` types: value = d*q + m with q >= 0; else value = d*(q - offset)."""

    @property
    def qmax(self) -> int:
        return 127 if self.name == "q8_0" else (1 << self.bits) - 1

    @property
    def offset(self) -> int:
        """Code of zero in the symmetric 4/5-bit types (8, 16); q8_0 codes are already signed."""
        return 0 if self.has_min or self.name == "q8_0" else 1 << (self.bits - 1)

    @property
    def block_bytes(self) -> int:
        return 2 + 2 * self.has_min + (4 if self.bits == 5 else 0) + (BLOCK if self.bits == 8 else BLOCK // 2)

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / BLOCK


GRIDS = {
    "q8_0": Grid("q8_0", 8, False),
    "q4_0": Grid("q4_0", 4, False),
    "q4_1": Grid("q4_1", 4, True),
    "q5_0": Grid("q5_0", 5, False),
    "q5_1": Grid("q5_1", 5, True),
}


def grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"gguf type: must be one of {', '.join(GGML_TYPES)}, got {name!r}")
    return GRIDS[name]


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def _ref_scale(g: Grid, w_RB: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """llama.cpp reference d (and m), unrounded fp32, shape (R,)."""
    if g.has_min:
        lo, hi = w_RB.amin(-1), w_RB.amax(-1)
        return (hi - lo) / g.qmax, lo
    if g.name == "q8_0":
        return w_RB.abs().amax(-1) / 127.0, None
    idx = w_RB.abs().argmax(-1, keepdim=True)
    return w_RB.gather(-1, idx)[..., 0] / -float(g.offset), None


def dequant_codes(g: Grid, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """fp32 values of integer codes q (..., B) given fp16-valued d, m (..., 1): gguf-py's order of operations."""
    if g.has_min:
        return d * q.float() + m
    return d * (q.float() - g.offset)


def nearest(g: Grid, w: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
    """Nearest code of each value given the stored (fp16-valued) d, m; broadcastable shapes."""
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))
    if g.has_min:
        return torch.clamp(torch.round((w - m) * inv), 0, g.qmax)
    if g.name == "q8_0":
        return torch.clamp(torch.round(w * inv), -128, 127)
    return torch.clamp(torch.round(w * inv) + g.offset, 0, g.qmax)


def fit(
    g: Grid, w_RB: torch.Tensor, weight_B: torch.Tensor | None = None, mode: FitMode = "search"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp16-valued (d, m) of shape (R,) for blocks w_RB: llama.cpp's reference choice, or the best of a few
    shrunk scales by (weight_B-weighted) squared error after rounding to the nearest code."""
    w = w_RB.float()
    d0, m0 = _ref_scale(g, w)
    if mode == "ref":
        return _fp16(d0), None if m0 is None else _fp16(m0)
    wt = weight_B.float()[None, :] if weight_B is not None else torch.ones_like(w[:1])
    best_err = best_d = best_m = None
    for f in SEARCH_FACTORS:
        if g.has_min:
            lo, hi = w.amin(-1), w.amax(-1)
            mid, half = (hi + lo) / 2, (hi - lo) / 2 * f
            d, m = _fp16(2 * half / g.qmax), _fp16(mid - half)
        else:
            d, m = _fp16(d0 * f), None
        mm = m[:, None] if m is not None else None
        err = ((dequant_codes(g, nearest(g, w, d[:, None], mm), d[:, None], mm) - w) ** 2 * wt).sum(-1)
        if best_err is None:
            best_err, best_d, best_m = err, d, m
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_d = torch.where(better, d, best_d)
            if m is not None:
                best_m = torch.where(better, m, best_m)
    return best_d, best_m


# ---------------------------------------------------------------------------------------------------------
# Packing into llama.cpp's block bytes


def pack(g: Grid, q_RNB: torch.Tensor, d_RN: torch.Tensor, m_RN: torch.Tensor | None) -> torch.Tensor:
    """Integer codes + fp16 scales -> (R, N * block_bytes) uint8 in llama.cpp's block layout."""
    R, N, _ = q_RNB.shape
    parts = [d_RN.half().contiguous().view(torch.uint8).reshape(R, N, 2)]
    if g.has_min:
        parts.append(m_RN.half().contiguous().view(torch.uint8).reshape(R, N, 2))
    if g.name == "q8_0":
        parts.append(q_RNB.to(torch.int8).view(torch.uint8))
    else:
        q = q_RNB.to(torch.int64)
        if g.bits == 5:
            bits = (q >> 4) & 1
            qh = (bits << torch.arange(32)).sum(-1)  # (R, N) uint32 value, little-endian bytes below
            parts.append(torch.stack([(qh >> (8 * k)) & 0xFF for k in range(4)], -1).to(torch.uint8))
        lo, hi = q[..., :16] & 0x0F, q[..., 16:] & 0x0F
        parts.append((lo | (hi << 4)).to(torch.uint8))
    return torch.cat(parts, -1).reshape(R, N * g.block_bytes)


def unpack(g: Grid, blocks: torch.Tensor, row_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(..., N * block_bytes) uint8 -> codes (..., N, B) int64, d (..., N, 1) and m fp32 (fp16 values)."""
    lead = blocks.shape[:-1]
    N = row_len // BLOCK
    b = blocks.reshape(*lead, N, g.block_bytes)
    d = b[..., 0:2].contiguous().view(torch.float16).float()
    o = 2
    m = None
    if g.has_min:
        m = b[..., 2:4].contiguous().view(torch.float16).float()
        o = 4
    if g.name == "q8_0":
        return b[..., o:].contiguous().view(torch.int8).long(), d, m
    qh = None
    if g.bits == 5:
        qh_bytes = b[..., o : o + 4].long()
        qh = sum(qh_bytes[..., k] << (8 * k) for k in range(4))
        o += 4
    qs = b[..., o:].long()
    q = torch.cat((qs & 0x0F, qs >> 4), -1)
    if qh is not None:
        q = q | (((qh[..., None] >> torch.arange(32)) & 1) << 4)
    return q, d, m


def dequantize(name: str, blocks: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = grid(name)
    q, d, m = unpack(g, blocks, shape[-1])
    return dequant_codes(g, q, d, m).reshape(shape).to(dtype)


# ---------------------------------------------------------------------------------------------------------
# Round-to-nearest quantizers


def _blocks(w: torch.Tensor) -> torch.Tensor:
    if w.shape[-1] % BLOCK:
        raise ValueError(f"gguf block types need rows that are multiples of {BLOCK}, got a row of {w.shape[-1]}")
    return w.detach().float().reshape(-1, w.shape[-1] // BLOCK, BLOCK)


def quantize_ref(name: str, w: torch.Tensor) -> torch.Tensor:
    """llama.cpp's reference quantizer (ggml-quants.c `quantize_row_*_ref`), rounding included: the block
    bytes llama.cpp's own quantizer writes without an importance matrix. -> (..., N * block_bytes) uint8."""
    g = grid(name)
    w_RNB = _blocks(w)
    R, N, _ = w_RNB.shape
    d, m = _ref_scale(g, w_RNB.reshape(R * N, BLOCK))
    inv = torch.where(d == 0, torch.zeros_like(d), 1.0 / torch.where(d == 0, torch.ones_like(d), d))[:, None]
    x = w_RNB.reshape(R * N, BLOCK)
    if g.name == "q8_0":
        v = x * inv
        q = torch.sign(v) * torch.floor(v.abs() + 0.5)  # roundf: half away from zero
    elif g.has_min:
        q = torch.clamp(torch.trunc((x - m[:, None]) * inv + 0.5), 0, g.qmax)
    else:
        q = torch.clamp(torch.trunc(x * inv + (g.offset + 0.5)), 0, g.qmax)
    out = pack(g, q.reshape(R, N, BLOCK), d.reshape(R, N), None if m is None else m.reshape(R, N))
    return out.reshape(*w.shape[:-1], -1)


def quantize_rtn(name: str, w: torch.Tensor, weight_I: torch.Tensor | None = None, mode: FitMode = "search") -> torch.Tensor:
    """Round-to-nearest onto the grid with `fit`'s scale choice (optionally importance-weighted per input).
    -> (..., N * block_bytes) uint8."""
    g = grid(name)
    w_RNB = _blocks(w)
    R, N, _ = w_RNB.shape
    flat = w_RNB.reshape(R * N, BLOCK)
    if weight_I is not None:
        # per-block fits with per-input importance: loop over block columns (N is small: row_len / 32)
        ds, ms = [], []
        for n in range(N):
            d, m = fit(g, w_RNB[:, n], weight_I[n * BLOCK : (n + 1) * BLOCK], mode)
            ds.append(d)
            ms.append(m)
        d_RN = torch.stack(ds, 1)
        m_RN = torch.stack(ms, 1) if g.has_min else None
    else:
        d, m = fit(g, flat, None, mode)
        d_RN, m_RN = d.reshape(R, N), None if m is None else m.reshape(R, N)
    q = nearest(g, w_RNB, d_RN[..., None], None if m_RN is None else m_RN[..., None])
    return pack(g, q, d_RN, m_RN).reshape(*w.shape[:-1], -1)
