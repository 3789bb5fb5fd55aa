"""The weight average (train/ema.py): its update rule, that the final model and load_model(.ckpt) are the average,
and that ema_decay=0 turns it off. Exact resume with the average on is covered by test_resume (it is on by default)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from models import ModelConfig, Transformer, load_model
from train import TrainConfig, run_train
from train.ema import EMA_KEY, ParamEMA, WeightEMA

MODEL = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64)
CFG = dict(max_tokens=4 * 32 * 12, batch_size=4, seq_len=32, lr=3e-3, num_val_tokens=256, num_sample_tokens=0,
           progress_bar=False, num_threads=1, seed=3)


def _trainer() -> SimpleNamespace:
    """What WeightEMA reads of a Trainer: the optimizer step count and the running stage."""
    return SimpleNamespace(global_step=0, state=SimpleNamespace(fn="fit"))


def test_update_rule_is_warm_started_ema() -> None:
    torch.manual_seed(0)
    module = SimpleNamespace(model=Transformer(MODEL))
    ema, trainer = WeightEMA(0.9), _trainer()
    ema.on_fit_start(trainer, module)
    w = module.model.tok_emb.weight
    expect = w.detach().clone()
    for t in range(30):
        with torch.no_grad():
            w.add_(torch.randn_like(w))
        ema.on_train_batch_start(trainer, module, None, t)
        trainer.global_step += 1  # the optimizer step of this micro-batch
        ema.on_train_batch_end(trainer, module, None, None, t)
        d = min(0.9, (1 + t) / (10 + t))
        expect = d * expect + (1 - d) * w.detach()
    assert ema.num_updates == 30
    torch.testing.assert_close(ema.ema.avg["tok_emb.weight"], expect, rtol=1e-5, atol=1e-5)
    assert "lm_head.weight" not in ema.ema.avg  # tied: averaged once, through the embedding

    # validation swaps the average in and out again; copy_to loads it for good
    raw = w.detach().clone()
    ema.on_validation_epoch_start(trainer, module)
    torch.testing.assert_close(w.detach(), expect, rtol=1e-5, atol=1e-5)
    ema.on_validation_epoch_end(trainer, module)
    assert torch.equal(w.detach(), raw)
    ema.copy_to(module)
    torch.testing.assert_close(w.detach(), expect, rtol=1e-5, atol=1e-5)


def test_decay_is_checked() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(0.0)
    with pytest.raises(ValueError, match="ema_decay"):
        ParamEMA(torch.nn.Linear(2, 2), 1.5)


def test_final_model_and_checkpoint_loader_are_the_average(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    summary = run_train(TrainConfig(**CFG, ema_decay=0.9), MODEL, shards, tmp_path / "run")
    assert summary["status"] == "completed" and summary["ema_decay"] == 0.9
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["callbacks"]  # the update count travels with the checkpoint
    avg, raw = ckpt[EMA_KEY], ckpt["state_dict"]
    assert set(avg) <= set(raw) and "model.tok_emb.weight" in avg
    assert not torch.equal(avg["model.tok_emb.weight"], raw["model.tok_emb.weight"])
    final = load_file(str(tmp_path / "run" / "checkpoints" / "final" / "model.safetensors"))
    for k, v in avg.items():
        assert torch.equal(final[k[len("model."):]], v), k
    loaded, _ = load_model(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert torch.equal(loaded.tok_emb.weight, avg["model.tok_emb.weight"])
    assert loaded.lm_head.weight is loaded.tok_emb.weight


def test_ema_off_keeps_the_last_iterate(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    summary = run_train(TrainConfig(**CFG, ema_decay=0.0), MODEL, shards, tmp_path / "run")
    assert summary["ema_decay"] == 0.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert EMA_KEY not in ckpt
    final = load_file(str(tmp_path / "run" / "checkpoints" / "final" / "model.safetensors"))
    assert torch.equal(final["tok_emb.weight"], ckpt["state_dict"]["model.tok_emb.weight"])
