"""The commands around the stages: `models`, `plan --flops`, `launch slurm`, per-command `--help`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_models_lists_every_preset(capsys):
    import models

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in models.list_presets():
        assert name in out
    assert "active" in out and "FLOPs" in out


def test_plan_from_flags_writes_plan_json(tmp_path: Path, capsys):
    run_dir = tmp_path / "p"
    assert main(["plan", "--flops", "1.21e20", "--law", "chinchilla", "--run-dir", str(run_dir)]) == 0
    plan = json.loads((run_dir / "plan.json").read_text())
    # Chinchilla Table 3: 1B params, 20.2B tokens at 1.21e20 FLOPs
    assert plan["num_params"] == pytest.approx(1.0e9, rel=0.05)
    assert plan["num_tokens"] == pytest.approx(20.2e9, rel=0.10)
    assert "chosen" in capsys.readouterr().out.lower() or plan.get("candidates")


def test_plan_rejects_bad_budget(tmp_path: Path, capsys):
    assert main(["plan", "--flops", "-5", "--run-dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "plan.flops" in err and len(err.strip().splitlines()) == 1


def test_launch_slurm_writes_a_script(tmp_path: Path):
    out = tmp_path / "train.sbatch"
    assert main(["launch", "slurm", "--config", str(REPO / "configs" / "tinystories-33m.yaml"), "--out", str(out),
                 "--nodes", "2", "--gpus-per-node", "4"]) == 0
    text = out.read_text()
    assert text.startswith("#!/bin/bash") and "#SBATCH --nodes=2" in text and "srun" in text
    assert "--train.num_nodes=2" in text and "--train.devices=4" in text


@pytest.mark.parametrize("command", ["synth", "curate", "tokenize", "plan", "train", "compress", "export", "run"])
def test_every_command_has_help(command: str, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out and "--run-dir" in out and "(unavailable" not in out
