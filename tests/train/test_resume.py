"""Fault tolerance: SIGTERM saves and stops, SIGKILL + rerun resumes, and the loss curve is bitwise the same as an
uninterrupted run (fp32, CPU, random data order)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from models import ModelConfig
from train import TrainConfig, run_train
from train.checkpointing import Checkpointer

REPO = Path(__file__).resolve().parents[2]
MODEL = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64)
CFG = dict(max_tokens=4 * 32 * 24, batch_size=4, seq_len=32, lr=3e-3, warmup_frac=0.1, log_every_steps=1,
           ckpt_every_tokens=4 * 32, num_keep_ckpts=2, num_val_tokens=256, num_sample_tokens=0,
           progress_bar=False, num_threads=1, seed=7)

DRIVER = """
import json, sys
from pathlib import Path
from models import ModelConfig
from train import TrainConfig, run_train
cfg, model, shards, run = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
s = run_train(TrainConfig(**cfg), ModelConfig.from_dict(model), Path(shards), Path(run))
print("STATUS", s["status"], s["steps"], flush=True)
"""


def loss_curve(run_dir: Path) -> dict[int, float]:
    """step -> train/loss from every TensorBoard event file (later files win for a step logged twice)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    curve: dict[int, float] = {}
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == "train/loss":
                    val = v.simple_value if v.HasField("simple_value") else float(tensor_util.make_ndarray(v.tensor))
                    curve[ev.step] = val
    return curve


def _start(tmp: Path, shards: Path, run: Path, **over: object) -> subprocess.Popen:
    script = tmp / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(script), json.dumps({**CFG, **over}), json.dumps(MODEL.to_dict()), str(shards), str(run)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _last_step(folder: Path) -> int:
    steps = [int(p.stem.split("-")[1]) for p in folder.glob("step-*.ckpt") if p.stem.split("-")[1].isdigit()]
    return max(steps, default=-1)


def _wait_for_step(folder: Path, step: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Wait until a periodic checkpoint at `step` or later exists. Only the last k are kept, so a poll can miss the
    exact file on a busy machine; waiting for 'at least' cannot."""
    t0 = time.time()
    while _last_step(folder) < step:
        if proc.poll() is not None:
            raise AssertionError(f"driver exited early:\n{proc.stdout.read() if proc.stdout else ''}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"timed out waiting for step {step} in {folder}")
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_then_sigkill_resume_is_bitwise_identical(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    ref = run_train(TrainConfig(**CFG), MODEL, shards, ref_dir)
    assert ref["status"] == "completed" and ref["steps"] == 24
    ref_curve = loss_curve(ref_dir)
    assert sorted(ref_curve) == list(range(1, 25))

    # 1) SIGTERM (sent from a watcher thread to this process): last.ckpt at the next step boundary, clean stop
    def send_sigterm() -> None:
        t0 = time.time()
        while not (run_dir / "checkpoints" / "step-00000004.ckpt").exists() and time.time() - t0 < 60:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)

    handler_before = signal.getsignal(signal.SIGTERM)
    watcher = threading.Thread(target=send_sigterm, daemon=True)
    watcher.start()
    first = run_train(TrainConfig(**CFG), MODEL, shards, run_dir)
    watcher.join()
    assert first["status"] == "interrupted" and 4 <= first["steps"] < 24
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not (run_dir / "train" / "summary.json").exists()
    handler_after = signal.getsignal(signal.SIGTERM)  # our handler is removed again after fit: the old one is back
    assert handler_after == handler_before and not isinstance(getattr(handler_after, "__self__", None), Checkpointer)

    # 2) SIGKILL in the middle of the resumed run (a subprocess): no cleanup at all
    proc = _start(tmp_path, shards, run_dir)
    _wait_for_step(run_dir / "checkpoints", first["steps"] + 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    # 3) the same command again resumes from last.ckpt and finishes
    summary = run_train(TrainConfig(**CFG), MODEL, shards, run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 24
    assert summary["resumed_from"].endswith("last.ckpt")
    curve = loss_curve(run_dir)
    assert sorted(curve) == sorted(ref_curve)
    diffs = {s: (ref_curve[s], curve[s]) for s in ref_curve if curve[s] != ref_curve[s]}
    assert not diffs, f"loss curve differs after resume: {diffs}"
    assert summary["final_val_loss"] == ref["final_val_loss"]
    # only the last k periodic checkpoints are kept, plus last and best
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt"))
    assert kept == ["step-00000023.ckpt", "step-00000024.ckpt"]
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()

    # 4) rerunning a finished run trains nothing and keeps the results
    again = run_train(TrainConfig(**CFG), MODEL, shards, run_dir)
    assert again["steps"] == 24 and again["final_val_loss"] == ref["final_val_loss"]


def test_resume_with_dropout_continues_the_same_masks(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    """Dropout draws from torch's global RNG, and so do things between steps (a validation loader's iterator) and
    at start-up (a new training iterator): the resumed run must still draw the masks the uninterrupted run drew.
    A kill after step k leaves last.ckpt = step k's file; copying that file into a new run directory is the same."""
    import shutil

    from train.peak_flops import measure_matmul_peak

    shards, _ = tiny_shards
    model = ModelConfig.from_dict({**MODEL.to_dict(), "dropout": 0.1})
    cfg = TrainConfig(**{**CFG, "max_tokens": 4 * 32 * 8, "num_keep_ckpts": 10, "val_every_tokens": 4 * 32 * 2,
                         "precision": "fp32"})
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "resumed"
    ref = run_train(cfg, model, shards, ref_dir)
    ref_curve = loss_curve(ref_dir)
    assert sorted(ref_curve) == list(range(1, 9))
    k = 4  # a validation step: the uninterrupted run validates after the checkpoint, the resumed one does not
    (run_dir / "checkpoints").mkdir(parents=True)
    shutil.copyfile(ref_dir / "checkpoints" / f"step-{k:08d}.ckpt", run_dir / "checkpoints" / "last.ckpt")
    summary = run_train(cfg, model, shards, run_dir)
    assert summary["resumed_from"].endswith("last.ckpt") and summary["steps"] == 8
    curve = loss_curve(run_dir)
    assert sorted(curve) == list(range(k + 1, 9))
    diffs = {s: (ref_curve[s], curve[s]) for s in curve if curve[s] != ref_curve[s]}
    assert not diffs, f"loss after the resume point differs (uninterrupted, resumed): {diffs}"
    assert summary["final_val_loss"] == ref["final_val_loss"]
    # the CPU matmul peak (measured at start-up when not cached, so in one process and not the next) draws nothing
    rng_before = torch.get_rng_state()
    measure_matmul_peak(torch.float32, seconds=0.001, shapes=((8, 8, 8),))
    assert torch.equal(torch.get_rng_state(), rng_before)


def test_resume_on_data_of_another_tokenizer_is_refused(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    """Shards rewritten by another tokenizer under a run with checkpoints: the run must not resume its weights
    on ids that now mean other text (it used to, silently)."""
    import shutil

    shards, _ = tiny_shards
    run_dir = tmp_path / "run"
    cfg = TrainConfig(**{**CFG, "max_tokens": 4 * 32 * 4})
    run_train(cfg, MODEL, shards, run_dir)
    other = tmp_path / "other_shards"
    shutil.copytree(shards, other)
    index = json.loads((other / "index.json").read_text())
    index["tokenizer_sha256"] = "f" * 64  # the same ids, as if written by another tokenizer
    (other / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="tokenizer: the checkpoint was trained on ids of tokenizer sha256"):
        run_train(cfg, MODEL, other, run_dir)
    assert run_train(cfg, MODEL, shards, run_dir)["steps"] == 4  # the run's own data still resumes
