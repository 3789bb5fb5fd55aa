"""Knowledge distillation: the loss formula, the tokenizer check, a distilled run_train, and recover()."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import ModelConfig, Transformer, load_model
from train import TrainConfig, run_train
from train.distill import check_same_tokenizer, distill_loss, kd_kl
from train.recover import recover

TEACHER = ModelConfig(vocab_size=512, dim=64, num_layers=2, num_heads=4, max_seq_len=64)
STUDENT = ModelConfig(vocab_size=512, dim=32, num_layers=1, num_heads=2, max_seq_len=64)
FAST = dict(batch_size=4, seq_len=32, num_val_tokens=256, progress_bar=False, num_threads=1, num_sample_tokens=0)


def test_distill_loss_formula() -> None:
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=g, requires_grad=True)
    t = torch.randn(2, 5, 11, generator=g)
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[0, 0] = -100
    loss, ce, kl = distill_loss(s, t, y, alpha=0.3, temperature=2.0)
    assert torch.allclose(ce, F.cross_entropy(s.reshape(-1, 11), y.reshape(-1), ignore_index=-100))
    # KL(teacher || student) at T=2 over the 9 target positions, by hand
    pt, ps = F.softmax(t / 2, -1), F.log_softmax(s / 2, -1)
    kl_ref = (pt * (pt.log() - ps)).sum(-1).reshape(-1)[1:].mean()
    assert torch.allclose(kl, kl_ref, atol=1e-6)
    assert torch.allclose(loss, 0.3 * ce + 0.7 * 4.0 * kl_ref, atol=1e-6)
    assert float(kd_kl(t, t, y, 2.0)) == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    assert torch.allclose(distill_loss(s, t, y, alpha=1.0, temperature=3.0)[0], ce)


def test_tokenizer_check(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text('{"model": 1}')
    b.write_text('{"model": 2}')
    check_same_tokenizer(512, 512, a, a)
    with pytest.raises(ValueError, match="^teacher: its tokenizer"):
        check_same_tokenizer(512, 512, a, b)
    with pytest.raises(ValueError, match="^teacher: vocab_size 4096"):
        check_same_tokenizer(512, 4096)
    check_same_tokenizer(500, 512)  # padding to a multiple of 64 is the same vocabulary


@pytest.mark.slow
def test_distilled_run_and_recover(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, tok = tiny_shards
    run_train(TrainConfig(max_tokens=4 * 32 * 12, lr=1e-2, **FAST), TEACHER, shards, tmp_path / "teacher",
              tokenizer_file=tok)
    teacher_dir = tmp_path / "teacher" / "checkpoints" / "final"

    s = run_train(TrainConfig(max_tokens=4 * 32 * 4, teacher=str(teacher_dir), distill_alpha=0.5, **FAST),
                  STUDENT, shards, tmp_path / "student", tokenizer_file=tok)
    assert s["status"] == "completed" and np.isfinite(s["final_val_loss"])

    wrong = tmp_path / "wrong_teacher"
    shutil.copytree(teacher_dir, wrong)
    (wrong / "tokenizer.json").write_text(tok.read_text().replace('"<|endoftext|>"', '"<|end|>"'))
    with pytest.raises(ValueError, match="^teacher: its tokenizer"):
        run_train(TrainConfig(max_tokens=1000, teacher=str(wrong), **FAST), STUDENT, shards, tmp_path / "s2",
                  tokenizer_file=tok)

    # recover(): short KD training of a (here freshly initialised) student lowers its loss on held-out text
    from data_pipelines.tokenize.shards import ShardIndex

    val = torch.from_numpy(np.concatenate(ShardIndex.load(shards).open("val")).astype(np.int64))
    windows = val[: 8 * 33].reshape(8, 33)

    def ce(m: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(m(windows[:, :-1], targets_BT=windows[:, 1:]).ce_loss)

    teacher, _ = load_model(teacher_dir)
    torch.manual_seed(0)
    student = Transformer(STUDENT)
    before = ce(student)
    out = recover(student, teacher, shards, max_tokens=4 * 32 * 15, batch_size=4, seq_len=32, lr=1e-2, muon_lr=0.03)
    assert out is student and not student.training
    assert ce(student) < before - 0.3
    # plain CE recovery from a token tensor works too
    recover(student, None, val, max_tokens=4 * 32 * 2, batch_size=4, seq_len=32)
