"""Low-rank matrices for compression: activation-aware SVD, the factors' storage, the factored runtime, and the
`lowrank` pass (each block linear W replaced by U V of a rank set by a size ratio or an energy fraction).

Why activation-aware: what matters is the layer's output error ||(W - U V) X||, not ||W - U V||; inputs with
large activations must be reproduced better. With the calibration Gram matrix H = X X^T (dampened) = L L^T,
||(W - M) X||_F^2 = ||(W - M) L||_F^2, so the optimum at rank r is the truncated SVD of W L mapped back,
M = P_r S_r Q_r^T L^-1 (SVD-LLM's whitening; `whiten: diag` scales inputs by their RMS instead, as ASVD/LQER do).
The same fit serves the quantization-error correction of the lowbit pass (W - Q(W) in place of W).

Storage (`LowRank`, attached to a weight's QTensor as `lowrank`): U^T (r, O) and V (r, I), symmetric int8 or
int4 codes with one fp16 scale per rank row, or fp16 / fp32 values; in the safetensors file as `W::lr_u`,
`W::lr_v` (+ `W::lr_us`, `W::lr_vs`). A factored weight without a grid is the QTensor kind `lowrank` (no codes).
The in-memory model of a pass holds the product (dense nn.Linear), so evaluation, chaining and export see
one ordinary model; `runtime: factored` (load_compressed) swaps each such Linear for `FactoredLinear`, two
small linears, which is what saves the compute.

Export: neither transformers' Llama nor llama.cpp has a factored linear or a low-rank correction, so the HF folder
and the GGUF files hold the re-multiplied dense weights and export/report.json carries `export_note`'s sentence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from models.compress.calibration import quantize_blocks
from models.compress.passes import CompressionPass, PassContext, PassOutput, _check_choice, register
from models.compress.quantize import QTensor, pack_int4, unpack_int4

Whiten = Literal["cholesky", "diag", "none"]


@torch.no_grad()
def whitened_svd(w_OI: torch.Tensor, gram_II: torch.Tensor | None, whiten: Whiten = "cholesky",
                 damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any]:
    """SVD of W mapped into the whitened input space: -> (P, S, Qh, unmap) with unmap(Y_rI) = Y L^-1."""
    w = w_OI.detach().double()
    I = w.shape[1]  # noqa: E741 (shape legend names)
    if gram_II is None or whiten == "none" or float(gram_II.diagonal().sum()) <= 0:
        P, S, Qh = torch.linalg.svd(w, full_matrices=False)
        return P, S, Qh, lambda y: y
    H = gram_II.detach().double()
    lam = damp * float(H.diagonal().mean()) + 1e-12
    if whiten == "diag":
        s_I = (H.diagonal() + lam).sqrt()
        P, S, Qh = torch.linalg.svd(w * s_I, full_matrices=False)
        return P, S, Qh, lambda y: y / s_I
    L = torch.linalg.cholesky(H + lam * torch.eye(I, dtype=torch.float64))
    P, S, Qh = torch.linalg.svd(w @ L, full_matrices=False)
    return P, S, Qh, lambda y: torch.linalg.solve_triangular(L, y, upper=False, left=False)


def fit_lowrank(w_OI: torch.Tensor, gram_II: torch.Tensor | None, rank: int, whiten: Whiten = "cholesky",
                damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-`rank` (U (O, r), V (r, I)) minimising ||(W - U V) X|| (whitened); sqrt(S) split evenly between them."""
    P, S, Qh, unmap = whitened_svd(w_OI, gram_II, whiten, damp)
    r = min(rank, S.numel())
    root = S[:r].sqrt()
    return (P[:, :r] * root).float(), unmap(root[:, None] * Qh[:r]).float()


def rank_for_energy(S: torch.Tensor, energy: float) -> int:
    """Smallest r whose singular values keep `energy` of the (whitened) squared Frobenius norm."""
    e = (S.double() ** 2).cumsum(0)
    return int(torch.searchsorted(e / e[-1].clamp_min(1e-30), torch.tensor([energy], dtype=e.dtype)).item()) + 1


def factor_bits_per_rank(O: int, I: int, bits: int) -> float:  # noqa: E741 (shape legend names)
    """Storage bits one rank adds: its U column and V row, plus their two fp16 scales when quantized."""
    return bits * (O + I) + (32 if bits < 16 else 0)


def rank_for_budget(O: int, I: int, extra_bits_per_weight: float, bits: int) -> int:  # noqa: E741
    """Largest rank whose factors cost at most `extra_bits_per_weight` over the O x I matrix."""
    return max(0, min(O, I, math.floor(extra_bits_per_weight * O * I / factor_bits_per_rank(O, I, bits))))


@dataclass
class LowRank:
    """U V stored as U^T (r, O) and V (r, I): codes + one fp16 scale per rank row (bits 8, 4) or floats (16, 32)."""

    ut: torch.Tensor
    v: torch.Tensor
    ut_scale: torch.Tensor
    v_scale: torch.Tensor
    bits: int
    shape: tuple[int, int]
    """(O, I) of the matrix the product approximates."""

    @property
    def rank(self) -> int:
        return int(self.ut_scale.numel()) if self.bits < 16 else int(self.ut.shape[0])

    @classmethod
    def quantize(cls, u_Or: torch.Tensor, v_rI: torch.Tensor, bits: int) -> LowRank:
        shape = (u_Or.shape[0], v_rI.shape[1])
        if bits >= 16:
            dt = torch.float16 if bits == 16 else torch.float32
            return cls(u_Or.T.contiguous().to(dt), v_rI.contiguous().to(dt), torch.empty(0), torch.empty(0), bits,
                       shape)
        (ut, us), (v, vs) = _sym_rows(u_Or.T, bits), _sym_rows(v_rI, bits)
        return cls(ut, v, us, vs, bits, shape)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(U (O, r), V (r, I)) in fp32, exactly the values the dense product uses."""
        if self.bits >= 16:
            return self.ut.float().T, self.v.float()
        return _sym_rows_back(self.ut, self.ut_scale, self.bits, self.shape[0]).T, \
            _sym_rows_back(self.v, self.v_scale, self.bits, self.shape[1])

    def dense(self) -> torch.Tensor:
        u, v = self.factors()
        return u @ v

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ut, self.v)) + 2 * (self.ut_scale.numel()
                                                                                   + self.v_scale.numel())

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {prefix + "lr_u": self.ut, prefix + "lr_v": self.v}
        if self.bits < 16:
            out.update({prefix + "lr_us": self.ut_scale.half(), prefix + "lr_vs": self.v_scale.half()})
        return out

    def meta(self) -> dict:
        return {"rank": self.rank, "bits": self.bits}

    @classmethod
    def from_tensors(cls, raw: dict[str, torch.Tensor], prefix: str, meta: dict, shape: tuple[int, ...]) -> LowRank:
        bits = int(meta["bits"])
        empty = torch.empty(0)
        return cls(raw[prefix + "lr_u"], raw[prefix + "lr_v"], raw.get(prefix + "lr_us", empty),
                   raw.get(prefix + "lr_vs", empty), bits, (int(shape[0]), int(shape[1])))


def sym_round_rows(x_rN: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes as floats in [-qmax, qmax], fp16-valued scale (r,)) of the factors' storage rounding: one symmetric
    scale per row. The one rule both storage and block-wise tuning's fake quantization use."""
    qmax = (1 << (bits - 1)) - 1
    scale = (x_rN.abs().amax(-1) / qmax).clamp_min(1e-7).half().float()
    return torch.clamp(torch.round(x_rN / scale[:, None]), -qmax, qmax), scale


def _sym_rows(x_rN: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric codes per row (int8: [-127, 127]; int4: [-7, 7] packed +8 two per byte), fp16 scales."""
    q, scale = sym_round_rows(x_rN, bits)
    if bits == 8:
        return q.to(torch.int8), scale.half()
    return pack_int4((q + 8).to(torch.uint8)), scale.half()


def _sym_rows_back(codes: torch.Tensor, scale: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    q = codes.float() if bits == 8 else unpack_int4(codes, n).float() - 8
    return q * scale.float()[:, None]


# ---------------------------------------------------------------------------------------------------------
# Runtime and export


class FactoredLinear(nn.Module):
    """y = (x V^T) U^T: two linears through a rank-r bottleneck (r (O + I) multiply-adds instead of O I)."""

    def __init__(self, u_Or: torch.Tensor, v_rI: torch.Tensor) -> None:
        super().__init__()
        self.in_features, self.out_features = v_rI.shape[1], u_Or.shape[0]
        self.down = nn.Linear(self.in_features, v_rI.shape[0], bias=False)
        self.up = nn.Linear(v_rI.shape[0], self.out_features, bias=False)
        with torch.no_grad():
            self.down.weight.copy_(v_rI)
            self.up.weight.copy_(u_Or)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))

    def product(self) -> torch.Tensor:
        return self.up.weight.detach() @ self.down.weight.detach()


def apply_factored(model: nn.Module, qtensors: dict[str, QTensor]) -> str:
    """Swap every Linear whose weight is a pure factorization (kind `lowrank`) for a FactoredLinear."""
    for name, q in qtensors.items():
        mod_name = name.rsplit(".", 1)[0]
        if q.kind != "lowrank" or not isinstance(model.get_submodule(mod_name), nn.Linear):
            continue
        parent, _, child = mod_name.rpartition(".")
        u, v = q.lowrank.factors()
        setattr(model.get_submodule(parent), child, FactoredLinear(u, v).to(next(model.parameters()).dtype))
    return "factored"


def export_note(qtensors: dict[str, QTensor]) -> tuple[str | None, bool]:
    """(what export merged or dropped, whether GGUF files must come from the pass's own merged weights)."""
    lr = [q for q in qtensors.values() if q.lowrank is not None]
    if not lr:
        return None, False
    if all(q.kind == "lowrank" for q in lr):
        return (f"{len(lr)} factored linears (rank {min(q.lowrank.rank for q in lr)}-{max(q.lowrank.rank for q in lr)}) "
                "re-multiplied into dense weights: neither transformers' Llama nor llama.cpp has a factored linear, "
                "so every file holds U V as one matrix (same values, full size)"), True
    return (f"{len(lr)} low-rank error corrections: hf/ holds Q(W) + U V merged into dense fp32 weights; no GGUF type "
            "holds this pass's grid or a low-rank term, so GGUF files are made from its full-precision input "
            "(`weights`) and hold neither the pass's codes nor the correction"), False


# ---------------------------------------------------------------------------------------------------------
# The factorization pass


@dataclass
class LowrankOptions:
    size_ratio: float = 0.5
    """Target size of each factored matrix: rank r with r (O + I) <= size_ratio * O * I."""
    energy: float = 0.0
    """If > 0: instead, the smallest rank keeping this fraction of the whitened squared singular values (capped by
    size_ratio: a matrix is only factored when that saves storage)."""
    whiten: Whiten = "cholesky"
    """Activation-aware fit: cholesky (SVD-LLM), diag (ASVD/LQER input RMS) or none (plain SVD)."""
    damp: float = 0.01
    """Dampening of the Gram matrix before whitening, as a fraction of its mean diagonal."""
    factor_bits: int = 32
    """Storage of the factors: 32 (fp32, like the baseline), 16, 8 or 4 (int codes, fp16 scale per rank row)."""
    runtime: Literal["factored", "dequant"] = "factored"
    """Runtime measured for tokens/s: factored = two small linears per matrix; dequant = the dense product."""
    recover: bool = False
    """Train the factors (not the product) with the recovery (distillation) callable when the caller provides one."""

    def __post_init__(self) -> None:
        if not 0.0 < self.size_ratio <= 1.0 or not 0.0 <= self.energy <= 1.0:
            raise ValueError(f"size_ratio, energy: must be in (0, 1] and [0, 1], got {self.size_ratio}, {self.energy}")
        _check_choice("whiten", self.whiten, ("cholesky", "diag", "none"))
        _check_choice("factor_bits", self.factor_bits, (4, 8, 16, 32))
        _check_choice("runtime", self.runtime, ("factored", "dequant"))

    def rank(self, O: int, I: int, S: torch.Tensor) -> int:  # noqa: E741 (shape legend names)
        cap = math.floor(self.size_ratio * O * I * self.factor_bits / factor_bits_per_rank(O, I, self.factor_bits))
        return min(cap, rank_for_energy(S, self.energy)) if self.energy > 0 else cap


@register
class LowrankPass(CompressionPass):
    """Activation-aware SVD of each block linear to a rank set by size or energy (exports the product, dense)."""

    method = "lowrank"
    Options = LowrankOptions
    exports = ("hf", "gguf")
    quantizes = True

    @torch.no_grad()
    def apply(self, model: nn.Module, ctx: PassContext) -> PassOutput:
        o = self.options

        def factor(_name: str, w: torch.Tensor, gram: torch.Tensor) -> QTensor | None:
            O, I = w.shape  # noqa: E741 (shape legend names)
            P, S, Qh, unmap = whitened_svd(w, gram, o.whiten, o.damp)
            r = o.rank(O, I, S)
            if r <= 0 or factor_bits_per_rank(O, I, o.factor_bits) * r >= o.factor_bits * O * I:
                return None  # no saving: stays dense
            root = S[:r].sqrt()
            lr = LowRank.quantize((P[:, :r] * root).float(), unmap(root[:, None] * Qh[:r]).float(), o.factor_bits)
            return QTensor("lowrank", (O, I), torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.float16),
                           None, 0, lr)

        qt = quantize_blocks(model, ctx.calib_NT, ctx.batch_size, "lowrank", factor)
        info: dict[str, Any] = {"factored": len(qt),
                                "ranks": sorted({q.lowrank.rank for q in qt.values()})}
        if o.recover and ctx.recover is not None and qt:
            model = self._recover(model, ctx, qt)
            info["recovered"] = True
        return PassOutput(model, qt, info)

    def _recover(self, model: nn.Module, ctx: PassContext, qt: dict[str, QTensor]) -> nn.Module:
        """Distil with the factors as the trained parameters, then store the trained factors (re-quantized)."""
        with torch.enable_grad():
            apply_factored(model, qt)
            ctx.teacher.eval()
            model = ctx.recover(model, ctx.teacher)
        model.eval()
        for name, q in list(qt.items()):
            mod_name = name.rsplit(".", 1)[0]
            fl = model.get_submodule(mod_name)
            q.lowrank = LowRank.quantize(fl.up.weight.detach().float(), fl.down.weight.detach().float(),
                                         self.options.factor_bits)
            lin = nn.Linear(fl.in_features, fl.out_features, bias=False).to(fl.up.weight.dtype)
            lin.weight.data.copy_(q.dequantize(lin.weight.dtype))
            parent, _, child = mod_name.rpartition(".")
            setattr(model.get_submodule(parent), child, lin)
        return model
