"""`train.compile: auto` (train/compile_auto.py): the decision per device and per measurement, the probe that leaves
the run untouched, and compiled training through the one recipe: losses as eager, checkpoints without `_orig_mod.`
that resume eager <-> compiled, bf16 autocast, EMA, and the summary recording the choice."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, load_model
from train import TrainConfig, compile_auto, run_train
from train.compile_auto import PAYBACK, machine_key, read_cache, resolve_compile, shape_key, write_cache

TINY = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=32)


@pytest.fixture(autouse=True)
def _caches_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with empty caches of its own: ours (compile.json) and Inductor's compiled kernels."""
    monkeypatch.setenv("TINYFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))


def _cache(model: torch.nn.Module, eager_s: float, compiled_s: float, compile_s: float, precision: str = "fp32",
           batch: int = 4, seq: int = 32, warm_s: float = 2.0) -> None:
    """A measurement as a previous probe on this machine would have left it."""
    write_cache(f"{machine_key()}|{shape_key(model, batch, seq, precision)}",
                {"eager_s": eager_s, "compiled_s": compiled_s, "compile_s": compile_s, "warm_s": warm_s})


def test_explicit_settings_and_cuda() -> None:
    m = Transformer(TINY)
    assert resolve_compile(True, "cpu", m, 4, 32, "fp32", 1, 512).compile is True
    d = resolve_compile(False, "gpu", m, 4, 32, "fp32", 10**9, 512)
    assert d.compile is False and d.why == "set in the config"
    with pytest.raises(ValueError, match="compile: must be true, false or 'auto'"):
        resolve_compile("yes", "cpu", m, 4, 32, "fp32", 1, 512)
    with pytest.raises(ValueError, match="compile: must be true, false or 'auto'"):
        TrainConfig(compile="yes")  # type: ignore[arg-type]


def test_cuda_auto_compiles_when_triton_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    m = Transformer(TINY)
    monkeypatch.setattr(compile_auto, "_has_triton", lambda: True)  # the GPU is what this CPU box cannot provide
    d = resolve_compile("auto", "gpu", m, 4, 32, "bf16-mixed", 10, 512)
    assert d.compile is True and "CUDA" in d.why and not read_cache()  # nothing measured, nothing cached
    monkeypatch.setattr(compile_auto, "_has_triton", lambda: False)
    assert resolve_compile("auto", "gpu", m, 4, 32, "bf16-mixed", 10, 512).compile is False


def test_cpu_auto_from_cached_measurements(tmp_path: Path) -> None:
    m = Transformer(TINY)
    _cache(m, eager_s=0.100, compiled_s=0.080, compile_s=40.0)  # 20 ms saved per micro-batch, 40 s cold compile
    needed = int(PAYBACK * 40.0 / 0.020) + 1
    long = resolve_compile("auto", "cpu", m, 4, 32, "fp32", needed, 512)
    assert long.compile is True and "cached measurement" in long.why and "1.25x" in long.why and "cold" in long.why
    assert long.measured["source"] == "cached measurement" and long.measured["saved_s"] >= PAYBACK * 40.0
    short = resolve_compile("auto", "cpu", m, 4, 32, "fp32", needed // 2, 512)
    assert short.compile is False and "< 2x the compile" in short.why
    # another precision or micro-batch is another shape: its own (here: a too small) gain
    _cache(m, eager_s=0.100, compiled_s=0.099, compile_s=40.0, precision="bf16-mixed")
    assert resolve_compile("auto", "cpu", m, 4, 32, "bf16-mixed", needed, 512).compile is False
    _cache(m, eager_s=0.100, compiled_s=0.120, compile_s=40.0, batch=8)  # compiled slower: never
    assert resolve_compile("auto", "cpu", m, 8, 32, "fp32", 10**9, 512).compile is False
    # Inductor's on-disk cache holds kernels: the compile costs the measured warm 2 s, the shorter run compiles
    (tmp_path / "inductor" / "fxgraph" / "ab").mkdir(parents=True)
    warm = resolve_compile("auto", "cpu", m, 4, 32, "fp32", needed // 2, 512)
    assert warm.compile is True and "kernels cached" in warm.why and warm.measured["compile_cost_s"] == 2.0
    assert resolve_compile("auto", "cpu", m, 4, 32, "fp32", int(PAYBACK * 2.0 / 0.020) - 1, 512).compile is False


def test_cpu_auto_short_run_probes_eager_only_and_touches_nothing() -> None:
    m = Transformer(TINY).train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    rng = torch.get_rng_state()
    d = resolve_compile("auto", "cpu", m, 4, 32, "fp32", 20, 512)
    assert d.compile is False and "run too short to measure a compile" in d.why and d.measured["eager_s"] > 0
    assert torch.equal(torch.get_rng_state(), rng)  # a seeded run's draws do not depend on the probe
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items()) and all(p.grad is None for p in
                                                                                       m.parameters())
    assert not read_cache()  # an eager-only probe is not a measurement of compile
    # several CPU processes never probe; without a cached answer they train eager
    d = resolve_compile("auto", "cpu", m, 4, 32, "fp32", 10**9, 512, world_size=2)
    assert d.compile is False and "2 processes" in d.why


@pytest.mark.slow
def test_cpu_auto_long_run_probes_a_compile_and_caches_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # an empty cache: a real cold compile
    m = Transformer(TINY).train()
    rng = torch.get_rng_state()
    d = resolve_compile("auto", "cpu", m, 4, 32, "fp32", 10**9, 512)  # a long run: the probe is cheap in comparison
    assert torch.equal(torch.get_rng_state(), rng)
    entry = next(iter(read_cache().values()))
    assert entry["compile_s"] > 0 and entry["compiled_s"] > 0 and entry["eager_s"] > 0 and entry["warm_s"] >= 0
    # warm < cold is what a real model shows (LOG.md: 1-5 s vs 54-104 s); for this tiny model both are Dynamo's
    # tracing and swap places under load (13.0 s cold vs 15.5 s warm in one CI run), so it is not asserted here
    assert d.measured["source"].startswith("probe") and d.measured["compile_cost_s"] == entry["warm_s"]
    assert d.compile == (10**9 * (entry["eager_s"] - entry["compiled_s"]) >= PAYBACK * entry["warm_s"])
    again = resolve_compile("auto", "cpu", m, 4, 32, "fp32", 10**9, 512)  # the next run reads the cache
    assert again.measured["source"] == "cached measurement" and again.compile == d.compile


def _cfg(**kw: object) -> TrainConfig:
    base = dict(seed=0, max_tokens=8 * 4 * 32, batch_size=4, seq_len=32, precision="fp32", num_val_tokens=256,
                progress_bar=False, log_every_steps=1, num_sample_tokens=0, logger="csv", num_threads=1,
                ckpt_every_tokens=4 * 4 * 32)
    return TrainConfig(**{**base, **kw})  # type: ignore[arg-type]


def _losses(run: Path) -> list[float]:
    rows = list(csv.DictReader((run / "csv" / "metrics.csv").open()))
    return [float(r["train/loss"]) for r in rows if r.get("train/loss")]


def _keys(ckpt: Path) -> list[str]:
    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    return [*c["state_dict"], *c.get("ema_state_dict", {})]


def test_auto_on_a_tiny_run_trains_eager_and_says_why(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    s = run_train(_cfg(max_tokens=2 * 4 * 32), TINY, shards, tmp_path / "run")
    assert s["compile"] is False and "run too short" in s["compile_decision"]["why"]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed"])
def test_compiled_training_matches_eager_and_checkpoints_cross_over(
        tiny_shards: tuple[Path, Path], tmp_path: Path, precision: str) -> None:
    """Compiled and eager runs: the same losses within rounding; a compiled run's checkpoints (weights and EMA)
    carry plain `model.` keys, load as an eager model and resume eager, and an eager run resumes compiled."""
    shards, _ = tiny_shards
    comp, eager = tmp_path / "compiled", tmp_path / "eager"
    sc = run_train(_cfg(compile=True, precision=precision), TINY, shards, comp)
    se = run_train(_cfg(compile=False, precision=precision), TINY, shards, eager)
    assert sc["compile"] is True and se["compile"] is False and sc["steps"] == se["steps"] == 8
    tol = 2e-4 if precision == "fp32" else 2e-2
    assert _losses(comp) == pytest.approx(_losses(eager), rel=tol)
    assert sc["final_val_loss"] == pytest.approx(se["final_val_loss"], rel=tol)
    for ckpt in (comp / "checkpoints").glob("*.ckpt"):
        keys = _keys(ckpt)
        assert keys and all(k.startswith("model.") and "_orig_mod" not in k for k in keys), ckpt.name
    model, _ = load_model(comp / "checkpoints" / "last.ckpt")  # a plain eager Transformer
    assert isinstance(model, Transformer)
    # cross over: 4 more steps each, the compiled run resumed eager and the eager one compiled
    rc = run_train(_cfg(compile=False, precision=precision, max_tokens=12 * 4 * 32), TINY, shards, comp)
    re_ = run_train(_cfg(compile=True, precision=precision, max_tokens=12 * 4 * 32), TINY, shards, eager)
    assert rc["resumed_from"] and re_["resumed_from"] and rc["steps"] == re_["steps"] == 12
    assert rc["compile"] is False and re_["compile"] is True
    assert rc["final_val_loss"] == pytest.approx(re_["final_val_loss"], rel=tol)
