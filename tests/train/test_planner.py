"""run_plan end to end: Chinchilla Table 3 through real shapes, budgets, data limits, inference, MoE, plan.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from models import ModelConfig
from models.accounting import count_params
from train.planner import PlanConfig, format_candidates, run_plan
from train.planner.laws import CHINCHILLA_TABLE3


@pytest.mark.parametrize("n, c, d", CHINCHILLA_TABLE3, ids=[f"{r[0]:.0e}" for r in CHINCHILLA_TABLE3])
def test_plan_chinchilla_table3(tmp_path: Path, n: float, c: float, d: float) -> None:
    cfg = PlanConfig(flops=c, law="chinchilla", vocab_size=32000, num_candidates=1, include_presets=False)
    plan = run_plan(cfg, tmp_path / "plan.json")
    assert abs(plan["num_params"] / n - 1) < 0.05, plan["num_params"]
    assert abs(plan["num_tokens"] / d - 1) < 0.10, plan["num_tokens"]
    # the budget is spent exactly, attention included
    assert plan["num_tokens"] * plan["flops_per_token"] == pytest.approx(c, rel=1e-6)
    # the params are the real module's
    assert plan["num_params"] == count_params(ModelConfig.from_dict(plan["model"]))["total"]


def test_plain_6nd_convention(tmp_path: Path) -> None:
    c = 1.21e20
    plan = run_plan(PlanConfig(flops=c, count_attention=False, vocab_size=32000, num_candidates=1,
                               include_presets=False), tmp_path / "plan.json")
    assert 6 * plan["num_params"] * plan["num_tokens"] == pytest.approx(c, rel=1e-6)
    assert 6 * plan["law_optimum"]["num_params"] * plan["law_optimum"]["num_tokens"] == pytest.approx(c)


def test_monotonic_in_budget(tmp_path: Path) -> None:
    prev_n = prev_d = 0
    for c in (1e13, 1e14, 1e15, 1e16, 1e17):
        plan = run_plan(PlanConfig(flops=c, vocab_size=4096, include_presets=False, num_candidates=3),
                        tmp_path / "plan.json")
        assert plan["num_params"] >= prev_n and plan["num_tokens"] > prev_d
        prev_n, prev_d = plan["num_params"], plan["num_tokens"]
    assert prev_n > 1e6  # the range really moved


@pytest.mark.parametrize(
    "kwargs, field",
    [({"flops": -1.0}, "flops"), ({"flops": 1e15, "hours": 2.0}, "flops"),
     ({"flops": float("nan")}, "flops"), ({"flops": 100.0}, "flops"), ({"hours": -1.0}, "hours"),
     ({"flops": 1e15, "law": "fitted"}, "fitted_law"), ({"flops": 1e15, "mfu": 1.5}, "mfu"),
     ({"flops": 1e15, "seq_len": 0}, "seq_len")],
)
def test_bad_budgets_rejected(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"^{field}: "):
        PlanConfig(**kwargs)


def test_missing_budget_rejected_at_plan_time(tmp_path: Path) -> None:
    # a default PlanConfig must construct (the CLI builds every section); planning without a budget must not
    with pytest.raises(ValueError, match=r"flops: a budget is needed"):
        run_plan(PlanConfig(), tmp_path / "plan.json")
    assert not (tmp_path / "plan.json").exists()


def test_plan_json_feeds_train(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "plan.json"
    plan = run_plan(PlanConfig(flops=1e15), out)
    on_disk = json.loads(out.read_text())
    assert on_disk["num_tokens"] == plan["num_tokens"]
    for key in ("num_params", "num_active_params", "num_tokens", "flops", "predicted_loss", "law",
                "param_convention", "candidates", "chosen", "model", "batch_size", "seq_len", "warmup_tokens",
                "decay_tokens"):
        assert key in on_disk, key
    assert sum(r["chosen"] for r in on_disk["candidates"]) == 1
    assert not list(out.parent.glob("*.tmp"))
    from train import TrainConfig
    from train.runner import resolve

    model_cfg, max_tokens, batch, seq = resolve(TrainConfig(), None, on_disk)
    assert model_cfg == ModelConfig.from_dict(plan["model"])
    assert (max_tokens, batch, seq) == (plan["num_tokens"], plan["batch_size"], plan["seq_len"])
    table = format_candidates(plan)
    chosen_line = next(line for line in table.splitlines() if line.startswith("*"))
    assert plan["chosen"] in chosen_line and "law: chinchilla" in table


def test_data_constrained_warns_and_prefers_epochs_over_params(tmp_path: Path) -> None:
    c = 1e17
    free = run_plan(PlanConfig(flops=c, law="epoch"), tmp_path / "a.json")
    assert not any("epochs" in w for w in free["warnings"])
    few = run_plan(PlanConfig(flops=c, law="epoch", unique_tokens=int(free["num_tokens"] / 20),
                              shrink_for_repeats=True), tmp_path / "b.json")
    # Muennighoff et al.: excess params decay faster than repeated tokens (R*_N = 5.3 < R*_D = 15.4), so the
    # constrained optimum is a smaller model trained for more epochs, and it predicts a higher loss
    assert few["num_params"] < free["num_params"]
    assert few["predicted_loss"] > free["predicted_loss"]
    assert any("epochs" in w and "Muennighoff" in w for w in few["warnings"])
    assert few["epochs"] > 4
    # by default the model is not shrunk below the law's (the repeats still cost predicted loss and warn)
    kept = run_plan(PlanConfig(flops=c, law="epoch", unique_tokens=int(free["num_tokens"] / 20)), tmp_path / "k.json")
    assert kept["num_params"] == free["num_params"] and kept["predicted_loss"] > free["predicted_loss"]
    assert any("kept at the law's size" in s for s in kept["steps"]) and kept["warnings"]
    # enough data: identical to the unconstrained plan
    plenty = run_plan(PlanConfig(flops=c, law="epoch", unique_tokens=int(free["num_tokens"] * 10)), tmp_path / "c.json")
    assert plenty["num_params"] == free["num_params"]


def test_inference_aware_shifts_to_smaller_models(tmp_path: Path) -> None:
    c = 1e18
    sizes, losses = [], []
    for d_inf in (0.0, 1e10, 1e12):
        plan = run_plan(PlanConfig(flops=c, law="epoch", inference_tokens=d_inf), tmp_path / "p.json")
        sizes.append(plan["num_params"])
        losses.append(plan["predicted_loss"])
    assert sizes[0] >= sizes[1] >= sizes[2] and sizes[2] < sizes[0] / 2
    # match-loss keeps the quality of the compute-optimal plan (up to the candidate grid)
    assert losses[2] == pytest.approx(losses[0], rel=0.01)
    life = run_plan(PlanConfig(flops=c, law="epoch", inference_tokens=1e12, inference_mode="lifetime-budget"),
                    tmp_path / "l.json")
    assert life["num_params"] < sizes[0]
    assert life["flops"] <= c * 1.0001 and not any("budget" in w for w in life["warnings"])
    # chinchilla (allocation law) moves the same way
    a = run_plan(PlanConfig(flops=c), tmp_path / "x.json")
    b = run_plan(PlanConfig(flops=c, inference_tokens=1e12), tmp_path / "y.json")
    assert b["num_params"] < a["num_params"]


def test_moe_planned_by_active_params(tmp_path: Path) -> None:
    plan = run_plan(PlanConfig(flops=1e16, num_experts=8, num_experts_per_tok=2, include_presets=False,
                               num_candidates=3), tmp_path / "plan.json")
    m = ModelConfig.from_dict(plan["model"])
    assert m.num_experts == 8
    assert plan["num_active_params"] < plan["num_params"]
    chosen = next(r for r in plan["candidates"] if r["chosen"])
    assert chosen["law_params"] == plan["num_active_params"]
    assert any("active params" in s for s in plan["steps"])
    gain = run_plan(PlanConfig(flops=1e16, num_experts=8, moe_gain_exponent=0.3, include_presets=False,
                               num_candidates=3, law="epoch"), tmp_path / "g.json")
    ch = next(r for r in gain["candidates"] if r["chosen"])
    assert ch["law_params"] == pytest.approx(ch["num_active_params"] * (ch["num_params"] / ch["num_active_params"]) ** 0.3)


def test_hours_budget_from_gpu_table_and_cpu_benchmark(tmp_path: Path) -> None:
    plan = run_plan(PlanConfig(hours=1.0, device="h100", num_devices=2), tmp_path / "h.json")
    assert plan["budget"]["flops"] == pytest.approx(3600 * 989e12 * 0.4 * 2)
    assert plan["wall_hours"] == pytest.approx(1.0, rel=1e-6)
    cpu = run_plan(PlanConfig(hours=0.01, device="cpu", benchmark_seconds=0.3, include_presets=False,
                              num_candidates=3), tmp_path / "c.json")
    assert cpu["budget"]["benchmark"]["flops_per_s"] > 1e6
    assert math.isclose(cpu["budget"]["flops"], 36.0 * cpu["budget"]["flops_per_s"], rel_tol=1e-9)


def test_fitted_law_and_shards(tmp_path: Path, shared_data: Path) -> None:
    from data_pipelines.tokenize import TokenizeConfig, run_tokenize

    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    small = tmp_path / "stories.txt"
    small.write_text("\n<|endoftext|>\n".join(text.split("\n<|endoftext|>\n")[:150]), encoding="utf-8")
    shards = tmp_path / "shards"
    run_tokenize(TokenizeConfig(vocab_size=512, val_fraction=0.05, progress=False), [small], tmp_path / "tok",
                 shards, seed=0)
    law = tmp_path / "fitted_law.json"
    law.write_text(json.dumps({"params": {"E": 1.2, "A": 60.0, "B": 900.0, "alpha": 0.35, "beta": 0.4},
                               "param_convention": "non-embedding",
                               "fitted_range": {"params": [1e4, 2e5], "tokens": [1e5, 2e6]}}))
    plan = run_plan(PlanConfig(flops=3e13, law="fitted", fitted_law=law), tmp_path / "plan.json", shards_dir=shards)
    idx = json.loads((shards / "index.json").read_text())
    assert plan["model"]["vocab_size"] == idx["vocab_size"]
    assert plan["unique_tokens"] == idx["splits"]["train"]["num_tokens"]
    assert plan["law"]["name"] == "fitted" and plan["law"]["param_convention"] == "non-embedding"
    assert plan["epochs"] == pytest.approx(plan["num_tokens"] / plan["unique_tokens"])
    assert any("epochs" in w for w in plan["warnings"])  # ~10M tokens over ~50K unique
    assert any("far outside" in w for w in plan["warnings"])


@pytest.mark.parametrize("law", ["chinchilla", "epoch", "tokens-per-param", "kaplan"])
def test_every_law_plans(tmp_path: Path, law: str) -> None:
    plan = run_plan(PlanConfig(flops=1e17, law=law, include_presets=False, num_candidates=3), tmp_path / "p.json")
    assert plan["law"]["name"] == law and math.isfinite(plan["predicted_loss"])
    assert plan["num_tokens"] * plan["flops_per_token"] == pytest.approx(1e17, rel=1e-6)
    conv = "non-embedding" if law == "kaplan" else "total"
    assert plan["law"]["param_convention"] == conv and plan["param_convention"].startswith(conv)


def test_chinchilla_approach3_picks_smaller_models(tmp_path: Path) -> None:
    kw = dict(flops=5.76e23, vocab_size=32000, include_presets=False, num_candidates=1)
    a1 = run_plan(PlanConfig(**kw), tmp_path / "a.json")
    a3 = run_plan(PlanConfig(chinchilla_fit="approach3", **kw), tmp_path / "b.json")
    assert a3["num_params"] < 0.7 * a1["num_params"]  # approach 3 favours more tokens per param at this budget


def test_batch_keeps_enough_optimizer_steps(tmp_path: Path) -> None:
    """DeepSeek's batch fit, halved at small budgets until the run has >= MIN_STEPS steps; large budgets keep it."""
    from train.planner.plan import MIN_STEPS

    small = run_plan(PlanConfig(flops=1e13, vocab_size=2048), tmp_path / "small.json")
    fit = 2 ** round(math.log2(0.292 * 1e13**0.3271 / small["seq_len"]))
    assert small["batch_size"] < fit
    steps = 1e13 / (6 * small["law_optimum"]["target_num_params"]) / (small["batch_size"] * small["seq_len"])
    assert steps >= MIN_STEPS > steps / 2  # the largest power of two that keeps MIN_STEPS
    big = run_plan(PlanConfig(flops=1e19, vocab_size=32000), tmp_path / "big.json")
    assert big["batch_size"] == 2 ** round(math.log2(0.292 * 1e19**0.3271 / big["seq_len"]))
