"""export.source (final / best / a pass name) and the modes of everything written (they follow the umask)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from models import ModelConfig, Transformer, save_model_dir
from models.atomic import atomic_copy, atomic_dir, atomic_write_json
from models.export import ExportConfig, resolve_source, run_export


def _report(root: Path) -> Path:
    comp = root / "compressed"
    comp.mkdir(parents=True)
    report = {"baseline": {"val_bpb": 2.0, "bytes": 4000},
              "passes": [{"name": "int8", "val_bpb": 2.01, "bytes": 1000},
                         {"name": "gptq", "val_bpb": 2.03, "bytes": 600},
                         {"name": "wanda", "val_bpb": 2.5, "bytes": 4000},
                         {"name": "tiny", "val_bpb": 3.0, "bytes": 100}]}
    (comp / "report.json").write_text(json.dumps(report))
    return comp


def test_source_selection_final_best_and_by_name(tmp_path):
    comp = _report(tmp_path)
    final = tmp_path / "checkpoints" / "final"
    assert resolve_source("final", final, comp, 0.02) == (final, "final")
    assert resolve_source("gptq", final, comp, 0.02) == (comp / "gptq", "gptq")
    # best: the smallest pass within the bpb budget (+2% admits int8 and gptq; gptq is smaller)
    assert resolve_source("best", final, comp, 0.02) == (comp / "gptq", "gptq")
    assert resolve_source("best", final, comp, 0.01) == (comp / "int8", "int8")
    assert resolve_source("best", final, comp, 1.0) == (comp / "tiny", "tiny")
    path, label = resolve_source("best", final, comp, 0.001)
    assert path == final and label.startswith("final (no pass within")
    with pytest.raises(ValueError, match=r"^export.source: no pass named 'nope' in .*\(choose final, best or one of: "
                                         r"int8, gptq, wanda, tiny\)"):
        resolve_source("nope", final, comp, 0.02)
    with pytest.raises(ValueError, match=r"^export.source: 'best' needs the compress stage's"):
        resolve_source("best", final, tmp_path / "missing", 0.02)
    with pytest.raises(ValueError, match=r"^source:"):
        ExportConfig(source="../x")
    with pytest.raises(ValueError, match=r"^max_bpb_increase:"):
        ExportConfig(max_bpb_increase=-0.1)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, shared_data):
    from launch.rundir import atomic_write_text
    from models.compress import CompressConfig, run_compress
    from tests.models.conftest import write_tokenizer

    old = os.umask(umask)
    try:
        tok = tmp_path / "tokenizer.json"
        write_tokenizer(tok, (shared_data / "tinystories" / "tinystories_2000.txt").read_text()[:20000])
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=300, dim=64, num_layers=1, num_heads=2, max_seq_len=64)
        final = save_model_dir(tmp_path / "final", Transformer(cfg), tokenizer_file=tok)
        tokens = torch.randint(0, 300, (3000,), generator=torch.Generator().manual_seed(0))
        ccfg = CompressConfig(passes=[{"method": "rtn", "gguf_type": "q4_0"}], num_calib_tokens=512, calib_seq_len=64,
                              num_eval_tokens=512, num_gen_tokens=8, num_prompt_tokens=8, num_sample_tokens=4,
                              plot=False, probes=False)
        run_compress(ccfg, final, tokens, 3.0, tmp_path / "compressed")
        run_export(ExportConfig(gguf_types=["q4_0"], measure=False), tmp_path / "compressed" / "rtn", tmp_path / "export")
        atomic_write_text(tmp_path / "run" / "manifest.json", "{}")
        atomic_write_json(tmp_path / "x" / "a.json", {})
        atomic_copy(tok, tmp_path / "x" / "tok.json")
        with atomic_dir(tmp_path / "x" / "d") as d:
            (d / "f").write_text("x")
    finally:
        os.umask(old)
    want_file, want_dir = 0o666 & ~umask, 0o777 & ~umask
    written = [p for p in tmp_path.rglob("*") if p.name != "tokenizer.json" or p.parent != tmp_path]
    assert len(written) > 20
    for p in written:
        assert _mode(p) == (want_dir if p.is_dir() else want_file), (p, oct(_mode(p)))
    assert not [p for p in written if ".tmp" in p.name or ".old" in p.name]


def test_export_command_outside_a_run(tmp_path, shared_data, capsys):
    """`tinyfoundry export --model DIR`: any model dir, no config, no run directory."""
    from test_export import make_model_dir

    from launch.cli import main
    from tests.models.conftest import write_tokenizer

    tok = tmp_path / "tokenizer.json"
    write_tokenizer(tok, (shared_data / "tinystories" / "tinystories_2000.txt").read_text()[:20000])
    mdir = make_model_dir(tmp_path, tok)
    out = tmp_path / "out"
    assert main(["export", "--model", str(mdir), "--out", str(out), "--export.gguf_types=[f16, q4_0]",
                 "--export.hf_quant=false"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert [f["file"] for f in report["files"]] == ["hf", "gguf/tinyfoundry-f16.gguf", "gguf/tinyfoundry-q4_0.gguf"]
    assert (out / "hf" / "README.md").is_file() and "wrote" in capsys.readouterr().out
    assert main(["export", "--model", str(mdir), "--out", str(out), "--export.gguf_types=[q9_9]"]) == 2
