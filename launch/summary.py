"""What `tinyfoundry run` prints at the end: where each output is, the validation loss against a unigram baseline
(what a model that learned only token frequencies would score), the export's files, and a story from the model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from launch.config import RunConfig
    from launch.rundir import RunDir


def unigram_baseline(shards_dir: Path) -> float:
    """Cross-entropy (nats/token) of the val split under the train split's unigram distribution (add-one smoothed):
    the loss of a model that has learned token frequencies and nothing else."""
    import numpy as np

    from data_pipelines.tokenize.shards import ShardIndex

    idx = ShardIndex.load(shards_dir)
    counts = np.ones(idx.vocab_size, dtype=np.float64)
    for arr in idx.open("train"):
        counts += np.bincount(np.asarray(arr, dtype=np.int64), minlength=idx.vocab_size)[: idx.vocab_size]
    logp = np.log(counts / counts.sum())
    total, n = 0.0, 0
    for arr in idx.open("val"):
        ids = np.asarray(arr, dtype=np.int64)
        total -= float(logp[ids].sum())
        n += len(ids)
    return total / max(n, 1)


def sample_story(model_dir: Path, prompt: str = "Once upon a time", max_new_tokens: int = 160,
                 temperature: float = 0.7, seed: int = 0) -> str:
    from launch.generation import generate_text

    return generate_text(model_dir, prompt, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                         top_k=40)


def print_run_summary(cfg: RunConfig, rd: RunDir) -> None:
    import json

    lines = [f"\nRun directory: {rd.root.resolve()}"]
    for label, path in [
        ("config", rd.config_yaml), ("synthetic stories", rd.synth), ("curated data", rd.data),
        ("tokenizer", rd.tokenizer_file), ("token shards", rd.shards), ("plan", rd.plan_json),
        ("checkpoints", rd.checkpoints), ("TensorBoard", rd.tb), ("training summary", rd.train_summary),
        ("compressed", rd.compressed), ("HF export", rd.export / "hf"), ("GGUF export", rd.export / "gguf"),
    ]:
        if path.exists():
            lines.append(f"  {label:<18} {path}")
    if rd.train_summary.is_file() and rd.shards.is_dir():
        s = json.loads(rd.train_summary.read_text())
        base = unigram_baseline(rd.shards)
        val = s.get("final_val_loss")
        if isinstance(val, (int, float)) and math.isfinite(val):
            lines.append(f"\nval loss {val:.3f} nats/token vs unigram baseline {base:.3f} "
                         f"({val / base:.0%} of it); val bits-per-byte {s.get('val_bpb', float('nan')):.3f}")
    if (rd.export / "report.json").is_file():  # the deliverables: each file's size and bpb in its own runtime
        from models.export import format_files

        lines.append("\n" + format_files(json.loads((rd.export / "report.json").read_text())))
    story_model = rd.export / "hf" if (rd.export / "hf" / "config.json").is_file() else rd.final_model
    if story_model.is_dir():
        lines.append(f"\nA story from {story_model}:\n")
        lines.append("Once upon a time" + sample_story(story_model, seed=cfg.seed))
    print("\n".join(lines), flush=True)
