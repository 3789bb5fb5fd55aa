"""Recovery after pruning through train's recipe: distillation wiring on a tiny model (the distillation loss falls,
the teacher stays frozen and unchanged, pruning masks hold), and plain recovery."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelConfig, Transformer
from models.compress.passes import PASSES, PassContext
from train.distill import distill_loss

CFG = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=32, init_std=0.3)  # peaked logits


def _tokens(shards: Path, split: str) -> torch.Tensor:
    from data_pipelines.tokenize.shards import ShardIndex

    return torch.from_numpy(np.concatenate(ShardIndex.load(shards).open(split)).astype(np.int64))


def _kd(student: torch.nn.Module, teacher: torch.nn.Module, win_NT: torch.Tensor) -> float:
    with torch.no_grad():
        s, t = student(win_NT[:, :-1]).logits, teacher(win_NT[:, :-1]).logits
        return float(distill_loss(s, t, win_NT[:, 1:], 0.0, 2.0)[0])


@pytest.mark.parametrize("method", ["magnitude", "structured"])
def test_distill_recovery_after_a_prune_pass(tiny_shards: tuple[Path, Path], method: str) -> None:
    from train.recover import recover

    shards, _ = tiny_shards
    torch.manual_seed(0)
    teacher = Transformer(CFG).eval()
    frozen = copy.deepcopy(teacher.state_dict())
    val = _tokens(shards, "val")
    win = val[: 16 * 33].reshape(16, 33)
    seen: list[object] = []

    def fn(student: torch.nn.Module, t: torch.nn.Module | None) -> torch.nn.Module:
        seen.append(t)
        return recover(student, t, shards, max_tokens=4 * 32 * 25, batch_size=4, seq_len=32, lr=1e-3, muon_lr=1e-2,
                       distill_alpha=0.0, distill_temperature=2.0, ema_decay=0.0, seed=1)

    opts = {"magnitude": {"sparsity": 0.5}, "structured": {"mlp_fraction": 0.5, "heads_fraction": 0.0}}[method]
    pass_ = PASSES[method](PASSES[method].Options(**opts))
    pruned = pass_.apply(copy.deepcopy(teacher), PassContext(win[:, :-1], 4, teacher)).model  # no recovery wired
    before = _kd(pruned, teacher, win)
    ctx = PassContext(win[:, :-1], 4, teacher, recover=fn)
    out = pass_.apply(copy.deepcopy(teacher), ctx)
    assert seen == [teacher] and out.info["recovery"] == "distill" and out.info["recovered"]
    assert _kd(out.model, teacher, win) < 0.95 * before  # the student moved toward the teacher's distribution
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in frozen.items())  # teacher untouched
    assert not any(p.requires_grad for p in teacher.parameters())
    if method == "magnitude":  # pruned weights are still exactly zero, in the same places
        for name, w in pruned.named_parameters():
            if w.dim() == 2 and name.startswith("layers."):
                dead = w == 0
                assert dead.float().mean() > 0.4 and torch.all(out.model.get_parameter(name)[dead] == 0)


def test_plain_recovery_gets_no_teacher_and_lowers_ce(tiny_shards: tuple[Path, Path]) -> None:
    from train.recover import recover

    shards, _ = tiny_shards
    torch.manual_seed(0)
    teacher = Transformer(CFG).eval()
    win = _tokens(shards, "val")[: 16 * 33].reshape(16, 33)
    seen: list[object] = []

    def fn(student: torch.nn.Module, t: torch.nn.Module | None) -> torch.nn.Module:
        seen.append(t)
        return recover(student, t, _tokens(shards, "train"), max_tokens=4 * 32 * 20, batch_size=4, seq_len=32,
                       lr=1e-2, muon_lr=0.03)

    pass_ = PASSES["magnitude"](PASSES["magnitude"].Options(sparsity=0.5, recovery="plain"))
    pruned = pass_.apply(copy.deepcopy(teacher), PassContext(win[:, :-1], 4, teacher)).model

    def ce(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(m(win[:, :-1], targets_BT=win[:, 1:]).ce_loss)

    out = pass_.apply(copy.deepcopy(teacher), PassContext(win[:, :-1], 4, teacher, recover=fn))
    assert seen == [None] and out.info["recovery"] == "plain"
    assert ce(out.model) < ce(pruned) - 0.2
    with pytest.raises(ValueError, match="recovery"):
        PASSES["magnitude"].Options(recovery="kd")  # type: ignore[arg-type]
