"""A real (tiny) IsoFLOP sweep on TinyStories shards: runs, fit, PNG, resume, and `--law fitted` using it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("scipy", reason="the law fit uses scipy's L-BFGS-B")


@pytest.fixture(scope="module")
def tiny_shards(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipelines.tokenize import TokenizeConfig, run_tokenize

    root = tmp_path_factory.mktemp("sweep_data")
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    small = root / "stories.txt"
    small.write_text("\n<|endoftext|>\n".join(text.split("\n<|endoftext|>\n")[:300]), encoding="utf-8")
    run_tokenize(TokenizeConfig(vocab_size=512, val_fraction=0.05, progress=False), [small], root / "tok",
                 root / "shards", seed=0)
    return root / "shards"


def test_sweep_fit_png_resume_and_fitted_plan(tiny_shards: Path, tmp_path: Path) -> None:
    from train.planner import PlanConfig, run_plan
    from train.planner.laws import load_fitted
    from train.planner.sweep import SweepConfig, run_sweep, sweep_shapes

    cfg = SweepConfig(budgets=[1.5e9, 3e9], num_sizes=3, size_span=6.0, tokens_per_param=1.0, seq_len=32, batch_size=4, min_steps=5,
                      num_val_tokens=2048, num_bootstrap=4, num_starts=4)
    assert len(sweep_shapes(cfg, 512)) >= 5
    out = tmp_path / "sweep"
    res = run_sweep(cfg, tiny_shards, out)
    runs = res["runs"]
    assert len(runs) >= 5 and all(r["final_val_loss"] > 0 for r in runs)
    assert all(r["flops"] == pytest.approx(r["budget"], rel=0.05) for r in runs)  # each run spends its budget
    assert (out / "isoflop.png").stat().st_size > 10_000
    law = load_fitted(out / "fitted_law.json")
    assert law.param_convention == "non-embedding" and 0 < law.alpha <= 3 and 0 < law.beta <= 3
    assert res["fit"]["max_abs_rel_residual"] < 0.2
    h = res["holdout"]
    assert h["budget"] == 6e9 and h["predicted_loss"] > 0 and "rel_error" in h
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == len(runs) + 1  # sweep runs + the held-out one
    # resume: a second call trains nothing new
    again = run_sweep(cfg, tiny_shards, out)
    assert (out / "runs.jsonl").read_text().splitlines() == lines
    assert again["params"] == pytest.approx(res["params"], rel=1e-6)
    # the planner uses it
    plan = run_plan(PlanConfig(flops=1e10, law="fitted", fitted_law=out / "fitted_law.json", seq_len=32,
                               include_presets=False, num_candidates=3), tmp_path / "plan.json", shards_dir=tiny_shards)
    assert plan["law"]["name"] == "fitted"
    assert json.loads((tmp_path / "plan.json").read_text())["model"]["vocab_size"] == 512


def test_sweep_config_rejects_too_few_runs() -> None:
    from train.planner.sweep import SweepConfig

    with pytest.raises(ValueError, match="^num_sizes: "):
        SweepConfig(budgets=[1e10], num_sizes=4)
    with pytest.raises(ValueError, match="^budgets: "):
        SweepConfig(budgets=[-1.0])
