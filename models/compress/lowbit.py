"""Below four bits: GPTQ (and round-to-nearest) at 2, 3 or 4 bits with small groups, optionally plus a
low-rank correction of the quantization error (LQER / CALDERA style), as the `lowbit` compression pass.

Why: int4 is where the existing passes stop. At 2-3 bits a plain min/max grid wastes most of its few levels
on outliers, so every group's range is searched (the shrink factor with the least Hessian-weighted error, as
GPTQ's `mse` option does), and the error that no 2-bit grid can remove is partly given back by a rank-r term
U V fitted to the *activation-weighted* residual (models/compress/lowrank.py): W ~ Q(W) + U V.

Design and invariants
- Grid: asymmetric, `bits` bits per code (0 .. 2^bits - 1), one fp16 scale and one integer zero point (uint8)
  per group of `group_size` consecutive inputs: value = (q - zero) * scale. 4 bits is exactly the `int4` kind
  of models/compress/quantize.py; 2 and 3 bits are the kinds `int2`, `int3`, their codes bit-packed along the row
  (8 codes -> `bits` bytes, code k at bits [bits*k, bits*(k+1)) of a little-endian integer).
- GPTQ's column loop is the one of models/compress/gptq.py (same dampened inverse-Hessian factor, dead columns
  zeroed), with each group fitted when its first column is reached, on the weights as updated so far.
- The correction (when `lowrank_rank` or `lowrank_budget` is set) is fitted after the grid on E = W - Q(W),
  whitened by the calibration Gram matrix, stored as int8 (or int4 / fp16) factors inside the weight's QTensor;
  `lowrank_iters` > 1 alternates (CALDERA): Q = GPTQ(W - U V), then U V = fit(W - Q). The report states the
  factors' extra bits per weight of the corrected matrices.
- Fitted, the correction gains little after GPTQ (its whitened residual is close to white noise). What does gain:
  `tune_steps` trains the factors (and with `tune_scales` the group scales) on each block's output error with the
  codes frozen (models/compress/blocktune.py). `lowrank_alloc: sensitivity` spends one block's budget where a rank
  removes the most block-output error; `lowrank_init: weight` fits U V to W before the grid (CALDERA's order).
  Measured side by side in LOG.md (session 7).
- Export: the HF folder gets Q(W) + U V merged into dense fp32 weights; no compressed-tensors scheme holds 2/3-bit
  groups with a correction, and llama.cpp has neither these grids (its Q2_K / Q3_K use two-level 16-value
  scales) nor a low-rank term, so GGUF files are made from the pass's full-precision input by the requested
  quantizer and export/report.json says so (models/compress/lowrank.py `export_note`).

Shape legend: O output rows, I input columns, N groups per row, S group size, B columns in a lazy block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from models.compress.blocktune import block_error, tune_block
from models.compress.calibration import quantize_blocks
from models.compress.gptq import Ahead, _hinv_upper, gptq_columns
from models.compress.lowrank import LowRank, factor_bits_per_rank, fit_lowrank, rank_for_budget, whitened_svd
from models.compress.passes import (
    CompressionPass,
    Embeddings,
    PassContext,
    PassOutput,
    _check_choice,
    _quantize_rest,
    register,
)
from models.compress.quantize import FP16_TINY, QTensor, effective_group_size, int4_from_codes

LOWBIT_KINDS = ("int2", "int3")
SHRINK = tuple(1.0 - 0.025 * k for k in range(21))
"""Range shrink factors tried per group (1.0 .. 0.5): clipping outliers buys resolution for the rest."""


# ---------------------------------------------------------------------------------------------------------
# The grid and its storage


def pack_bits(q: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., I) integer codes in [0, 2^bits) -> (..., I * bits / 8) uint8; I must be a multiple of 8."""
    lead, n = q.shape[:-1], q.shape[-1]
    if n % 8:
        raise ValueError(f"bits: rows must be multiples of 8 to pack {bits}-bit codes, got a row of {n}")
    v = (q.long().reshape(*lead, n // 8, 8) << (bits * torch.arange(8))).sum(-1)
    return torch.stack([(v >> (8 * j)) & 0xFF for j in range(bits)], -1).to(torch.uint8).reshape(*lead, n // 8 * bits)


def unpack_bits(packed: torch.Tensor, bits: int, row_len: int) -> torch.Tensor:
    """Inverse of pack_bits -> (..., row_len) int64 codes."""
    lead = packed.shape[:-1]
    b = packed.long().reshape(*lead, row_len // 8, bits)
    v = (b << (8 * torch.arange(bits))).sum(-1)
    return ((v[..., None] >> (bits * torch.arange(8))) & ((1 << bits) - 1)).reshape(*lead, row_len)


def dequantize_lowbit(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Values of an int2/int3 QTensor: (code - zero) * scale per group."""
    bits = int(q.kind[3:])
    codes = unpack_bits(q.codes, bits, q.shape[-1]).reshape(*q.shape[:-1], -1, q.group_size).to(dtype)
    return ((codes - q.zero.to(dtype)[..., None]) * q.scale.to(dtype)[..., None]).reshape(q.shape)


def fit_groups(w_ONS: torch.Tensor, bits: int, weight_S: torch.Tensor | None = None,
               search: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per group (fp16-valued scale, integer zero), the range shrink with the least (weighted)
    squared error after rounding, or plain min/max when search is off. Shapes (O, N)."""
    w = w_ONS.float()
    qmax = (1 << bits) - 1
    lo, hi = w.amin(-1).clamp(max=0.0), w.amax(-1).clamp(min=0.0)
    wt = weight_S.float() if weight_S is not None else torch.ones(w.shape[-1])
    best_err = best_s = best_z = None
    for f in SHRINK if search else (1.0,):
        s = ((hi - lo) * f / qmax).clamp_min(FP16_TINY).half().float()
        z = torch.clamp(torch.round(-lo * f / s), 0, qmax)
        q = torch.clamp(torch.round(w / s[..., None]) + z[..., None], 0, qmax)
        err = (((q - z[..., None]) * s[..., None] - w) ** 2 * wt).sum(-1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
            continue
        better = err < best_err
        best_err, best_s, best_z = (torch.where(better, err, best_err), torch.where(better, s, best_s),
                                    torch.where(better, z, best_z))
    return best_s, best_z


def codes_to_qtensor(q_OI: torch.Tensor, scale_ON: torch.Tensor, zero_ON: torch.Tensor, bits: int, g: int) -> QTensor:
    if bits == 4:
        return int4_from_codes(q_OI, scale_ON, zero_ON, g)
    return QTensor(f"int{bits}", tuple(q_OI.shape), pack_bits(q_OI, bits), scale_ON.half(), zero_ON.to(torch.uint8), g)


def quantize_lowbit(w_OI: torch.Tensor, bits: int, group_size: int, weight_I: torch.Tensor | None = None,
                    search: bool = True) -> QTensor:
    """Round-to-nearest onto the grid (with the range search): the baseline GPTQ has to beat."""
    O, I = w_OI.shape  # noqa: E741 (shape legend names)
    g = effective_group_size(I, group_size)
    w_ONS = w_OI.detach().float().reshape(O, I // g, g)
    wt = weight_I.reshape(I // g, g)[None] if weight_I is not None else None
    s, z = fit_groups(w_ONS, bits, wt, search)
    q = torch.clamp(torch.round(w_ONS / s[..., None]) + z[..., None], 0, (1 << bits) - 1)
    return codes_to_qtensor(q.reshape(O, I), s, z, bits, g)


@torch.no_grad()
def gptq_lowbit(w_OI: torch.Tensor, gram_II: torch.Tensor, bits: int, group_size: int = 64, damp: float = 0.01,
                block_size: int = 128, search: bool = True) -> QTensor:
    """GPTQ onto the `bits`-bit grid (groups fitted on the error-updated weights, Hessian-weighted)."""
    O, I = w_OI.shape  # noqa: E741 (shape legend names)
    g = effective_group_size(I, group_size)
    W, Hinv_U, diag_I = _hinv_upper(w_OI.detach().float().clone(), gram_II, damp)
    block_size = max(g, block_size // g * g)  # lazy blocks hold whole groups
    qmax = (1 << bits) - 1
    scale_ON, zero_ON = torch.zeros(O, I // g), torch.zeros(O, I // g)

    def quantize(col: int, w_O: torch.Tensor, ahead: Ahead) -> tuple[torch.Tensor, torch.Tensor]:
        n = col // g
        if col % g == 0:
            s, z = fit_groups(ahead(g)[:, None, :], bits, diag_I[col : col + g], search)
            scale_ON[:, n], zero_ON[:, n] = s[:, 0], z[:, 0]
        s_O, z_O = scale_ON[:, n], zero_ON[:, n]
        q_O = torch.clamp(torch.round(w_O / s_O) + z_O, 0, qmax)
        return q_O, (q_O - z_O) * s_O

    Q = gptq_columns(W, Hinv_U, block_size, quantize)
    return codes_to_qtensor(Q, scale_ON, zero_ON, bits, g)


# ---------------------------------------------------------------------------------------------------------
# The pass


@dataclass
class LowbitOptions:
    bits: int = 2
    """Bits per code of the block weights: 2, 3 or 4."""
    group_size: int = 64
    """Inputs sharing one fp16 scale and integer zero (32, 64, 128 or 256); smaller = finer, more overhead."""
    algo: Literal["gptq", "rtn"] = "gptq"
    """gptq: Hessian-corrected column by column; rtn: round-to-nearest (both with the per-group range search)."""
    damp: float = 0.01
    """GPTQ (and whitening) dampening added to the Hessian diagonal, as a fraction of its mean."""
    block_size: int = 128
    """GPTQ columns per lazy batch update."""
    embeddings: Embeddings = "int8"
    """Precision of the token embedding (and of an untied output head)."""
    lowrank_rank: int = 0
    """Rank r of the correction U V of W - Q(W) per block matrix (0 = none, unless lowrank_budget is set)."""
    lowrank_budget: float = 0.0
    """Extra bits per weight each block matrix may spend on its correction; the rank follows (0 = use lowrank_rank)."""
    lowrank_bits: int = 8
    """Storage of the factors: 8 or 4 (symmetric codes, one fp16 scale per rank row) or 16 (fp16)."""
    lowrank_whiten: Literal["cholesky", "diag", "none"] = "cholesky"
    """Activation-aware fit: cholesky = exact ||(E - UV) X|| optimum (SVD-LLM), diag = scale inputs by their
    RMS (LQER/ASVD), none = plain SVD of the residual."""
    lowrank_iters: int = 1
    """Alternations of quantize / fit (CALDERA); 1 = quantize once, then fit the correction."""
    lowrank_init: Literal["residual", "weight"] = "residual"
    """residual: the grid first, the correction fitted to W - Q(W); weight (CALDERA): the correction is first fitted
    to W itself, the grid quantizes W - U V, then the correction is refitted to W - Q."""
    lowrank_alloc: Literal["uniform", "sensitivity"] = "uniform"
    """How lowrank_budget is spent in a block: uniform = the same extra bits per weight in every matrix; sensitivity =
    one budget per block (the same total bits), ranks placed greedily where a rank removes the most block-output
    error per bit (each matrix's block-output error with only it quantized, times the share of its whitened
    residual energy the rank captures)."""
    tune_steps: int = 0
    """Block-wise reconstruction (models/compress/blocktune.py): Adam steps per block training the correction's
    factors (and, with tune_scales, the group scales) on the block's output error, codes frozen; 0 = fitted only."""
    tune_lr: float = 1e-3
    """Adam learning rate of the tuning, relative (scales are trained as a multiplier, factors relative to their RMS)."""
    tune_scales: bool = False
    """Also train the fp16 group scales (free in bits: they are stored anyway)."""
    tune_target: Literal["block", "model"] = "block"
    """What the tuned block must reproduce: the uncompressed block's output on the inputs the compressed model feeds
    it (block), or the uncompressed model's output at that block (model: also undoes the error upstream, ApiQ)."""

    def __post_init__(self) -> None:
        _check_choice("bits", self.bits, (2, 3, 4))
        _check_choice("group_size", self.group_size, (32, 64, 128, 256))
        _check_choice("algo", self.algo, ("gptq", "rtn"))
        _check_choice("embeddings", self.embeddings, ("int8", "int4", "fp32"))
        _check_choice("lowrank_bits", self.lowrank_bits, (4, 8, 16))
        _check_choice("lowrank_whiten", self.lowrank_whiten, ("cholesky", "diag", "none"))
        if not 0.0 <= self.damp < 1.0:
            raise ValueError(f"damp: must be in [0, 1), got {self.damp}")
        if self.block_size <= 0 or self.lowrank_rank < 0 or self.lowrank_iters < 1:
            raise ValueError(f"block_size, lowrank_iters: must be positive and lowrank_rank >= 0, got "
                             f"{self.block_size}, {self.lowrank_iters}, {self.lowrank_rank}")
        _check_choice("lowrank_init", self.lowrank_init, ("residual", "weight"))
        _check_choice("tune_target", self.tune_target, ("block", "model"))
        _check_choice("lowrank_alloc", self.lowrank_alloc, ("uniform", "sensitivity"))
        if self.lowrank_alloc == "sensitivity" and not self.lowrank_budget:
            raise ValueError("lowrank_alloc: sensitivity splits lowrank_budget; set lowrank_budget > 0")
        if self.tune_steps < 0 or not self.tune_lr > 0:
            raise ValueError(f"tune_steps, tune_lr: must be >= 0 and > 0, got {self.tune_steps}, {self.tune_lr}")
        if self.tune_steps and not (self.tune_scales or self.lowrank_rank or self.lowrank_budget):
            raise ValueError("tune_steps: nothing to tune; set lowrank_rank / lowrank_budget or tune_scales: true")
        if not 0.0 <= self.lowrank_budget <= 8.0:
            raise ValueError(f"lowrank_budget: must be in [0, 8] bits per weight, got {self.lowrank_budget}")

    def rank(self, O: int, I: int) -> int:  # noqa: E741 (shape legend names)
        if self.lowrank_budget > 0:
            return rank_for_budget(O, I, self.lowrank_budget, self.lowrank_bits)
        return min(self.lowrank_rank, O, I)


@register
class LowbitPass(CompressionPass):
    """GPTQ / RTN at 2-4 bits with small groups, optionally + an activation-aware low-rank error correction."""

    method = "lowbit"
    Options = LowbitOptions
    exports = ("hf", "gguf")
    quantizes = True

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options
        stats = {"weights": 0, "code_bits": 0, "lowrank_bits": 0, "ranks": []}

        ranks: dict[str, int] = {}
        first: dict[str, QTensor] = {}

        def plan(block: nn.Module, linears: dict[str, tuple[torch.Tensor, torch.Tensor]], records: list) -> None:
            prefix = next(n for n, m in model.named_modules() if m is block) + "."
            ranks.update(self.allocate(block, {n[len(prefix):]: v for n, v in linears.items()}, records, first,
                                       prefix))

        def quantize(name: str, w: torch.Tensor, gram: torch.Tensor) -> QTensor:
            q = self.quantize_one(w, gram, ranks.get(name), first.pop(name, None))
            stats["weights"] += w.numel()
            lr_bytes = q.lowrank.nbytes() if q.lowrank is not None else 0
            stats["code_bits"] += 8 * (q.nbytes() - lr_bytes)
            stats["lowrank_bits"] += 8 * lr_bytes
            if q.lowrank is not None:
                stats["ranks"].append(q.lowrank.rank)
            return q

        errors: list[dict[str, float]] = []

        def tune(block: nn.Module, qtensors: dict[str, QTensor], records: list) -> dict[str, QTensor]:
            tuned, err = tune_block(block, qtensors, records, o.tune_steps, o.tune_lr, o.tune_scales)
            errors.append(err)
            return tuned

        qt = quantize_blocks(model, ctx.calib_NT, ctx.batch_size, f"{o.algo}-int{o.bits}", quantize,
                             tune if o.tune_steps else None, o.tune_target,
                             plan if o.lowrank_alloc == "sensitivity" else None)
        qt = _quantize_rest(model, qt, "int4", o.embeddings, 128, False, "")
        n = max(stats["weights"], 1)
        info: dict[str, Any] = {"block_bits_per_weight": stats["code_bits"] / n,
                                "lowrank_bits_per_weight": stats["lowrank_bits"] / n}
        if stats["ranks"]:
            info["lowrank_ranks"] = sorted(set(stats["ranks"]))
        if errors:
            info["tune_block_mse"] = [[round(e["before"], 8), round(e["after"], 8)] for e in errors]
        return PassOutput(model, qt, info)

    def grid(self, w_OI: torch.Tensor, gram_II: torch.Tensor) -> QTensor:
        o = self.options
        if o.algo == "rtn":
            return quantize_lowbit(w_OI, o.bits, o.group_size, gram_II.diagonal().clone())
        return gptq_lowbit(w_OI, gram_II, o.bits, o.group_size, o.damp, o.block_size)

    def allocate(self, block: nn.Module, linears: dict[str, tuple[torch.Tensor, torch.Tensor]], records: list,
                 grids: dict[str, QTensor], prefix: str = "") -> dict[str, int]:
        """Ranks of one block's matrices (keys: module names inside the block) under the block's total budget
        (lowrank_budget x its weights), placed greedily by block-output error removed per bit; the grids computed
        on the way are left in `grids` (keys prefixed by `prefix`) for the quantization to reuse."""
        o = self.options
        frozen = {k: v.detach() for k, v in block.named_parameters()}
        gains: dict[str, torch.Tensor] = {}
        cost: dict[str, float] = {}
        for name, (w, gram) in linears.items():
            q = self.grid(w.detach().float(), gram)
            grids[prefix + name] = q
            sens = block_error(block, {**frozen, name + ".weight": q.dequantize(w.dtype)}, records)
            _, S, _, _ = whitened_svd(w.detach().float() - q.dequantize(), gram, o.lowrank_whiten, o.damp)
            share = S.double() ** 2 / (S.double() ** 2).sum().clamp_min(1e-30)
            gains[name] = sens * share
            cost[name] = factor_bits_per_rank(*w.shape, o.lowrank_bits)
        budget = o.lowrank_budget * sum(w.numel() for w, _ in linears.values())
        ranks = dict.fromkeys(linears, 0)
        while True:
            fits = [n for n in ranks if ranks[n] < gains[n].numel() and cost[n] <= budget]
            if not fits:
                return {prefix + n: r for n, r in ranks.items()}
            best = max(fits, key=lambda n: float(gains[n][ranks[n]]) / cost[n])
            ranks[best] += 1
            budget -= cost[best]

    def quantize_one(self, w_OI: torch.Tensor, gram_II: torch.Tensor, rank: int | None = None,
                     first: QTensor | None = None) -> QTensor:
        """One block matrix: the grid, then (if asked) the correction, alternating lowrank_iters times; `rank`
        overrides the options' rank, `first` is the grid of W already computed (the residual init reuses it)."""
        o = self.options

        def grid(target: torch.Tensor) -> QTensor:
            return self.grid(target, gram_II)

        r = o.rank(*w_OI.shape) if rank is None else rank
        w = w_OI.detach().float()

        def fit(target: torch.Tensor) -> LowRank:
            return LowRank.quantize(*fit_lowrank(target, gram_II, r, o.lowrank_whiten, o.damp), o.lowrank_bits)

        if r == 0:
            return first if first is not None else grid(w)
        lr = fit(w) if o.lowrank_init == "weight" else None
        q = first if lr is None and first is not None else grid(w if lr is None else w - lr.dense())
        for it in range(o.lowrank_iters):
            if it:
                q = grid(w - lr.dense())
            lr = fit(w - q.dequantize())
        q.lowrank = lr
        return q
