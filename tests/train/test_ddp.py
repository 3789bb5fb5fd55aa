"""DDP on CPU: two processes under torchrun (gloo) train on the two halves of the same global batches as one
process with twice the batch, so the result matches it up to floating-point reduction order."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from models import ModelConfig
from train import TrainConfig, run_train

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64)
BASE = dict(max_tokens=8 * 32 * 6, seq_len=32, num_val_tokens=256, num_sample_tokens=0, progress_bar=False,
            log_every_steps=1, seed=3)

DRIVER = """
import json, sys
from pathlib import Path
from models import ModelConfig
from train import TrainConfig, run_train
cfg, model, shards, run = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
s = run_train(TrainConfig(**cfg), ModelConfig.from_dict(model), Path(shards), Path(run))
# one file per rank: two ranks printing at once can interleave their lines on the shared stdout
import os
Path(run, f"rank{os.environ['RANK']}.json").write_text(
    json.dumps({k: s.get(k) for k in ("status", "steps", "world_size", "final_val_loss")}))
"""


@pytest.mark.slow
def test_ddp_two_processes_gloo_matches_single_process(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    cfg = dict(BASE, batch_size=4, strategy="ddp", devices=2, accelerator="cpu")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
         json.dumps(cfg), json.dumps(MODEL.to_dict()), str(shards), str(tmp_path / "ddp")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = [json.loads((tmp_path / "ddp" / f"rank{r}.json").read_text()) for r in range(2)]
    assert len(results) == 2  # both ranks return
    assert all(r["world_size"] == 2 and r["steps"] == 6 and r["status"] == "completed" for r in results)
    summary = json.loads((tmp_path / "ddp" / "train" / "summary.json").read_text())
    assert summary["tokens"] == 6 * 2 * 4 * 32 and summary["world_size"] == 2
    assert (tmp_path / "ddp" / "checkpoints" / "final" / "model.safetensors").is_file()

    single = run_train(TrainConfig(**dict(BASE, batch_size=8, num_threads=1)), MODEL, shards, tmp_path / "one")
    assert single["tokens"] == summary["tokens"]
    assert summary["final_val_loss"] == pytest.approx(single["final_val_loss"], rel=1e-4)
