"""Sharded strategies and fp16 refuse clearly on CPU (before anything is written); SLURM/torchrun launch files."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest
import torch

from launch.slurm import torchrun_command, write_sbatch
from models import ModelConfig
from train import TrainConfig, run_train

TINY = ModelConfig(vocab_size=512, dim=32, num_layers=1, num_heads=2, max_seq_len=64)
cpu_only = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")


@cpu_only
@pytest.mark.parametrize("strategy", ["fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3"])
def test_sharded_strategies_refuse_on_cpu(strategy: str, tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    cfg = TrainConfig(max_tokens=1000, batch_size=2, seq_len=32, strategy=strategy)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"^strategy: '{strategy}' shards the model over CUDA GPUs and does not run on CPU"):
        run_train(cfg, TINY, shards, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@cpu_only
def test_fp16_refuses_on_cpu(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    with pytest.raises(ValueError, match="^precision: '16-mixed'.*needs a GPU"):
        run_train(TrainConfig(max_tokens=1000, precision="16-mixed"), TINY, shards, tmp_path / "run")


def test_write_sbatch(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  max_tokens: 1000000\n")
    out = write_sbatch(config, tmp_path / "jobs" / "train.sbatch", nodes=2, gpus_per_node=4,
                       run_dir=tmp_path / "runs" / "x", partition="gpu", setup=["source .venv/bin/activate"])
    text = out.read_text()
    assert out.stat().st_mode & 0o111
    subprocess.run(["bash", "-n", str(out)], check=True)
    for opt in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--requeue",
                "--signal=TERM@"):
        assert f"#SBATCH {opt}" in text
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    argv = shlex.split(srun)
    assert argv[argv.index("--config") + 1] == str(config.resolve())
    assert "--train.num_nodes=2" in argv and "--train.devices=4" in argv and "--train.strategy=ddp" in argv
    assert argv[argv.index("--run-dir") + 1] == str((tmp_path / "runs" / "x").resolve())
    with pytest.raises(ValueError, match="^config_path"):
        write_sbatch(tmp_path / "missing.yaml", tmp_path / "t.sbatch")
    with pytest.raises(ValueError, match="^gpus_per_node"):
        write_sbatch(config, tmp_path / "t.sbatch", gpus_per_node=0)


def test_torchrun_command() -> None:
    cmd = shlex.split(torchrun_command("cfg.yaml", nodes=2, gpus_per_node=8, rdzv_endpoint="node0:29500"))
    assert cmd[:3] == ["torchrun", "--nnodes=2", "--nproc-per-node=8"]
    assert "--rdzv-endpoint=node0:29500" in cmd and "--no-python" in cmd
    assert cmd[cmd.index("--no-python") + 1 :][:2] == ["tinyfoundry", "train"]
    assert "--train.devices=8" in cmd
