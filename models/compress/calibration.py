"""Calibration plumbing shared by GPTQ, Wanda and activation-aware scaling.

Design and invariants
- Sequential, block by block (as GPTQ and Wanda do): the inputs of block i are computed by a model whose
  blocks 0..i-1 are *already compressed*, so each block corrects for the error upstream of it. We do it
  without knowing the model's internals: one forward of the whole model per stage, with forward hooks on
  that stage's nn.Linear layers accumulating X^T X, and a hook on the stage's last module raising
  `_StopForward` so the layers after it are never computed.
- Statistics: the (unnormalised) Gram matrix H = sum_t x_t x_t^T over calibration tokens, per Linear
  layer, in fp32. GPTQ uses H itself; Wanda uses ||X_j||_2 = sqrt(diag(H)); AWQ-style scaling uses the
  mean |x_j|, accumulated alongside.
- Calibration tokens are a 1-D LongTensor (the caller reads them from the val shards); they are cut into
  non-overlapping windows of `seq_len` tokens.

Shape legend: N calibration windows, T window length, I input features of a Linear layer.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm


class _StopForward(Exception):
    pass


@dataclass
class InputStats:
    """Running input statistics of one nn.Linear: Gram matrix, sum of |x| and the number of rows."""

    gram_II: torch.Tensor
    abs_sum_I: torch.Tensor
    count: int = 0

    @classmethod
    def zeros(cls, in_features: int) -> InputStats:
        return cls(torch.zeros(in_features, in_features), torch.zeros(in_features))

    def add(self, x_RI: torch.Tensor) -> None:
        x = x_RI.detach().float().reshape(-1, x_RI.shape[-1]).cpu()
        self.gram_II.addmm_(x.T, x)
        self.abs_sum_I += x.abs().sum(0)
        self.count += x.shape[0]

    @property
    def col_norm_I(self) -> torch.Tensor:
        """||X_j||_2 over all calibration rows (Wanda's activation norm)."""
        return self.gram_II.diagonal().clamp_min(0).sqrt()


@dataclass
class Stage:
    """The Linear layers calibrated together, and the module after whose forward the pass can stop."""

    linears: dict[str, nn.Linear]
    stop: nn.Module
    name: str = ""
    stats: dict[str, InputStats] = field(default_factory=dict)
    records: list[tuple[tuple, dict, torch.Tensor]] = field(default_factory=list)
    """With `record`: (args, kwargs, output) of each calibration forward of `stop` (block-wise reconstruction)."""


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks: its longest nn.ModuleList of same-typed modules."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and len({type(m) for m in mod}) == 1:
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        raise ValueError(f"model: no nn.ModuleList of blocks found in {type(model).__name__}")
    return best


def is_router(name: str, mod: nn.Module) -> bool:
    return "router" in name or "gate_inp" in name


def calibration_stages(model: nn.Module, include_head: bool) -> list[Stage]:
    """One stage per block (its Linear layers, routers excluded), then optionally the untied output head."""
    blocks_name, blocks = find_blocks(model)
    stages = []
    for i, block in enumerate(blocks):
        linears = {
            f"{blocks_name}.{i}.{n}": m
            for n, m in block.named_modules()
            if isinstance(m, nn.Linear) and not is_router(n, m)
        }
        stages.append(Stage(linears, block, name=f"block {i}"))
    if include_head:
        in_blocks = {id(m) for s in stages for m in s.linears.values()}
        tied = {p.data_ptr() for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
        rest = {
            n: m
            for n, m in model.named_modules()
            if isinstance(m, nn.Linear)
            and id(m) not in in_blocks
            and not is_router(n, m)
            and m.weight.data_ptr() not in tied
        }
        for n, m in rest.items():
            stages.append(Stage({n: m}, m, name=n))
    return stages


def windows(tokens: torch.Tensor, seq_len: int, num_tokens: int) -> torch.Tensor:
    """(N, T) non-overlapping windows from the start of a 1-D token tensor, N*T <= num_tokens."""
    if tokens.ndim != 1:
        raise ValueError(f"tokens: must be a 1-D LongTensor, got shape {tuple(tokens.shape)}")
    n = min(num_tokens, tokens.numel()) // seq_len
    if n == 0:
        raise ValueError(f"tokens: need at least seq_len={seq_len} tokens, got {tokens.numel()}")
    return tokens[: n * seq_len].long().reshape(n, seq_len)


@torch.no_grad()
def run_sequential(
    model: nn.Module,
    calib_NT: torch.Tensor,
    stages: list[Stage],
    on_stage: Callable[[Stage], None],
    batch_size: int = 8,
    desc: str = "calibrate",
    record: bool = False,
) -> None:
    """For each stage in order: accumulate its layers' input stats with the current (already partly
    compressed) model, then call `on_stage(stage)`, which compresses those layers in place. With `record`, the
    stage's `stop` module's inputs and (still uncompressed) output of every batch are kept in `stage.records`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for stage in tqdm(stages, desc=desc, unit="stage", leave=False):
            stage.stats = {n: InputStats.zeros(m.in_features) for n, m in stage.linears.items()}
            hooks = [
                m.register_forward_hook(lambda _m, inp, _out, n=n, st=stage.stats: st[n].add(inp[0]))
                for n, m in stage.linears.items()
            ]

            def stop(_m, args, kwargs, out, st=stage):
                if record:
                    st.records.append((_detached(args), _detached(kwargs), _detached(out[0] if isinstance(out, tuple)
                                                                                       else out)))
                raise _StopForward

            hooks.append(stage.stop.register_forward_hook(stop, with_kwargs=True))
            try:
                _forward_batches(model, calib_NT, batch_size, device)
            finally:
                for h in hooks:
                    h.remove()
            on_stage(stage)
            stage.stats, stage.records = {}, []
    finally:
        model.train(was_training)


def _forward_batches(model: nn.Module, calib_NT: torch.Tensor, batch_size: int, device: torch.device) -> None:
    """Run the calibration batches through `model`; a hook that raised _StopForward ends each one early."""
    for b in range(0, calib_NT.shape[0], batch_size):
        try:
            model(calib_NT[b : b + batch_size].to(device))
        except _StopForward:
            pass


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, tuple | list):
        return type(x)(_detached(v) for v in x)
    if isinstance(x, dict):
        return {k: _detached(v) for k, v in x.items()}
    return x


StageTune = Callable[[nn.Module, dict[str, Any], list], dict[str, Any]]
"""`tune(block, {"<name inside block>.weight": QTensor}, records) -> the QTensors to keep` (models/compress/blocktune)."""


@torch.no_grad()
def module_outputs(model: nn.Module, module: nn.Module, calib_NT: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """`module`'s output (first element of a tuple) for each calibration batch; the forward stops after it."""
    outs: list[torch.Tensor] = []

    def stop(_m, _inp, out):
        outs.append((out[0] if isinstance(out, tuple) else out).detach())
        raise _StopForward

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    h = module.register_forward_hook(stop)
    try:
        _forward_batches(model, calib_NT, batch_size, device)
    finally:
        h.remove()
        model.train(was_training)
    return outs


StagePlan = Callable[[nn.Module, dict[str, tuple[torch.Tensor, torch.Tensor]], list], None]
"""`plan(block, {"<module name>": (weight, gram_II)}, records)`: called once per block before its linears are quantized."""


def quantize_blocks(model: nn.Module, calib_NT: torch.Tensor, batch_size: int, desc: str,
                    quantize: Callable[[str, torch.Tensor, torch.Tensor], Any],
                    tune: StageTune | None = None, tune_target: str = "block",
                    plan: StagePlan | None = None) -> dict[str, Any]:
    """The sequential weight-replacing passes (GPTQ, 2-4-bit, low-rank) in one place: stage by stage, each block
    linear's `quantize(name, weight, gram_II) -> QTensor | None` is computed on the inputs of the model compressed
    so far, and the linear's weight becomes its dequantized value (None: the weight stays as it is). With `tune`,
    each block's QTensors are first handed to it with the block's recorded calibration inputs and full-precision
    outputs (block-wise reconstruction), and what it returns replaces them. The outputs are the uncompressed
    block's on the inputs the compressed model feeds it (`tune_target` block), or the uncompressed model's own
    (`model`: the block also learns to undo the error upstream of it, as ApiQ does).
    `plan(block, {name: (weight, gram_II)}, records)`, when given, sees a whole block's linears (and its recorded
    calibration forwards) before the first of them is quantized (e.g. to split a bit budget between them).
    -> {"<module>.weight": QTensor} of the replaced weights."""
    out: dict[str, Any] = {}
    if tune_target not in ("block", "model"):
        raise ValueError(f"tune_target: must be block or model, got {tune_target!r}")
    fp = copy.deepcopy(model) if tune is not None and tune_target == "model" else None

    def on_stage(stage: Stage) -> None:
        if plan is not None:
            plan(stage.stop, {n: (lin.weight.data, stage.stats[n].gram_II) for n, lin in stage.linears.items()},
                 stage.records)
        done = {}
        for name, lin in stage.linears.items():
            q = quantize(name, lin.weight.data, stage.stats[name].gram_II)
            if q is not None:
                done[name] = q
        if tune is not None and done:
            prefix = next(n for n, m in model.named_modules() if m is stage.stop) + "."
            local = {n[len(prefix):] + ".weight": q for n, q in done.items()}
            records = stage.records
            if fp is not None:
                targets = module_outputs(fp, fp.get_submodule(prefix[:-1]), calib_NT, batch_size)
                records = [(a, k, t) for (a, k, _), t in zip(records, targets, strict=True)]
            tuned = tune(stage.stop, local, records)
            done = {prefix + k[: -len(".weight")]: q for k, q in tuned.items()}
        for name, q in done.items():
            lin = stage.linears[name]
            lin.weight.data.copy_(q.dequantize(lin.weight.dtype))
            out[name + ".weight"] = q

    run_sequential(model, calib_NT, calibration_stages(model, include_head=False), on_stage, batch_size, desc=desc,
                   record=tune is not None or plan is not None)
    return out

