"""Block-wise reconstruction: with a block's quantized codes frozen, train what is still free (the low-rank
correction's factors U, V and the groups' fp16 scales) so that the *block's output* on the calibration inputs
matches the full-precision block's (EfficientQAT's Block-AP, ApiQ, OmniQuant), a few hundred Adam steps per block.

Why: fitting U V to one matrix's whitened residual W - Q(W) (models/compress/lowrank.py) is already the optimum of
that matrix's output error at rank r, and after GPTQ that residual is close to white noise, so a rank of 3-5 (what
+0.25 bits per weight buys on 256-wide matrices) removes only a few % of it. The block's output error is what the
model sees, though: it runs through the attention softmax, the SwiGLU product and the residual stream, errors of
different matrices cancel or add, and a small correction (or a scale moved off its rounding-optimal value) can
steer the block back towards its fp output in ways no per-matrix fit can.

Design and invariants
- Codes and zero points never change: the tuned weight is (code - zero) * scale + fq(U) fq(V), with fq the exact
  storage rounding of the factors (models/compress/lowrank.py `LowRank`: symmetric codes and an fp16 scale per rank
  row) and the scales rounded to fp16, both through a straight-through estimator, so the trained values are the
  stored values.
- Target: the block's own full-precision output on the inputs that the model compressed so far feeds it (the
  sequential calibration of models/compress/calibration.py records both), mean squared error over all positions.
- Step 0 is the fitted solution; the tuned one is kept only if its error on all calibration batches is lower.
- The scales are trained as a multiplier (init 1) and U, V with a learning rate relative to their RMS, so one
  `lr` means the same for every matrix and model width.

Shape legend: O output rows, I input columns, N groups per row, S group size, r rank.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from models.compress.lowrank import LowRank, sym_round_rows
from models.compress.quantize import FP16_TINY, QTensor


def _ste(x: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    return x + (rounded - x).detach()


def fake_quant_rows(x_rN: torch.Tensor, bits: int) -> torch.Tensor:
    """The values LowRank.quantize stores for x (rows: symmetric codes, fp16 scale), straight-through."""
    if bits >= 32:
        return x_rN
    if bits == 16:
        return _ste(x_rN, x_rN.half().float())
    q, scale = sym_round_rows(x_rN.detach(), bits)
    return _ste(x_rN, q * scale[:, None])


class _Tunable:
    """One matrix's frozen integer grid and its trainable scale multiplier and factors."""

    def __init__(self, q: QTensor, tune_scales: bool) -> None:
        self.q = q
        O, I = q.shape  # noqa: E741 (shape legend names)
        self.scale_ON = q.scale.float()
        g = q.group_size
        grid = q._dequantize_grid(torch.float32).reshape(O, I // g, g)
        self.int_ONS = torch.round(grid / self.scale_ON[..., None])  # code - zero: exact small integers
        self.mult_ON = nn.Parameter(torch.ones_like(self.scale_ON)) if tune_scales else None
        lr = q.lowrank
        self.lr_bits = lr.bits if lr is not None else 0
        if lr is not None:
            u, v = lr.factors()
            self.ut = nn.Parameter(u.T.contiguous().clone())
            self.v = nn.Parameter(v.clone())
        else:
            self.ut = self.v = None

    def params(self, lr: float) -> list[dict]:
        groups = []
        if self.mult_ON is not None:
            groups.append({"params": [self.mult_ON], "lr": lr})
        for p in (self.ut, self.v):
            if p is not None:
                groups.append({"params": [p], "lr": lr * float(p.detach().pow(2).mean().sqrt().clamp_min(1e-8))})
        return groups

    def scale(self) -> torch.Tensor:
        if self.mult_ON is None:
            return self.scale_ON
        s = self.scale_ON * self.mult_ON
        return _ste(s, s.detach().clamp_min(FP16_TINY).half().float())

    def weight(self) -> torch.Tensor:
        w = (self.int_ONS * self.scale()[..., None]).reshape(self.q.shape)
        if self.ut is not None:
            w = w + fake_quant_rows(self.ut, self.lr_bits).T @ fake_quant_rows(self.v, self.lr_bits)
        return w

    @torch.no_grad()
    def result(self) -> QTensor:
        scale = self.scale().half()
        lr = None
        if self.ut is not None:
            lr = LowRank.quantize(self.ut.detach().T, self.v.detach(), self.lr_bits)
        return dataclasses.replace(self.q, scale=scale, lowrank=lr)


def _out(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


@torch.no_grad()
def block_error(block: nn.Module, weights: dict[str, torch.Tensor], records: list) -> float:
    """Mean squared error of `block` run with `weights` (all its parameters) against the records' outputs."""
    err = n = 0.0
    for args, kwargs, target in records:
        y = _out(functional_call(block, weights, args, kwargs))
        err += float(((y.float() - target.float()) ** 2).sum())
        n += target.numel()
    return err / max(n, 1.0)


def tune_block(block: nn.Module, qtensors: dict[str, QTensor], records: list, steps: int, lr: float,
               tune_scales: bool, seed: int = 0) -> tuple[dict[str, QTensor], dict[str, float]]:
    """Train the free parts of `block`'s quantized weights (keys: parameter names inside the block) to reproduce
    `records` = [(args, kwargs, fp_output)] of the block's calibration forwards.
    -> (the tuned QTensors, or the given ones where tuning did not lower the error; {"before", "after"} errors)."""
    frozen = {k: v.detach() for k, v in block.named_parameters()}
    tun = {k: _Tunable(q, tune_scales) for k, q in qtensors.items()}

    def weights() -> dict[str, torch.Tensor]:
        return {**frozen, **{k: t.weight().to(frozen[k].dtype) for k, t in tun.items()}}

    groups = [g for t in tun.values() for g in t.params(lr)]
    with torch.no_grad():
        before = block_error(block, {**frozen, **{k: q.dequantize(frozen[k].dtype) for k, q in qtensors.items()}},
                              records)
    if not groups or steps <= 0 or not records:
        return qtensors, {"before": before, "after": before}
    opt = torch.optim.Adam(groups)
    order = list(range(len(records)))
    rng = random.Random(seed)
    with torch.enable_grad():
        for step in range(steps):
            if step % len(order) == 0:
                rng.shuffle(order)
            args, kwargs, target = records[order[step % len(order)]]
            y = _out(functional_call(block, weights(), args, kwargs))
            loss = ((y.float() - target.float()) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    tuned = {k: t.result() for k, t in tun.items()}
    after = block_error(block, {**frozen, **{k: q.dequantize(frozen[k].dtype) for k, q in tuned.items()}}, records)
    if after >= before:
        return qtensors, {"before": before, "after": before}
    return tuned, {"before": before, "after": after}
