"""The whole pipeline, tiny, end to end through the CLI: every artifact of the run-directory contract appears, a rerun
skips finished stages, a changed config redoes its stage and everything after it (and nothing before it), and
`generate` samples from the export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import main
from launch.rundir import RunDir

TINY = """
name: tiny
seed: 7
stages: [synth, curate, tokenize, train, compress, export]
synth:
  num_stories: 300
curate:
  profile: stories
tokenize:
  vocab_size: 512
model:
  vocab_size: 512
  dim: 64
  num_layers: 2
  num_heads: 2
  max_seq_len: 128
train:
  max_tokens: 40000
  batch_size: 8
  seq_len: 128
  lr: 3.0e-3
  val_every_tokens: 20000
  num_val_tokens: 4096
  progress_bar: false
compress:
  passes:
    - {method: int8}
    - {method: gptq, name: gptq-q4_0, gguf_type: q4_0}
export:
  source: gptq-q4_0
  gguf_types: [q4_0, q8_0]
  num_eval_tokens: 512     # fewer than the val split: the compress report's tokens must win
  num_gen_tokens: 16
"""


def _run_ids(rd: RunDir) -> dict[str, str | None]:
    return {s: rd.run_id(s) for s in ("synth", "curate", "tokenize", "train", "compress", "export")}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    run_dir = root / "run"
    assert main(["run", "--config", str(cfg), "--run-dir", str(run_dir)]) == 0
    return cfg, run_dir


def test_every_contract_artifact_is_written(tiny_run):
    _, run_dir = tiny_run
    rd = RunDir(run_dir)
    for rel in ["config.yaml", "synth/stats.json", "data/stats.json", "tokenizer/tokenizer.json", "shards/index.json",
                "checkpoints/last.ckpt", "train/summary.json", "compressed/report.json", "export/hf/config.json",
                "export/hf/model.safetensors", "export/hf/tokenizer.json", "export/hf/README.md", "export/report.json"]:
        assert (run_dir / rel).is_file(), rel
    assert list((run_dir / "synth").glob("*.parquet")) and list((run_dir / "data").glob("*.parquet"))
    assert list((run_dir / "export" / "gguf").glob("*.gguf"))
    assert list(rd.tb.rglob("events.out.tfevents*"))
    summary = json.loads(rd.train_summary.read_text())
    for key in ("final_train_loss", "final_val_loss", "val_bpb", "tokens", "tokens_per_s", "mfu", "wall_s"):
        assert key in summary, key
    report = json.loads((run_dir / "compressed" / "report.json").read_text())
    assert "baseline" in report and report["passes"]
    # the story-quality and fairness probes are recorded before (baseline) and after every pass, and shown in the card
    assert "word_usage" in report["baseline"]["probes"] and all("fairness_male_share" in p["probes"]
                                                                 for p in report["passes"])
    assert "Behaviour before and after compression" in (run_dir / "export" / "hf" / "README.md").read_text()
    # the export ships the GPTQ pass: its GGUF Q4_0 holds the pass's own blocks, and every file is measured
    exported = json.loads((run_dir / "export" / "report.json").read_text())
    assert exported["source_label"] == "gptq-q4_0"
    by_file = {f["file"]: f for f in exported["files"]}
    assert by_file["gguf/tinyfoundry-q4_0.gguf"]["weights"] == "exact"
    assert "q4_0" in by_file["gguf/tinyfoundry-q4_0.gguf"]["native"]
    assert by_file["gguf/tinyfoundry-q8_0.gguf"]["weights"] == "final"
    pytest.importorskip("llama_cpp", reason="runtime figures need llama-cpp-python")
    for f in exported["files"]:
        assert f["val_bpb"] > 0 and f["tokens_per_s"] > 0, f
    # files are scored on the compress report's tokens and windows: the pass's weights in transformers give its bpb
    gptq = next(p for p in report["passes"] if p["name"] == "gptq-q4_0")
    assert by_file["hf"]["val_bpb"] == pytest.approx(gptq["val_bpb"], rel=1e-4)
    assert by_file["hf"]["num_eval_tokens"] == report["num_eval_tokens"]
    for stage, rid in _run_ids(rd).items():
        assert rid, f"{stage} has no manifest"
        m = rd.read_manifest(stage)
        assert m["config_hash"] and "torch" in m["versions"] and m["wall_s"] >= 0


def test_rerun_skips_and_changed_config_redoes_downstream(tiny_run, capsys):
    cfg, run_dir = tiny_run
    rd = RunDir(run_dir)
    before = _run_ids(rd)
    assert main(["run", "--config", str(cfg), "--run-dir", str(run_dir)]) == 0
    assert _run_ids(rd) == before, "an unchanged rerun must skip every stage"
    assert "up to date" in capsys.readouterr().err
    # display-only fields (HASH_EXCLUDE) do not invalidate anything
    assert main(["run", "--config", str(cfg), "--run-dir", str(run_dir), "--train.progress_bar=false",
                 "--train.log_every_steps=3", "--tokenize.progress=false"]) == 0
    assert _run_ids(rd) == before, "toggling progress bars must not redo a stage"
    # change the compression passes: compress and export are redone, training and everything before it are not
    assert main(["run", "--config", str(cfg), "--run-dir", str(run_dir),
                 "--compress.passes=[{method: int4, group_size: 32}, {method: gptq, name: gptq-q4_0, gguf_type: q4_0, damp: 0.02}]"]) == 0
    after = _run_ids(rd)
    for stage in ("synth", "curate", "tokenize", "train"):
        assert after[stage] == before[stage], stage
    for stage in ("compress", "export"):
        assert after[stage] != before[stage], stage


def test_killed_stage_is_not_trusted(tiny_run):
    cfg, run_dir = tiny_run
    rd = RunDir(run_dir)
    # what a kill half-way leaves: outputs without a manifest
    rd.manifest_path("export").unlink()
    (run_dir / "export" / "hf" / "model.safetensors").write_bytes(b"half-written")
    before = _run_ids(rd)
    assert main(["run", "--config", str(cfg), "--run-dir", str(run_dir),
                 "--compress.passes=[{method: int4, group_size: 32}, {method: gptq, name: gptq-q4_0, gguf_type: q4_0, damp: 0.02}]"]) == 0
    after = _run_ids(rd)
    assert after["export"] and after["export"] != before["export"]
    assert after["compress"] == before["compress"]
    from safetensors.torch import load_file

    assert load_file(run_dir / "export" / "hf" / "model.safetensors")


def test_generate_from_export(tiny_run, capsys):
    _, run_dir = tiny_run
    assert main(["generate", "--model", str(run_dir / "export" / "hf"), "--prompt", "Once upon a time",
                 "--max-new-tokens", "20", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Once upon a time") and len(out) > len("Once upon a time")


def test_eval_command_on_export(tiny_run, capsys):
    _, run_dir = tiny_run
    out = run_dir / "eval" / "eval.json"
    assert main(["eval", "--model", str(run_dir / "export" / "hf"), "--data", str(run_dir / "data" / "part-00000.parquet"),
                 "--out", str(out), "--eval.max_tokens=4000", "--eval.probes.num_word_prompts=2",
                 "--eval.probes.num_story_samples=1", "--eval.probes.max_new_tokens=24",
                 "--eval.probes.num_fairness_samples=1", "--eval.probes.fairness_max_new_tokens=12"]) == 0
    result = json.loads(out.read_text())
    assert result["loss"]["bpb"] > 0 and "probes" in result and "fairness" in result
    assert main(["eval", "--model", str(run_dir / "export" / "hf"), "--data", str(out), "--eval.nope=1"]) == 2
    assert "eval.nope" in capsys.readouterr().err
