"""train.qat: quantization-aware training through the one training recipe, from scratch and as a phase after it."""

from __future__ import annotations

import json

import pytest
import torch

from models import ModelConfig, load_model
from models.qat import fake_quant, ternary_block
from train.config import TrainConfig
from train.runner import run_train

TINY = ModelConfig(vocab_size=512, dim=64, num_layers=2, num_heads=2, max_seq_len=64)
FAST = dict(batch_size=4, seq_len=32, num_val_tokens=256, progress_bar=False, num_threads=1, num_sample_tokens=0)


def test_qat_config_errors():
    from launch.loader import build_dataclass

    with pytest.raises(Exception, match="train.qat: must be one of 'none', 'int4', 'ternary', got 'int8'"):
        build_dataclass(TrainConfig, {"qat": "int8"}, "train")
    with pytest.raises(ValueError, match="^qat_block: must be 0"):
        TrainConfig(qat="ternary", qat_block=100)
    with pytest.raises(ValueError, match="^qat_embeddings: needs qat"):
        TrainConfig(qat_embeddings=True)


def _on_grid(model_dir, mode: str) -> None:
    model, _ = load_model(model_dir)
    extra = json.loads((model_dir / "extra.json").read_text())
    assert extra["qat"]["layers.0.attn.wq.weight"] == [mode, 256]
    for name, p in model.named_parameters():
        if name not in extra["qat"]:
            continue
        w = p.detach()
        if extra["qat"][name][0] == "int4":  # Q4_0 re-quantization is the identity on its grid
            assert torch.equal(w, fake_quant(w, "int4")), name
        else:  # ternary (absmean does not reproduce its own scale): each block is {-c, 0, c}, c an fp16 value
            blocks = w.reshape(-1, ternary_block(w.shape[-1], 256)).abs()
            c = blocks.amax(-1, keepdim=True)
            assert torch.equal(c, c.half().float()) and bool(((blocks == 0) | (blocks == c)).all()), name


def test_int4_qat_with_muon_ends_on_grid_and_scores_the_grid(tiny_shards, tmp_path):
    shards, tok = tiny_shards
    run = tmp_path / "int4"
    s = run_train(TrainConfig(max_tokens=4 * 32 * 6, qat="int4", qat_embeddings=True, **FAST), TINY, shards, run,
                  tokenizer_file=tok)
    assert s["status"] == "completed" and s["val_bpb"] > 0
    _on_grid(run / "checkpoints" / "final", "int4")
    extra = json.loads((run / "checkpoints" / "final" / "extra.json").read_text())
    assert extra["qat"]["tok_emb.weight"] == ["int4", 256]


def test_qat_phase_after_pretraining(tiny_shards, tmp_path):
    """init_from a full-precision model, then a short ternary QAT phase: the result is on the ternary grid and the
    loss falls from the rounded starting point."""
    shards, tok = tiny_shards
    pre = tmp_path / "pre"
    run_train(TrainConfig(max_tokens=4 * 32 * 6, **FAST), TINY, shards, pre, tokenizer_file=tok)
    run = tmp_path / "qat"
    cfg = TrainConfig(max_tokens=4 * 32 * 4, qat="ternary", init_from=str(pre / "checkpoints" / "final"), **FAST)
    s = run_train(cfg, None, shards, run, tokenizer_file=tok)
    assert s["status"] == "completed" and s["steps"] == 4
    _on_grid(run / "checkpoints" / "final", "ternary")
