"""run_compress end to end on a tiny saved model: passes, report, checkpoints, faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, save_model_dir
from models.compress import CompressConfig, PassConfig, load_compressed, run_compress
from models.compress.prune import sparsity_of

VOCAB = 320


def _tokenizer(path: Path, text: str) -> None:
    from tests.models.conftest import write_tokenizer

    write_tokenizer(path, text, VOCAB)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_data) -> tuple[Path, torch.Tensor, float]:
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("compress")
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text()[:40000]
    _tokenizer(root / "tokenizer.json", text)
    ids = torch.tensor(Tokenizer.from_file(str(root / "tokenizer.json")).encode(text).ids)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, max_seq_len=64,
                      init_std=0.1)
    save_model_dir(root / "model", Transformer(cfg), tokenizer_file=root / "tokenizer.json")
    return root / "model", ids, len(text.encode()) / ids.numel()


def small_cfg(passes: list) -> CompressConfig:
    return CompressConfig(passes=passes, num_calib_tokens=512, num_eval_tokens=1024, num_gen_tokens=8,
                          num_prompt_tokens=8, num_sample_tokens=8, batch_size=8)


def test_run_compress_report_and_checkpoints(model_dir, tmp_path):
    mdir, ids, bpt = model_dir
    calls = []

    def recover(student, teacher):
        calls.append((type(student).__name__, type(teacher).__name__))
        return student

    cfg = small_cfg([
        {"method": "int8"},
        {"method": "gptq", "group_size": 32},
        {"method": "wanda", "sparsity": 0.5},
        {"method": "structured", "mlp_fraction": 0.5, "heads_fraction": 0.0, "recovery": "plain"},
        {"method": "int8", "name": "structured-int8", "input": "structured"},
    ])
    report = run_compress(cfg, mdir, ids, bpt, tmp_path / "compressed", recover=recover)
    on_disk = json.loads((tmp_path / "compressed" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert (tmp_path / "compressed" / "report.png").stat().st_size > 1000
    base = report["baseline"]
    assert {"params", "bytes", "sparsity", "val_bpb", "tokens_per_s", "sample"} <= set(base)
    names = [p["name"] for p in report["passes"]]
    assert names == ["int8", "gptq", "wanda", "structured", "structured-int8"]
    by = {p["name"]: p for p in report["passes"]}
    for p in report["passes"]:
        assert {"name", "params", "bytes", "sparsity", "val_bpb", "tokens_per_s", "sample"} <= set(p)
        assert p["val_bpb"] > 0 and p["tokens_per_s"] > 0
    assert by["int8"]["size_ratio"] > 3.5 and abs(by["int8"]["bpb_increase_pct"]) < 1.0
    assert by["gptq"]["size_ratio"] > 5.0
    assert abs(by["wanda"]["sparsity"] - 0.5) < 0.01 and by["wanda"]["recovered"]
    assert by["structured"]["params"] < base["params"] and by["structured"]["structured"]["hidden_dim"] == [192, 96]
    assert by["structured-int8"]["bytes"] < by["int8"]["bytes"]
    assert len(calls) == 2  # wanda and structured were recovered; quant passes were not
    assert calls == [("Transformer", "Transformer"), ("Transformer", "NoneType")]  # distill (default) vs plain
    assert by["wanda"]["recovery"] == "distill" and by["structured"]["recovery"] == "plain"

    # every pass dir loads back, quantized ones with weights equal to what was measured
    for name in names:
        model, tok = load_compressed(tmp_path / "compressed" / name)
        assert tok is not None and tok.name == "tokenizer.json"
        assert model.cfg.vocab_size == VOCAB
    wanda, _ = load_compressed(tmp_path / "compressed" / "wanda")
    assert abs(sparsity_of(wanda) - 0.5) < 0.01
    from models import load_model  # pruned dirs are plain model dirs

    small, _ = load_model(tmp_path / "compressed" / "structured")
    assert small.cfg.hidden_dim == 96


def test_int8_runtimes_agree(model_dir, tmp_path):
    mdir, ids, bpt = model_dir
    run_compress(small_cfg([{"method": "int8", "runtime": "int8"}]), mdir, ids, bpt, tmp_path / "c")
    deq, _ = load_compressed(tmp_path / "c" / "int8", runtime="dequant")
    i8, _ = load_compressed(tmp_path / "c" / "int8", runtime="int8")
    assert i8.compress_runtime == "int8-linear"
    x = ids[:32][None]
    torch.testing.assert_close(i8(x).logits, deq(x).logits, atol=1e-4, rtol=1e-4)


def test_refuses_tokens_from_another_tokenizer(model_dir, tmp_path):
    mdir, ids, bpt = model_dir
    with pytest.raises(ValueError, match="different tokenizer"):
        run_compress(small_cfg([{"method": "int8"}]), mdir, ids, bpt, tmp_path / "c", tokenizer_sha256="0" * 64)
    with pytest.raises(ValueError, match="vocab_size"):
        run_compress(small_cfg([{"method": "int8"}]), mdir, ids + VOCAB, bpt, tmp_path / "c")
    assert not (tmp_path / "c" / "int8").exists()


def test_corrupt_and_foreign_checkpoints_give_clear_errors(model_dir, tmp_path):
    from models.compress.runner import quantize_model
    from models.compress.storage import save_compressed

    mdir, _, _ = model_dir
    model, tok = load_compressed(mdir)
    qt = quantize_model(model, PassConfig.from_mapping({"method": "int4", "group_size": 32}), None, 8)
    qdir = tmp_path / "c" / "int4"
    save_compressed(qdir, model, qt, tok, {"method": "int4"})
    reloaded, _ = load_compressed(qdir)
    x = torch.arange(16)[None]
    torch.testing.assert_close(reloaded(x).logits, model(x).logits)
    weights = qdir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupt"):
        load_compressed(qdir)
    cfg = json.loads((qdir / "model_config.json").read_text())
    cfg["arch"] = "gpt2"
    (qdir / "model_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="architecture"):
        load_compressed(qdir)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match=r"^passes: pass 0 \(gptq\): bits: not an option of method 'gptq'"):
        CompressConfig(passes=[{"method": "gptq", "bits": 3}])
    with pytest.raises(ValueError, match=r"^passes: pass 0 \(awq2\): method: must be one of"):
        CompressConfig(passes=[{"method": "awq2"}])
    with pytest.raises(ValueError, match=r"^passes: pass .* input must be"):
        CompressConfig(passes=[{"method": "int8", "input": "nope"}])
    with pytest.raises(ValueError, match=r"^passes: pass names must be unique"):
        CompressConfig(passes=[{"method": "int8"}, {"method": "int8"}])
    with pytest.raises(ValueError, match=r"^sparsity:"):
        PassConfig.from_mapping({"method": "wanda", "sparsity": 1.5})
    with pytest.raises(ValueError, match=r"^act_order: not supported on a GGUF grid"):
        PassConfig.from_mapping({"method": "gptq", "gguf_type": "q4_0", "act_order": True})
    assert CompressConfig().passes[0].method == "int8"
