"""The planner fits device memory: micro-batches with gradient accumulation, then activation checkpointing, and a
one-line failure naming the shape and the memory it needs; train takes the plan's choice unless the config sets it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.config import load_config
from launch.stages import train_config_for
from models import ModelConfig, get_preset
from train import TrainConfig, run_train
from train.planner import PlanConfig, run_plan
from train.planner import candidates as cands

BASE = dict(flops=1e17, vocab_size=4096, seq_len=512, batch_size=64, num_candidates=1, include_presets=False)


def _gib(model: dict, micro: int, ckpt: bool, gpu: bool = False) -> float:
    return cands.memory_gib(ModelConfig.from_dict(model), micro, 512, gpu, ckpt)


def test_largest_micro_batch_that_fits_keeps_the_global_batch(tmp_path: Path) -> None:
    free = run_plan(PlanConfig(**BASE), tmp_path / "a.json")
    assert (free["micro_batch_size"], free["num_accum_steps"], free["activation_checkpointing"]) == (64, 1, False)
    limit = (_gib(free["model"], 8, False) + _gib(free["model"], 16, False)) / 2  # 8 fits, 16 does not
    plan = run_plan(PlanConfig(**BASE, max_memory_gb=limit), tmp_path / "b.json")
    assert plan["model"] == free["model"] and plan["num_tokens"] == free["num_tokens"]  # accumulation is free
    assert (plan["batch_size"], plan["micro_batch_size"], plan["num_accum_steps"]) == (64, 8, 8)
    assert plan["memory_gib"] == pytest.approx(_gib(plan["model"], 8, False)) and plan["memory_gib"] <= limit
    on_disk = json.loads((tmp_path / "b.json").read_text())
    assert on_disk["micro_batch_size"] == 8 and on_disk["num_accum_steps"] == 8


def test_checkpointing_only_when_one_sequence_does_not_fit(tmp_path: Path) -> None:
    free = run_plan(PlanConfig(**BASE), tmp_path / "a.json")
    one, one_ckpt = _gib(free["model"], 1, False), _gib(free["model"], 1, True)
    assert one_ckpt < one
    limit = (one + one_ckpt) / 2
    plan = run_plan(PlanConfig(**BASE, max_memory_gb=limit), tmp_path / "b.json")
    # checkpointed, the largest micro-batch that fits (more than one sequence here)
    micro = plan["micro_batch_size"]
    assert plan["activation_checkpointing"] and micro * plan["num_accum_steps"] == 64
    assert _gib(plan["model"], micro, True) <= limit < _gib(plan["model"], 2 * micro, True)
    # the recomputed forward is paid from the budget: a third more FLOPs per token, fewer tokens
    assert plan["flops_per_token"] == pytest.approx(free["flops_per_token"] * 4 / 3)
    assert plan["num_tokens"] == pytest.approx(free["num_tokens"] * 3 / 4, rel=1e-6)
    assert any("activation checkpointing" in s for s in plan["steps"])


def test_fails_only_when_one_checkpointed_sequence_does_not_fit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"max_memory_gb: no candidate fits in 0.001 GiB .* one sequence of 512 "
                                         r"tokens .*dim \d+ x \d+ layers.* needs [0-9.]+ GiB"):
        run_plan(PlanConfig(**BASE, max_memory_gb=0.001), tmp_path / "p.json")


@pytest.mark.slow
def test_110m_recipe_on_h100_fits_80_gib_with_accumulation(tmp_path: Path) -> None:
    """The issue's failure: llama2.c's 110M recipe (batch 128 x 1024 in one micro-batch) did not plan on an H100."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tinystories-110m.yaml")
    plan = run_plan(cfg.plan, tmp_path / "plan.json", model_cfg=cfg.model)
    assert plan["memory_limit_gib"] == 80.0 and plan["memory_gib"] <= 80.0
    assert plan["num_accum_steps"] > 1
    assert plan["micro_batch_size"] * plan["num_accum_steps"] == plan["batch_size"]
    whole = cands.memory_gib(ModelConfig.from_dict(plan["model"]), plan["batch_size"], plan["seq_len"], True)
    assert whole > 80.0  # the whole batch in one micro-batch would not fit


def test_train_takes_micro_batch_accumulation_and_checkpointing_from_the_plan() -> None:
    plan = {"micro_batch_size": 4, "num_accum_steps": 8, "activation_checkpointing": True, "memory_gib": 70.0}
    t = train_config_for(load_config(None, {"name": "x"}), plan)
    assert (t.batch_size, t.num_accum_steps, t.activation_checkpointing) == (4, 8, True)
    # a set batch is never multiplied by the plan's accumulation; set checkpointing wins
    t = train_config_for(load_config(None, {"name": "x", "train": {"batch_size": 16,
                                                                     "activation_checkpointing": False}}), plan)
    assert (t.batch_size, t.num_accum_steps, t.activation_checkpointing) == (16, 1, False)
    t = train_config_for(load_config(None, {"name": "x", "train": {"num_accum_steps": 2}}), plan)
    assert (t.batch_size, t.num_accum_steps) == (0, 2)


def test_checkpointed_accumulated_training_equals_plain(tiny_shards, tmp_path: Path) -> None:
    """Through the real trainer: 1 x 4 accumulated micro-batches with checkpointing train as without it."""
    shards, tok = tiny_shards
    model = ModelConfig(vocab_size=512, dim=64, num_layers=2, num_heads=4, max_seq_len=64)
    losses = []
    for ckpt in (False, True):
        cfg = TrainConfig(max_tokens=4 * 64 * 3, seq_len=64, num_val_tokens=256, num_sample_tokens=0,
                          progress_bar=False, num_threads=1, batch_size=1, num_accum_steps=4,
                          activation_checkpointing=ckpt)
        name = f"ckpt{int(ckpt)}"
        s = run_train(cfg, model, shards, tmp_path / name, tokenizer_file=tok)
        losses.append(s["final_val_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_system_wraps_blocks_when_asked() -> None:
    from train.system import LMSystem

    model = ModelConfig(vocab_size=512, dim=64, num_layers=2, num_heads=4, max_seq_len=64)
    for ckpt in (False, True):
        sys_ = LMSystem(model.to_dict(), TrainConfig(activation_checkpointing=ckpt).to_dict(), total_steps=1)
        assert sys_.model.activation_checkpointing is ckpt


def test_preset_memory_grows_with_micro_batch() -> None:
    m = get_preset("8m")
    assert cands.memory_gib(m, 1, 256, False) < cands.memory_gib(m, 2, 256, False) < cands.memory_gib(m, 4, 256, False)
