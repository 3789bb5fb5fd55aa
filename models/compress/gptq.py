"""GPTQ (Frantar et al. 2022): int4 group-wise quantization that corrects each column's rounding error
with the inverse Hessian of the layer's reconstruction loss ||WX - QX||^2, H = 2 X X^T.

Design and invariants (following the reference implementation, IST-DASLab/gptq `gptq.py`)
- Dampening: H += damp * mean(diag(H)) * I (damp = 1% by default); columns never activated (diag 0)
  get H_jj = 1 and weight 0, so they neither break the Cholesky nor carry error.
- We need only the upper Cholesky factor U of H^-1 (H^-1 = U^T U): row i of U gives, in one step, the
  optimal update of the not-yet-quantized columns after quantizing column i.
- Lazy batch updates: columns are processed in blocks of `block_size` (128); inside a block the error
  is propagated column by column, to the columns after the block once per block (one matmul).
- Groups: the scale/zero of a group are fitted when its first column is reached, on the weights as
  updated by the errors of all earlier columns (what the reference does), so they describe what is
  actually rounded. With `act_order` columns are visited by decreasing H_jj and groups are "static"
  (fitted on the original weights), which keeps groups contiguous in the stored format.
- The returned codes/scales are in exactly the `QTensor` format round-to-nearest produces, so the
  checkpoint, the loader and the runtimes do not know which algorithm made them.
- `gptq_ggml` runs the same column loop on one of llama.cpp's block grids (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0;
  models/compress/ggml_quants.py): each 32-column block's fp16 scale (+ min) is fitted when its first column
  is reached (by `ggml_quants.fit`, weighted by the Hessian diagonal, i.e. by the inputs' energy), every
  column is rounded to the nearest code of that stored scale and its error is fed forward. The result is
  GGUF block bytes that llama.cpp decodes to exactly the weights compress evaluated.

Shape legend: O output rows, I input columns, B columns in a lazy block, N groups per row.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from models.compress import ggml_quants
from models.compress.quantize import (
    QTensor,
    effective_group_size,
    int4_from_codes,
    int4_params,
    quantize_with,
)


@torch.no_grad()
def gptq_quantize(
    w_OI: torch.Tensor,
    gram_II: torch.Tensor,
    group_size: int = 128,
    sym: bool = False,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = False,
) -> QTensor:
    """Quantize one weight matrix to int4 with GPTQ given the Gram matrix of its inputs (sum x x^T)."""
    O, I = w_OI.shape  # noqa: E741 (shape legend names)
    g = effective_group_size(I, group_size)
    W, H = _drop_dead_columns(w_OI.detach().float().clone(), gram_II)

    perm = invperm = None
    if act_order:
        scale_ON, zero_ON = int4_params(W.reshape(O, I // g, g), sym)  # static groups, original order
        perm = torch.argsort(H.diagonal(), descending=True)
        invperm = torch.argsort(perm)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        scale_ON = torch.zeros(O, I // g)
        zero_ON = torch.zeros(O, I // g)

    Hinv_U = _damped_hinv_upper(H, damp)

    def quantize(col: int, w_O: torch.Tensor, ahead: Ahead) -> tuple[torch.Tensor, torch.Tensor]:
        grp = (int(perm[col]) if perm is not None else col) // g
        if perm is None and col % g == 0:  # fit the group on its current (error-updated) weights
            s, z = int4_params(ahead(g)[:, None, :], sym)
            scale_ON[:, grp], zero_ON[:, grp] = s[:, 0], z[:, 0]
        s_O, z_O = scale_ON[:, grp], zero_ON[:, grp]
        q_O = quantize_with(w_O, s_O, z_O)
        return q_O, (q_O - z_O) * s_O

    Q = gptq_columns(W, Hinv_U, block_size, quantize)
    if invperm is not None:
        Q = Q[:, invperm]
    return int4_from_codes(Q, scale_ON, None if sym else zero_ON, g)


Ahead = Callable[[int], torch.Tensor]
"""`ahead(k)`: the current (error-updated) weights of the column being quantized and the k-1 after it, (O, k)."""


def gptq_columns(W: torch.Tensor, Hinv_U: torch.Tensor, block_size: int,
                 quantize: Callable[[int, torch.Tensor, Ahead], tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The GPTQ column loop with lazy batch updates, shared by every grid (int4 groups, llama.cpp blocks, 2-3-bit).

    `quantize(col, w_O, ahead) -> (codes_O, dequantized_O)` rounds one column onto its grid (fitting a group's
    scale when `col` opens one, from `ahead(g)`); the loop feeds the rounding error forward through the upper
    Cholesky factor of H^-1. W is updated in place; -> the codes, (O, I)."""
    O, I = W.shape  # noqa: E741 (shape legend names)
    Q = torch.zeros(O, I)
    for i1 in range(0, I, block_size):
        i2 = min(i1 + block_size, I)
        W_OB = W[:, i1:i2].clone()
        Err_OB = torch.zeros_like(W_OB)
        Hinv_BB = Hinv_U[i1:i2, i1:i2]
        for i in range(i2 - i1):

            def ahead(k: int, i: int = i, i2: int = i2, W_OB: torch.Tensor = W_OB) -> torch.Tensor:
                return torch.cat((W_OB[:, i:], W[:, i2:]), dim=1)[:, :k]

            w_O = W_OB[:, i]
            q_O, deq_O = quantize(i1 + i, w_O, ahead)
            Q[:, i1 + i] = q_O
            err_O = (w_O - deq_O) / Hinv_BB[i, i]
            W_OB[:, i:] -= err_O[:, None] * Hinv_BB[i, i:][None, :]
            Err_OB[:, i] = err_O
        W[:, i2:] -= Err_OB @ Hinv_U[i1:i2, i2:]
    return Q


def _drop_dead_columns(W: torch.Tensor, gram_II: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns never activated (H_jj = 0) get weight 0 and H_jj = 1: no error, no singular Cholesky. -> (W, H)."""
    H = gram_II.detach().float().clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, H


def _damped_hinv_upper(H: torch.Tensor, damp: float) -> torch.Tensor:
    """H += damp * mean(diag H) * I in place; -> the upper Cholesky factor U of H^-1 (H^-1 = U^T U)."""
    H.diagonal().add_(damp * H.diagonal().mean())
    L = torch.linalg.cholesky(H.double())
    return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()


def _hinv_upper(W: torch.Tensor, gram_II: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dead columns zeroed, dampened H; -> (W, upper Cholesky factor of H^-1, diag(H) before dampening)."""
    W, H = _drop_dead_columns(W, gram_II)
    diag = H.diagonal().clone()
    return W, _damped_hinv_upper(H, damp), diag


@torch.no_grad()
def gptq_ggml(
    w_OI: torch.Tensor,
    gram_II: torch.Tensor,
    gguf_type: str,
    damp: float = 0.01,
    block_size: int = 128,
    fit_mode: ggml_quants.FitMode = "search",
) -> QTensor:
    """GPTQ onto a llama.cpp block grid; -> QTensor(kind=gguf_type) holding the GGUF block bytes."""
    grid = ggml_quants.grid(gguf_type)
    B = ggml_quants.BLOCK
    O, I = w_OI.shape  # noqa: E741 (shape legend names)
    if I % B:
        raise ValueError(f"{gguf_type}: rows must be multiples of {B}, got {I}")
    W, Hinv_U, diag_I = _hinv_upper(w_OI.detach().float().clone(), gram_II, damp)
    block_size = max(B, block_size // B * B)  # lazy blocks hold whole 32-column groups
    d_ON = torch.zeros(O, I // B)
    m_ON = torch.zeros(O, I // B) if grid.has_min else None

    def quantize(col: int, w_O: torch.Tensor, ahead: Ahead) -> tuple[torch.Tensor, torch.Tensor]:
        n = col // B
        if col % B == 0:  # fit the block's scale on the weights as updated by all earlier errors
            d, m = ggml_quants.fit(grid, ahead(B), diag_I[col : col + B], fit_mode)
            d_ON[:, n] = d
            if m_ON is not None:
                m_ON[:, n] = m
        d_O, m_O = d_ON[:, n], (m_ON[:, n] if m_ON is not None else None)
        q_O = ggml_quants.nearest(grid, w_O, d_O, m_O)
        return q_O, ggml_quants.dequant_codes(grid, q_O, d_O, m_O)

    Q = gptq_columns(W, Hinv_U, block_size, quantize)
    blocks = ggml_quants.pack(grid, Q.reshape(O, I // B, B), d_ON, m_ON)
    return QTensor(gguf_type, (O, I), blocks, torch.empty(0, dtype=torch.float16), None, B)
