"""`precision: auto` (train/precision.py): the choice per device from cpuinfo flags, the measured matmul peaks and
the GPU's compute capability, explicit precisions untouched, and a real run recording what auto chose."""

from __future__ import annotations

import re

import pytest
import torch

from models import ModelConfig
from train import TrainConfig, peak_flops, run_train
from train.precision import (
    CPU_BF16_MIN_GAIN,
    CPU_BF16_MIN_STEP_GAIN,
    choose_cpu_precision,
    cpu_bf16_flags,
    resolve_precision,
)

SAPPHIRE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_flags_from_cpuinfo() -> None:
    assert cpu_bf16_flags(SAPPHIRE) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16_flags(ZEN3) == []
    assert cpu_bf16_flags(GRAVITON3) == ["bf16"]
    assert cpu_bf16_flags("") == []


def _peaks(monkeypatch: pytest.MonkeyPatch, bf16: float, fp32: float) -> list[torch.dtype]:
    """Fake matmul peaks, in an empty cache folder (the decision is cached too)."""
    asked: list[torch.dtype] = []
    _peaks.n = getattr(_peaks, "n", 0) + 1  # type: ignore[attr-defined]
    monkeypatch.setenv("TINYFOUNDRY_CACHE_DIR", str(_peaks.root / f"cache{_peaks.n}"))  # type: ignore[attr-defined]

    def fake(dtype: torch.dtype, measure_if_missing: bool = True) -> float:
        asked.append(dtype)
        return bf16 if dtype == torch.bfloat16 else fp32

    monkeypatch.setattr(peak_flops, "cpu_peak_flops", fake)
    return asked


@pytest.fixture(autouse=True)
def _cache_root(tmp_path) -> None:
    _peaks.root = tmp_path  # type: ignore[attr-defined]


def test_cpu_auto_needs_the_flag_and_the_measured_speed(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _peaks(monkeypatch, bf16=2.0e12, fp32=1.0e12)
    assert resolve_precision("auto", "cpu", SAPPHIRE)[0] == "bf16-mixed"
    assert torch.bfloat16 in asked and torch.float32 in asked
    asked.clear()
    prec, why = resolve_precision("auto", "cpu", GRAVITON3)  # the decision is cached per machine
    assert prec == "bf16-mixed" and "2.00x" in why and not asked
    asked.clear()
    prec, why = resolve_precision("auto", "cpu", ZEN3)  # no bf16 units: fp32 without measuring
    assert prec == "fp32" and "no bf16" in why and not asked
    _peaks(monkeypatch, bf16=0.2e12, fp32=1.0e12)  # flag present, but bf16 emulated / slow: fp32
    prec, why = resolve_precision("auto", "cpu", SAPPHIRE)
    assert prec == "fp32" and "0.20x" in why
    _peaks(monkeypatch, bf16=(CPU_BF16_MIN_GAIN - 0.01) * 1e12, fp32=1e12)
    assert resolve_precision("auto", "cpu", SAPPHIRE)[0] == "fp32"


def test_explicit_precision_is_never_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _peaks(monkeypatch, bf16=2.0e12, fp32=1.0e12)
    for p in ("fp32", "bf16-mixed", "16-mixed"):
        assert resolve_precision(p, "cpu", SAPPHIRE) == (p, "set in the config")
    assert not asked


@pytest.mark.parametrize(("capability", "expected"), [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16-mixed"),
                                                       ((9, 0), "bf16-mixed")])
def test_gpu_auto_follows_compute_capability(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                             expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    prec, why = resolve_precision("auto", "gpu")
    assert prec == expected and f"{capability[0]}.{capability[1]}" in why


@pytest.mark.slow
def test_auto_on_this_cpu_uses_the_cached_measurement() -> None:
    """Real flags, real matmul peaks (measured, cached unless the machine was busy): auto agrees with them."""
    prec, why = resolve_precision("auto", "cpu")
    if not cpu_bf16_flags():
        assert prec == "fp32"
        return
    gain = float(re.search(r"measured bf16 matmul ([0-9.]+)x fp32", why).group(1))
    assert prec == ("bf16-mixed" if gain >= CPU_BF16_MIN_GAIN else "fp32"), why


def test_default_is_auto_and_the_summary_records_the_choice(tiny_shards, tmp_path) -> None:
    assert TrainConfig().precision == "auto"
    shards, tok = tiny_shards
    cfg = TrainConfig(max_tokens=256, batch_size=4, seq_len=32, num_val_tokens=128, progress_bar=False,
                      num_threads=1, num_sample_tokens=0)
    model = ModelConfig(vocab_size=512, dim=32, num_layers=1, num_heads=2, max_seq_len=64)
    summary = run_train(cfg, model, shards, tmp_path / "run", tokenizer_file=tok)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the run's thread count: its cached measurement, not a new one at another count
    try:
        by_peaks = resolve_precision("auto", "cpu")[0]
    finally:
        torch.set_num_threads(threads)
    decision = summary["precision_decision"]
    assert decision["precision"] == summary["precision"]
    if by_peaks == "fp32":
        assert summary["precision"] == "fp32"
    else:  # the peaks favour bf16: the model's own micro-batch decided
        gain = decision["measured"]["gain"]
        assert summary["precision"] == ("bf16-mixed" if gain >= CPU_BF16_MIN_STEP_GAIN else "fp32"), decision
    # the memory estimate is of the precision that ran, also where the probe overruled the peaks
    from models.accounting import memory_estimate

    ran = "fp32" if summary["precision"] == "fp32" else "bf16-mixed"
    assert summary["memory_estimate_bytes"] == int(memory_estimate(model, 4, 32, precision=ran)["total"])


def test_the_models_own_step_decides_where_the_peaks_favour_bf16(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """A real probe of a tiny model writes both timings to the cache; the cached ratio then decides each way, and
    several processes without a cached answer never probe."""
    import json

    monkeypatch.setenv("TINYFOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    from models import Transformer

    model = Transformer(ModelConfig(vocab_size=128, dim=32, num_layers=1, num_heads=2, max_seq_len=32))
    before = [p.detach().clone() for p in model.parameters()]
    prec, why, measured = choose_cpu_precision(model, 2, 16, 128)
    assert measured["source"].startswith("probe") and measured["fp32_s"] > 0 and measured["bf16_s"] > 0
    assert prec == ("bf16-mixed" if measured["gain"] >= CPU_BF16_MIN_STEP_GAIN else "fp32"), why
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # a copy was timed
    path = tmp_path / "cache" / "precision.json"
    cache = json.loads(path.read_text())
    (key,) = cache
    for fp32_s, bf16_s, want in [(1.0, 0.5, "bf16-mixed"), (1.0, 0.95, "fp32"), (1.0, 1.2, "fp32")]:
        path.write_text(json.dumps({key: {**cache[key], "fp32_s": fp32_s, "bf16_s": bf16_s}}))
        prec, why, measured = choose_cpu_precision(model, 2, 16, 128)
        assert prec == want and measured["source"] == "cached measurement" and f"{fp32_s / bf16_s:.2f}x" in why
    other = Transformer(ModelConfig(vocab_size=128, dim=64, num_layers=1, num_heads=2, max_seq_len=32))
    prec, why, measured = choose_cpu_precision(other, 2, 16, 128, world_size=2)  # another shape, not cached
    assert prec == "bf16-mixed" and "do not probe" in why and measured == {}
    assert len(json.loads(path.read_text())) == 1
