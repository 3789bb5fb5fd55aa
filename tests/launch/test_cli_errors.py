"""Bad input through the real command line: one line on stderr naming the key or path, exit status 2, no traceback;
and every YAML shipped in configs/ parses and validates."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from launch.config import load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates(path: Path):
    cfg = load_config(path)
    assert cfg.name and cfg.stages
    for section in ("synth", "curate", "tokenize", "plan", "model", "train", "compress", "export"):
        assert getattr(cfg, section) is not None


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("train:\n  max_tokenz: 100\n", "unknown key 'train.max_tokenz' (did you mean 'train.max_tokens'?)"),
        ("trian:\n  lr: 0.1\n", "unknown section 'trian' (did you mean 'train'?)"),
        ("train:\n  lr: fast\n", "train.lr: expected a number, got 'fast'"),
        ("train:\n  lr: -1\n", "train.lr:"),
        ("tokenize:\n  vocab_size: 10\n", "tokenize.vocab_size:"),
        ("model:\n  preset: nope\n", "model.preset: unknown preset 'nope'"),
    ],
)
def test_bad_config_gives_one_line_and_exit_2(tmp_path: Path, yaml_text: str, expected: str):
    cfg = _write(tmp_path, yaml_text)
    r = _cli("train", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and expected in lines[0], r.stderr


def test_bad_override_and_missing_files(tmp_path: Path):
    good = _write(tmp_path, "name: t\n")
    r = _cli("train", "--config", str(good), "--train.lr=abc", cwd=tmp_path)
    assert r.returncode == 2 and "train.lr: expected a number, got 'abc'" in r.stderr
    r = _cli("train", "--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2 and "missing.yaml" in r.stderr and "Traceback" not in r.stderr
    r = _cli("curate", "--input", str(tmp_path / "nothing-here-*.jsonl"), "--output", str(tmp_path / "o"), cwd=tmp_path)
    assert r.returncode == 2 and "nothing-here-" in r.stderr and "Traceback" not in r.stderr
    r = _cli("generate", "--model", str(tmp_path / "no-model"), cwd=tmp_path)
    assert r.returncode == 2 and "no-model" in r.stderr and "Traceback" not in r.stderr
    # a stage whose upstream outputs are missing says which command to run first
    r = _cli("train", "--config", str(good), "--run-dir", str(tmp_path / "empty"), cwd=tmp_path)
    assert r.returncode == 2 and "tinyfoundry tokenize" in r.stderr


def test_help_lists_every_option_with_its_doc(tmp_path: Path):
    r = _cli("train", "--help", cwd=tmp_path)
    assert r.returncode == 0
    assert "--train.lr" in r.stdout and "--model.dim" in r.stdout
    # every option line is followed by its documentation
    lines = r.stdout.splitlines()
    option_lines = [i for i, ln in enumerate(lines) if ln.startswith("  --train.") or ln.startswith("  --model.")]
    undocumented = [lines[i] for i in option_lines if i + 1 >= len(lines) or not lines[i + 1].startswith("        ")]
    assert not undocumented, undocumented


def test_readme_config_example_validates(tmp_path: Path):
    import re

    block = re.search(r"```yaml\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md has no yaml example"
    p = tmp_path / "readme.yaml"
    p.write_text(block.group(1))
    cfg = load_config(p)
    assert cfg.name == "demo" and cfg.compress.passes


def test_bad_export_source_is_one_line_and_exit_2(tmp_path: Path):
    """A misspelt export.source is refused before any stage runs, naming the key and the passes there are."""
    cfg = _write(tmp_path, "name: t\ncompress:\n  passes:\n    - {method: gptq, name: gptq-q4_0, gguf_type: q4_0}\n"
                           "export:\n  source: gptq-q4\n")
    r = _cli("run", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "export.source: no compress pass named 'gptq-q4'" in lines[0], r.stderr
    assert "gptq-q4_0" in lines[0] and not (tmp_path / "run" / "synth").exists()
    # a pass option the method does not have names the pass and the key
    cfg = _write(tmp_path, "name: t\ncompress:\n  passes:\n    - {method: rtn, group_size: 32}\n")
    r = _cli("run", "--config", str(cfg), "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert r.returncode == 2 and "group_size: not an option of method 'rtn'" in r.stderr, r.stderr
    # `export --model` outside a run: a missing model is one line too
    r = _cli("export", "--model", str(tmp_path / "no-model"), cwd=tmp_path)
    assert r.returncode == 2 and "no-model" in r.stderr and "Traceback" not in r.stderr


def test_version_and_unknown_global_flags(tmp_path: Path):
    from importlib import metadata

    for flag in ("--version", "-V"):
        r = _cli(flag, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip() == f"tinyfoundry {metadata.version('tinyfoundry')}", r
    r = _cli("--bogus", cwd=tmp_path)
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""  # an error, not the help


def test_print_config_prints_the_resolved_config_and_runs_nothing(tmp_path: Path):
    import yaml

    (tmp_path / "base.yaml").write_text("train:\n  lr: 0.001\n  batch_size: 4\n")
    cfg = _write(tmp_path, "name: t\nbase: base.yaml\ntrain:\n  batch_size: 8\n")
    r = _cli("train", "--config", str(cfg), "--train.seq_len=64", "--print-config", "--run-dir", str(tmp_path / "run"),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = yaml.safe_load(r.stdout)
    assert printed == load_config(cfg, ["--train.seq_len=64"]).to_dict()
    assert (printed["train"]["lr"], printed["train"]["batch_size"], printed["train"]["seq_len"]) == (0.001, 8, 64)
    assert not (tmp_path / "run").exists()
