"""`train.compile: auto`: torch.compile the training forward/backward where it pays, decided per run.

Why: on a GPU compiling is a clear win over any run worth launching, but on a CPU a cold compile takes a minute or
more, while the steady-state gain depends on the model, the precision and the machine (LOG.md, session 7: 1.2-1.3x
on the demo's shape), so a fixed answer is wrong for either the demo or a long run. The question is arithmetic once
the numbers are measured: the eager and compiled time of one micro-batch and what the compile costs. Compile when
the time the run saves pays the compile back `PAYBACK` times.

Design and invariants
- CUDA: compile (with Triton present). CPU: measured, never assumed. The numbers come from a cache per machine and
  shape (`$TINYFOUNDRY_CACHE_DIR/compile.json`, like the matmul peaks of train/peak_flops.py), or from a probe on a
  copy of the very model to be trained (so LoRA, QAT and pruned shapes are what is timed): a few eager
  forward+backward micro-batches on random tokens, then, only when the eager time of the run is at least
  `PROBE_MIN_RUN_RATIO` x the compile time to expect, a compile of the copy, interleaved eager/compiled
  micro-batches and a second compile after `torch._dynamo.reset()`.
- Two compile costs are measured: cold (`compile_s`, Inductor generating and building C++ kernels) and warm
  (`warm_s`, Dynamo tracing again while Inductor/AOTAutograd find their kernels in the on-disk cache; ~1-2 s here).
  After a probe the run pays the warm one (the probe paid the cold one). A later process pays the warm one while
  Inductor's on-disk cache holds kernels, else the cold one.
- The compile time to expect for the gate is the smallest cold one cached on this machine, else `DEFAULT_COMPILE_S`
  (a measured order of magnitude, LOG.md); it only decides whether measuring is worth its cost (at most
  1/`PROBE_MIN_RUN_RATIO` of the run when the answer is then "eager"), never whether to compile.
- The probe never touches the global RNG (forked) or the model being trained (a deep copy), so a seeded run's
  losses do not depend on whether it probed.
- Several CPU processes (DDP) read the cache and never probe: each would measure for itself and could decide
  differently; without a cached answer they train eager.
- The decision and its reason are logged by the caller and recorded in the run summary; explicit true/false
  pass through untouched.

Shape legend: B micro-batch, T sequence.
"""

from __future__ import annotations

import copy
import hashlib
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.atomic import read_json_or_empty, update_json_cache
from train.peak_flops import cache_dir, cpu_cache_key

PAYBACK = 2.0
"""Compile when the micro-batches left x (eager - compiled seconds) >= PAYBACK x the compile's cost (warm or cold)."""
PROBE_MIN_RUN_RATIO = 5.0
"""Probe a compile only when the run's eager time is at least this many times the compile time to expect: then a
probe that ends in "eager" costs at most a fifth of the run, and one that ends in "compile" (the usual outcome:
the compile is paid once, the run goes on warm) has paid for itself when the speedup is >= 1.25x."""
DEFAULT_COMPILE_S = 60.0
"""Cold compile time to expect before any was measured on this machine (54-104 s on a loaded 2-core CPU for the
demo's and a 7M-parameter shape, LOG.md session 7)."""
EAGER_PROBE_STEPS = 3
"""Eager micro-batches timed for the gate (one more runs untimed first)."""
INTERLEAVED_STEPS = 4
"""Eager and compiled micro-batches timed in turn after the compile."""


@dataclass
class CompileDecision:
    """What `auto` (or the config) chose, why, and the measurement behind it."""

    compile: bool
    why: str
    measured: dict[str, Any] = field(default_factory=dict)
    """eager_s / compiled_s / compile_s per micro-batch (seconds), source ('cache' or 'probe'), load average."""

    def to_dict(self) -> dict[str, Any]:
        return {"compile": self.compile, "why": self.why, **({"measured": self.measured} if self.measured else {})}


# ------------------------------------------------------------------------------------------------------ cache
def machine_key() -> str:
    """The machine part of a cache key: CPU model, torch threads, torch version (as the matmul peaks')."""
    return cpu_cache_key("compile")


def shape_key(model: nn.Module, batch_size: int, seq_len: int, precision: str) -> str:
    """What decides the step's speed besides the machine: the module tree (types and shapes, so LoRA / QAT / a
    pruned model differ), which parameters train, activation checkpointing, micro-batch shape and precision."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    ckpt = bool(getattr(model, "activation_checkpointing", False))
    blob = f"{model!r}|trainable={trainable}|ckpt={ckpt}"
    return f"{hashlib.sha256(blob.encode()).hexdigest()[:12]}|B={batch_size}|T={seq_len}|{precision}"


def cache_path() -> Path:
    return cache_dir() / "compile.json"


def read_cache() -> dict[str, dict[str, Any]]:
    return read_json_or_empty(cache_path())


def write_cache(key: str, entry: dict[str, Any]) -> None:
    """Add one measurement (read-modify-write, then an atomic rename)."""
    update_json_cache(cache_path(), key, entry, sort_keys=True)


def expected_compile_s(cache: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """(compile seconds to expect, where from): the smallest measured on this machine, else the default."""
    prefix = machine_key() + "|"
    seen = [float(v["compile_s"]) for k, v in cache.items() if k.startswith(prefix) and "compile_s" in v]
    if seen:
        return min(seen), f"the fastest of {len(seen)} compile(s) measured on this machine"
    return DEFAULT_COMPILE_S, "none measured on this machine yet"


# ------------------------------------------------------------------------------------------------------ probe
def _micro_batch(fn: Any, params: list[nn.Parameter], x_BT: torch.Tensor, y_BT: torch.Tensor,
                 bf16: bool) -> float:
    """Seconds of one forward + backward, as a training step runs it (under CPU bf16 autocast when asked)."""
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = fn(x_BT, targets_BT=y_BT).loss
    loss.backward()
    dt = time.perf_counter() - t0
    for p in params:
        p.grad = None
    return dt


class Probe:
    """Times micro-batches of a private copy of `model` on random tokens (global RNG forked, model untouched)."""

    def __init__(self, model: nn.Module, batch_size: int, seq_len: int, precision: str, vocab_size: int) -> None:
        self.model = copy.deepcopy(model).train()
        self.bf16 = precision == "bf16-mixed"
        if self.bf16:
            from train.cpu_bf16 import cpu_has_native_bf16, use_tn_linears

            if not cpu_has_native_bf16():
                use_tn_linears(self.model)  # what LMSystem.on_fit_start does on such CPUs
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(0)
        self.x_BT = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)
        self.y_BT = torch.randint(0, vocab_size, (batch_size, seq_len), generator=gen)

    def step(self, fn: Any) -> float:
        with torch.random.fork_rng(devices=[]):
            return _micro_batch(fn, self.params, self.x_BT, self.y_BT, self.bf16)

    def eager(self, n: int) -> list[float]:
        self.step(self.model)  # first call: allocator and kernel selection
        return [self.step(self.model) for _ in range(n)]

    def compiled(self, n: int) -> dict[str, Any]:
        """Compile, then time: `compile_s` is the first compiled micro-batch less a steady one (Inductor from
        whatever its on-disk cache holds: cold on a machine's first probe of a shape); eager and compiled then
        alternate so load changes hit both alike; `warm_s` is a compile after `torch._dynamo.reset()`, with
        Inductor's and AOTAutograd's caches filled: what the run itself pays after this probe, and what a later
        process pays while that on-disk cache lasts."""
        fn = torch.compile(self.model)
        first = self.step(fn)
        self.step(fn)  # a second call can still specialise (e.g. a recompile on grad state); keep it untimed
        eager, comp = [], []
        for _ in range(n):
            eager.append(self.step(self.model))
            comp.append(self.step(fn))
        steady = statistics.median(comp)
        del fn
        torch._dynamo.reset()
        warm = self.step(torch.compile(self.model)) - steady
        return {"eager_s": statistics.median(eager), "compiled_s": steady, "compile_s": max(0.0, first - steady),
                "warm_s": max(0.0, warm)}


def inductor_cache_on_disk() -> bool:
    """Whether Inductor's on-disk FX graph cache exists and holds entries (a reboot or a cleaned temp folder empties it:
    then a compile is cold again)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    d = Path(os.environ.get("TORCHINDUCTOR_CACHE_DIR") or default_cache_dir()) / "fxgraph"
    try:
        return d.is_dir() and any(d.iterdir())
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------------ decision
def decide(entry: dict[str, Any], micro_batches: int, source: str, warm: bool) -> CompileDecision:
    """The arithmetic: compile iff micro_batches x (eager_s - compiled_s) >= PAYBACK x the compile's cost, the cost
    being `warm_s` when the compiled kernels are cached (`warm`), else the cold `compile_s`."""
    eager_s, comp_s = float(entry["eager_s"]), float(entry["compiled_s"])
    cost = float(entry["warm_s"] if warm and "warm_s" in entry else entry["compile_s"])
    saved = micro_batches * (eager_s - comp_s)
    speed = eager_s / comp_s if comp_s > 0 else float("inf")
    facts = (f"{source}: micro-batch {eager_s * 1e3:.0f} ms eager vs {comp_s * 1e3:.0f} ms compiled "
             f"({speed:.2f}x), compile {cost:.1f} s ({'kernels cached' if warm else 'cold'}; "
             f"cold {float(entry['compile_s']):.0f} s)")
    measured = {**entry, "source": source, "micro_batches_left": micro_batches, "saved_s": saved,
                "compile_cost_s": cost}
    if saved >= PAYBACK * cost:
        return CompileDecision(True, f"CPU, {facts}; {micro_batches} micro-batches save ~{saved:.0f} s "
                                     f">= {PAYBACK:g}x the compile", measured)
    return CompileDecision(False, f"CPU, {facts}; {micro_batches} micro-batches would save ~{saved:.0f} s "
                                  f"< {PAYBACK:g}x the compile", measured)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton

        return bool(has_triton())
    except ImportError:
        return False


def resolve_compile(setting: bool | str, accelerator: str, model: nn.Module, batch_size: int, seq_len: int,
                    precision: str, micro_batches: int, vocab_size: int, world_size: int = 1) -> CompileDecision:
    """Whether to train `model` through torch.compile: `setting` true/false as given, 'auto' decided here.

    `micro_batches`: forward+backward passes the run still has to do (optimizer steps left x accumulation);
    `precision`: the resolved one ('fp32', 'bf16-mixed', ...)."""
    if setting is not True and setting is not False and setting != "auto":
        raise ValueError(f"compile: must be true, false or 'auto', got {setting!r}")
    if setting != "auto":
        return CompileDecision(bool(setting), "set in the config")
    if accelerator == "gpu":
        if _has_triton():
            return CompileDecision(True, "CUDA with Triton: compiled kernels, the compile repaid within minutes")
        return CompileDecision(False, "CUDA without Triton: torch.compile has no GPU backend here")
    shape = shape_key(model, batch_size, seq_len, precision)
    key = f"{machine_key()}|{shape}"
    cache = read_cache()
    if key in cache:
        return decide(cache[key], micro_batches, "cached measurement", inductor_cache_on_disk())
    if world_size > 1:
        return CompileDecision(False, f"CPU with {world_size} processes and no cached measurement for this machine "
                                      "and shape (processes do not probe: each could decide differently)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    probe = Probe(model, batch_size, seq_len, precision, vocab_size)
    eager = statistics.median(probe.eager(EAGER_PROBE_STEPS))
    run_s = micro_batches * eager
    expect_s, expect_src = expected_compile_s(cache)
    if run_s < PROBE_MIN_RUN_RATIO * expect_s:
        return CompileDecision(False, f"CPU, run too short to measure a compile: {micro_batches} micro-batches x "
                                      f"{eager * 1e3:.0f} ms eager = ~{run_s:.0f} s < {PROBE_MIN_RUN_RATIO:g}x the "
                                      f"~{expect_s:.0f} s a compile takes ({expect_src})",
                               {"eager_s": eager, "source": "probe", "load": load})
    try:
        measured = probe.compiled(INTERLEAVED_STEPS)
    except Exception as e:  # no C++ compiler, an op Inductor cannot lower, ...: train as before
        return CompileDecision(False, f"CPU, torch.compile failed in the probe ({type(e).__name__}: "
                                      f"{str(e).splitlines()[0][:160] if str(e) else ''})")
    entry = {**measured, "load": round(load, 2), "when": time.strftime("%Y-%m-%d %H:%M:%S"), "shape": shape}
    write_cache(key, entry)  # kept even on a busy machine: load slows all the numbers alike
    return decide(entry, micro_batches, f"probe (load {load:.1f})", warm=True)  # the probe paid the cold compile
