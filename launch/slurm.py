"""Cluster launch for the train stage: a SLURM sbatch script, or a torchrun command line, from a run config.

Design and invariants
- No home-made distributed engine: SLURM's `srun` starts one task per GPU (ntasks-per-node = gpus-per-node) and
  Lightning's SLURMEnvironment reads the ranks from SLURM's variables; under torchrun, Lightning's
  TorchElasticEnvironment does the same. The CLI is told the world shape through dotted overrides
  (`--train.num_nodes`, `--train.devices`, `--train.strategy`), so the YAML stays machine-independent.
- Preemption and time limits: `--signal=TERM@<grace>` makes SLURM send SIGTERM to every task before the limit;
  the trainer saves `last.ckpt` at the next step boundary and exits, and `--requeue` puts the job back in the
  queue, where the same command resumes from `last.ckpt` (train/runner.py).
- The script is written atomically and made executable; `bash -n` accepts it (tested).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from pathlib import Path


def _overrides(nodes: int, gpus_per_node: int, strategy: str) -> list[str]:
    return [f"--train.num_nodes={nodes}", f"--train.devices={gpus_per_node}", f"--train.strategy={strategy}",
            "--train.accelerator=gpu"]


def _check(nodes: int, gpus_per_node: int, strategy: str) -> None:
    if nodes < 1:
        raise ValueError(f"nodes: must be >= 1, got {nodes}")
    if gpus_per_node < 1:
        raise ValueError(f"gpus_per_node: must be >= 1, got {gpus_per_node}")
    allowed = ("ddp", "fsdp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")
    if strategy not in allowed:
        raise ValueError(f"strategy: must be one of {', '.join(allowed)}, got {strategy!r}")


def train_command(config_path: Path | str, run_dir: Path | str | None = None, nodes: int = 1,
                  gpus_per_node: int = 1, strategy: str = "ddp", command: str = "tinyfoundry train",
                  extra_args: Sequence[str] = ()) -> list[str]:
    """The per-task training command (what srun or torchrun starts on every rank)."""
    argv = shlex.split(command) + ["--config", str(config_path)]
    if run_dir is not None:
        argv += ["--run-dir", str(run_dir)]
    return argv + _overrides(nodes, gpus_per_node, strategy) + list(extra_args)


def torchrun_command(config_path: Path | str, nodes: int, gpus_per_node: int, rdzv_endpoint: str = "localhost:29500",
                     run_dir: Path | str | None = None, strategy: str = "ddp", command: str = "tinyfoundry train",
                     job_id: str = "tinyfoundry", extra_args: Sequence[str] = ()) -> str:
    """A torchrun command line to run on every node (same line everywhere; c10d rendezvous at rdzv_endpoint)."""
    _check(nodes, gpus_per_node, strategy)
    head = ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={gpus_per_node}", "--rdzv-backend=c10d",
            f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={job_id}", "--no-python"]
    return shlex.join(head + train_command(config_path, run_dir, nodes, gpus_per_node, strategy, command,
                                           extra_args))


def write_sbatch(
    config_path: Path | str,
    out_path: Path | str,
    nodes: int = 1,
    gpus_per_node: int = 1,
    run_dir: Path | str | None = None,
    strategy: str = "ddp",
    job_name: str = "tinyfoundry-train",
    time_limit: str = "24:00:00",
    partition: str = "",
    account: str = "",
    cpus_per_task: int = 8,
    mem: str = "0",
    grace_s: int = 180,
    setup: Sequence[str] = (),
    command: str = "tinyfoundry train",
    extra_sbatch: Sequence[str] = (),
    extra_args: Sequence[str] = (),
) -> Path:
    """Write an sbatch script that trains `config_path` on nodes x gpus_per_node GPUs; returns out_path.

    setup: shell lines run before srun (e.g. `module load cuda`, `source .venv/bin/activate`).
    extra_sbatch: additional `#SBATCH` options such as `--qos=high`. mem="0" asks for all of a node's memory.
    """
    _check(nodes, gpus_per_node, strategy)
    config_path = Path(config_path).resolve()
    if not config_path.is_file():
        raise ValueError(f"config_path: {config_path} does not exist")
    out_path = Path(out_path)
    log_dir = Path(run_dir).resolve() / "slurm" if run_dir is not None else out_path.resolve().parent
    sb = [
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        f"--ntasks-per-node={gpus_per_node}",
        f"--gpus-per-node={gpus_per_node}",
        f"--cpus-per-task={cpus_per_task}",
        f"--mem={mem}",
        f"--time={time_limit}",
        f"--signal=TERM@{grace_s}",
        "--requeue",
        f"--output={log_dir}/%x-%j.out",
    ]
    if partition:
        sb.append(f"--partition={partition}")
    if account:
        sb.append(f"--account={account}")
    sb += list(extra_sbatch)
    cmd = shlex.join(train_command(config_path, Path(run_dir).resolve() if run_dir else None, nodes, gpus_per_node,
                                   strategy, command, extra_args))
    lines = ["#!/bin/bash", f"# tinyfoundry: train {config_path.name} on {nodes} node(s) x {gpus_per_node} GPU(s)"]
    lines += [f"#SBATCH {o}" for o in sb]
    lines += [
        "",
        "set -euo pipefail",
        f"mkdir -p {shlex.quote(str(log_dir))}",
        *setup,
        "# rendezvous for torch.distributed (Lightning's SLURMEnvironment reads ranks from SLURM_* variables)",
        'export MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"',
        'export MASTER_PORT="$((20000 + SLURM_JOB_ID % 20000))"',
        "export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}",
        "# rerunning the same command resumes from <run-dir>/checkpoints/last.ckpt (after a requeue too)",
        f"srun --kill-on-bad-exit=1 {cmd}",
        "",
    ]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines))
    tmp.chmod(0o755)
    os.replace(tmp, out_path)
    return out_path
