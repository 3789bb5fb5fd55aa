"""Model folders, Lightning checkpoints and HF dirs all load through load_model; bad inputs name the path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, load_model, save_model_dir


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=40, dim=32, num_layers=2, num_heads=2, max_seq_len=16)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("kw", [{}, dict(tie_embeddings=False), dict(num_experts=4, num_shared_experts=1)])
def test_model_dir_roundtrip(tmp_path: Path, kw):
    torch.manual_seed(0)
    model = Transformer(tiny(**kw)).eval()
    tok = tmp_path / "tok.json"
    tok.write_text('{"model": {}}')
    out = save_model_dir(tmp_path / "m", model, tokenizer_file=tok, extra={"step": 7})
    assert sorted(p.name for p in out.iterdir()) == [
        "extra.json", "model.safetensors", "model_config.json", "tokenizer.json"]  # fmt: skip
    loaded, tok_path = load_model(out)
    assert tok_path == out / "tokenizer.json" and not loaded.training
    assert loaded.cfg == model.cfg
    assert (loaded.lm_head.weight is loaded.tok_emb.weight) == model.cfg.tie_embeddings
    idx = torch.randint(0, 40, (2, 9))
    assert torch.equal(loaded(idx).logits, model(idx).logits)
    assert json.loads((out / "extra.json").read_text()) == {"step": 7}


def test_save_replaces_atomically_and_leaves_no_temp(tmp_path: Path):
    a, b = Transformer(tiny()), Transformer(tiny(num_layers=1))
    save_model_dir(tmp_path / "m", a)
    save_model_dir(tmp_path / "m", b)
    assert load_model(tmp_path / "m")[0].cfg.num_layers == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_load_dtype(tmp_path: Path):
    save_model_dir(tmp_path / "m", Transformer(tiny()))
    model, _ = load_model(tmp_path / "m", dtype=torch.bfloat16)
    assert model.tok_emb.weight.dtype == torch.bfloat16
    assert model(torch.zeros(1, 3, dtype=torch.long)).logits.dtype == torch.bfloat16


def lightning_style_ckpt(path: Path, model: Transformer) -> None:
    """The layout the train room's LightningModule writes (state_dict of the system with `model.` prefix)."""
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd["loss_fn.dummy"] = torch.zeros(1)  # other system attributes are ignored
    ckpt = {"epoch": 0, "global_step": 3, "state_dict": sd,
            "hyper_parameters": {"model_config": model.cfg.to_dict(), "lr": 1e-3}}  # fmt: skip
    torch.save(ckpt, path)


def test_lightning_ckpt_and_run_tokenizer(tmp_path: Path):
    torch.manual_seed(0)
    model = Transformer(tiny(num_experts=4)).eval()
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "tokenizer").mkdir()
    (tmp_path / "tokenizer" / "tokenizer.json").write_text("{}")
    lightning_style_ckpt(tmp_path / "checkpoints" / "last.ckpt", model)
    loaded, tok = load_model(tmp_path / "checkpoints" / "last.ckpt")
    assert tok == tmp_path / "tokenizer" / "tokenizer.json"
    idx = torch.randint(0, 40, (1, 8))
    assert torch.equal(loaded(idx).logits, model(idx).logits)


def test_bad_inputs_raise_value_error_naming_path(tmp_path: Path):
    save_model_dir(tmp_path / "m", Transformer(tiny()))
    # truncated weights
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(ValueError, match=str(tmp_path / "m")):
        load_model(tmp_path / "m")
    # corrupt checkpoint
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.ckpt"):
        load_model(bad)
    # a checkpoint without a model config
    torch.save({"state_dict": {"model.x": torch.zeros(1)}, "hyper_parameters": {}}, tmp_path / "noc.ckpt")
    with pytest.raises(ValueError, match="noc.ckpt.*model_config"):
        load_model(tmp_path / "noc.ckpt")
    # weights that do not match the config
    save_model_dir(tmp_path / "m2", Transformer(tiny()))
    cfg = json.loads((tmp_path / "m2" / "model_config.json").read_text())
    cfg["num_layers"] = 3
    (tmp_path / "m2" / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="m2"):
        load_model(tmp_path / "m2")
    # another architecture in an HF dir
    hf = tmp_path / "gpt2"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 64}))
    with pytest.raises(ValueError, match="gpt2.*model_type"):
        load_model(hf)
    # not a model at all
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="missing"):
        load_model(tmp_path / "missing")
