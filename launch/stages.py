"""Stage orchestration: each stage reads its section of the run config and its upstream outputs, calls one entry
function of its component, and records a manifest. `run` is every configured stage in pipeline order.

Why here and not in the components: the components know nothing of each other or of the run directory's layout beyond
the paths they are handed; this module is the one place that wires outputs to inputs (and the only one allowed to import
every room, see ../shared/DESIGN.md).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launch.config import ConfigError, RunConfig, dump_yaml
from launch.rundir import RunDir, atomic_write_text, file_fingerprint


def log(msg: str) -> None:
    print(f"[tinyfoundry] {msg}", file=sys.stderr, flush=True)


class StageInterrupted(Exception):
    """A stage stopped on a signal after saving its state (e.g. training's last.ckpt)."""


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]
    """Config sections whose values decide the stage's outputs."""
    fn: Callable[[RunConfig, RunDir], dict[str, Any]]


# --------------------------------------------------------------------------------------------------------------
# Upstream identity


def _upstream(cfg: RunConfig, rd: RunDir, stage: str) -> dict[str, str]:
    """What a stage consumes, as identities: upstream stages' run ids, or fingerprints of external files."""
    deps: dict[str, str] = {}

    def need(up: str) -> None:
        rid = rd.run_id(up)
        if rid is None:
            raise ConfigError(
                f"{stage} needs the outputs of '{up}' in {rd.root}, which are missing or unfinished: "
                f"run `tinyfoundry {up}` first, or `tinyfoundry run`"
            )
        deps[up] = rid

    if stage == "curate":
        if cfg.curate.inputs:
            from data_pipelines.curate import resolve_inputs

            deps["inputs"] = file_fingerprint(resolve_inputs(cfg.curate.inputs)) + "|" + "|".join(cfg.curate.inputs)
        else:
            need("synth")
    elif stage == "tokenize":
        need("curate")
    elif stage == "plan":
        if rd.run_id("tokenize"):
            deps["tokenize"] = rd.run_id("tokenize")  # unique tokens come from the shards when present
    elif stage == "train":
        need("tokenize")
        if "plan" in cfg.stages or rd.plan_json.is_file():
            need("plan")
    elif stage == "finetune":
        if not cfg.finetune.base:
            need("train")
        if not cfg.finetune.data:
            need("tokenize")
        deps.update({f"data:{d}": file_fingerprint([Path(d)]) for d in cfg.finetune.data if Path(d).is_file()})
    elif stage == "compress":
        need("train")
        need("tokenize")
        if "finetune" in cfg.stages:
            need("finetune")
    elif stage == "export":
        need("train")
        if "compress" in cfg.stages or cfg.export.source != "final":
            need("compress")
        if "finetune" in cfg.stages:
            need("finetune")
    return deps


def run_stage(cfg: RunConfig, rd: RunDir, stage: Stage, force: bool = False) -> dict[str, Any] | None:
    inputs = _upstream(cfg, rd, stage.name)
    chash = cfg.section_hash(*stage.sections)
    if not force and rd.is_current(stage.name, chash, inputs):
        log(f"{stage.name}: up to date (manifest matches), skipped")
        return None
    log(f"{stage.name}: running")
    rd.begin(stage.name, chash, inputs)
    t0 = time.time()
    outputs = stage.fn(cfg, rd)
    wall = time.time() - t0
    if isinstance(outputs, dict) and outputs.get("status") == "interrupted":
        # no manifest: the stage is unfinished, and the same command resumes it
        raise StageInterrupted(f"{stage.name} interrupted after {wall:.0f}s; rerun the same command to resume")
    rd.finish(stage.name, chash, inputs, wall, outputs=_summary(outputs))
    log(f"{stage.name}: done in {wall:.1f}s")
    return outputs


def _summary(outputs: Any) -> dict[str, Any]:
    """Small scalar facts of a stage's result for its manifest."""
    if not isinstance(outputs, dict):
        return {}
    return {k: v for k, v in outputs.items() if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)}


def write_config(cfg: RunConfig, rd: RunDir) -> None:
    rd.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(rd.config_yaml, dump_yaml(cfg))


# --------------------------------------------------------------------------------------------------------------
# The stages


def stage_synth(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from data_pipelines.synthetic import run_synth

    return run_synth(cfg.synth, rd.synth, seed=cfg.seed)


def stage_curate(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from data_pipelines.curate import run_curate

    inputs = list(cfg.curate.inputs) or [str(rd.synth / "*.parquet")]
    return run_curate(cfg.curate, rd.data, inputs=inputs)


def stage_tokenize(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from data_pipelines.tokenize import run_tokenize

    files = sorted(rd.data.glob("*.parquet"))
    if not files:
        raise ConfigError(f"tokenize: no curated documents in {rd.data} (*.parquet)")
    return run_tokenize(cfg.tokenize, files, rd.tokenizer, rd.shards, seed=cfg.seed)


def stage_plan(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from train.planner import format_candidates, run_plan

    plan = run_plan(cfg.plan, rd.plan_json, shards_dir=rd.shards if rd.shards.is_dir() else None, model_cfg=cfg.model)
    print(format_candidates(plan))
    return plan


def _load_plan(cfg: RunConfig, rd: RunDir) -> dict[str, Any] | None:
    if "plan" not in cfg.stages and not rd.plan_json.is_file():
        return None
    import json

    return json.loads(rd.plan_json.read_text())


def model_for_data(cfg: RunConfig, rd: RunDir) -> Any:
    """The model config with its vocabulary taken from the tokenizer, unless the user set `model.vocab_size`
    (then a mismatch is refused by training, before it starts)."""
    import dataclasses

    from data_pipelines.tokenize.shards import ShardIndex

    model = cfg.model
    if "vocab_size" not in cfg.explicit.get("model", []) and (rd.shards / "index.json").is_file():
        vocab = ShardIndex.load(rd.shards).vocab_size
        if vocab != model.vocab_size:
            model = dataclasses.replace(model, vocab_size=vocab)
    return model


PLAN_LR_CAP = 1e-2  # the DeepSeek fit extrapolates to very high rates at tiny budgets; 1e-2 was stable in LOG.md


def train_config_for(cfg: RunConfig, plan: dict[str, Any] | None) -> Any:
    """The train section, with what the plan chose unless the section sets it: the learning-rate hint (capped at
    PLAN_LR_CAP), the micro-batch and gradient accumulation that fit the device's memory (taken together, and only
    when neither batch_size nor num_accum_steps is set, so a set batch is never multiplied), and activation
    checkpointing."""
    import dataclasses

    plan = plan or {}
    explicit = set(cfg.explicit.get("train", []))
    changes: dict[str, Any] = {}
    hint = plan.get("lr_hint")
    if hint and "lr" not in explicit:
        changes["lr"] = min(PLAN_LR_CAP, float(hint))
        log(f"train: peak lr {changes['lr']:.3g} from the plan (DeepSeek LLM fit 0.3118 C^-0.125, capped at "
            f"{PLAN_LR_CAP:g}); set train.lr to choose another")
    if plan.get("micro_batch_size") and not explicit & {"batch_size", "num_accum_steps"}:
        changes["batch_size"] = int(plan["micro_batch_size"])
        changes["num_accum_steps"] = int(plan.get("num_accum_steps") or 1)
    if "activation_checkpointing" in plan and "activation_checkpointing" not in explicit:
        changes["activation_checkpointing"] = bool(plan["activation_checkpointing"])
    out = dataclasses.replace(cfg.train, **changes) if changes else cfg.train
    if changes.get("num_accum_steps", 1) > 1 or changes.get("activation_checkpointing"):
        log(f"train: micro-batch {out.batch_size} x {out.num_accum_steps} accumulation steps"
            f"{', activation checkpointing' if out.activation_checkpointing else ''} from the plan "
            f"({plan.get('memory_gib', 0):.3g} GiB per device); set train.batch_size / num_accum_steps / "
            "activation_checkpointing to choose another")
    return out


def stage_train(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from train import run_train

    plan = _load_plan(cfg, rd)
    # with a plan, the planner's model (built from the `model` section's family and the data's vocabulary) is used
    model = None if plan is not None and plan.get("model") else model_for_data(cfg, rd)
    return run_train(train_config_for(cfg, plan), model, rd.shards, rd.root, plan=plan,
                     tokenizer_file=rd.tokenizer_file)


def stage_finetune(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from train.finetune import run_finetune

    return run_finetune(cfg.finetune, cfg.train, rd.root / "finetune",
                        default_base=rd.final_model if rd.final_model.is_dir() else None,
                        run_tokenizer=rd.tokenizer_file, shards_dir=rd.shards if rd.shards.is_dir() else None)


def model_to_ship(cfg: RunConfig, rd: RunDir) -> Path:
    """What compress and export take: the fine-tuned merged model when the run fine-tunes, else the trained one."""
    merged = rd.root / "finetune" / "merged"
    return merged if "finetune" in cfg.stages and merged.is_dir() else rd.final_model


def val_tokens(shards_dir: Path, max_tokens: int = 1_000_000) -> tuple[Any, float]:
    """The held-out tokens (first `max_tokens`) as a LongTensor, and bytes per token of the val split."""
    import numpy as np
    import torch

    from data_pipelines.tokenize.shards import ShardIndex

    idx = ShardIndex.load(shards_dir)
    parts, n = [], 0
    for arr in idx.open("val"):
        take = min(len(arr), max_tokens - n)
        parts.append(np.asarray(arr[:take], dtype=np.int64))
        n += take
        if n >= max_tokens:
            break
    if not parts:
        raise ConfigError(f"no validation tokens in {shards_dir}")
    return torch.from_numpy(np.concatenate(parts)), float(idx.bytes_per_token("val"))


def stage_compress(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    from data_pipelines.tokenize.shards import ShardIndex
    from models.compress import run_compress

    tokens, bpt = val_tokens(rd.shards)
    return run_compress(cfg.compress, model_to_ship(cfg, rd), tokens, bpt, rd.compressed, recover=_recover_fn(cfg, rd),
                        tokenizer_sha256=ShardIndex.load(rd.shards).tokenizer_sha256,
                        probe=_probe_fn(cfg, rd))


def _probe_fn(cfg: RunConfig, rd: RunDir) -> Callable[..., Any]:
    """train.eval's probes (word usage, repetition, completeness, consistency, fairness) at a small budget."""
    from tokenizers import Tokenizer

    from train.eval.config import ProbeConfig
    from train.eval.probes import probe_metrics

    n = cfg.compress.num_probe_prompts
    pcfg = ProbeConfig(num_word_prompts=n, num_story_samples=1, max_new_tokens=64, num_fairness_samples=1,
                       fairness_max_new_tokens=24, occupations=ProbeConfig().occupations[:n], seed=cfg.seed)
    tok = Tokenizer.from_file(str(rd.tokenizer_file))
    return lambda model: probe_metrics(model, tok, pcfg)


def _recover_fn(cfg: RunConfig, rd: RunDir) -> Callable[..., Any]:
    """Recovery after pruning with train's recipe (train/recover.py; models/ may not import train/): plain or
    distillation from the pass's input (the teacher argument), at the compress section's tokens and lr."""
    from train.recover import recover, recovery_config

    c = cfg.compress

    def fn(student: Any, teacher: Any) -> Any:
        tc = recovery_config(seed=cfg.seed, max_tokens=c.recovery_tokens, lr=c.recovery_lr, muon_lr=10 * c.recovery_lr,
                             seq_len=min(256, int(student.cfg.max_seq_len)), distill_alpha=c.distill_alpha,
                             distill_temperature=c.distill_temperature)
        return recover(student, teacher, rd.shards, tc)

    return fn


def check_export_source(cfg: RunConfig) -> None:
    """A bad export.source is refused before any stage runs (one line, exit 2), not after training."""
    src = cfg.export.source
    if src in ("final", "best") or "export" not in cfg.stages or "compress" not in cfg.stages:
        return
    names = [p.name for p in cfg.compress.passes]
    if src not in names:
        raise ConfigError(f"export.source: no compress pass named {src!r} (choose final, best or one of: "
                          f"{', '.join(names)})")


def stage_export(cfg: RunConfig, rd: RunDir) -> dict[str, Any]:
    import json

    from models.export import format_files, resolve_source, run_export

    check_export_source(cfg)
    try:
        model_dir, label = resolve_source(cfg.export.source, model_to_ship(cfg, rd), rd.compressed,
                                          cfg.export.max_bpb_increase)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    report_path = rd.compressed / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    tokens, bpt = val_tokens(rd.shards) if (rd.shards / "index.json").is_file() else (None, None)
    info = run_export(cfg.export, model_dir, rd.export, report=report, val_tokens=tokens, bytes_per_token=bpt,
                      source_label=label)
    print(format_files(info), flush=True)
    return {"source": label, "files": len(info["files"])}


STAGES: dict[str, Stage] = {
    "synth": Stage("synth", ("synth",), stage_synth),
    "curate": Stage("curate", ("curate",), stage_curate),
    "tokenize": Stage("tokenize", ("tokenize",), stage_tokenize),
    "plan": Stage("plan", ("plan", "model"), stage_plan),
    "train": Stage("train", ("model", "train"), stage_train),
    "finetune": Stage("finetune", ("finetune", "train"), stage_finetune),
    "compress": Stage("compress", ("compress",), stage_compress),
    "export": Stage("export", ("export",), stage_export),
}


def run_pipeline(cfg: RunConfig, rd: RunDir, force: bool = False) -> None:
    check_export_source(cfg)
    write_config(cfg, rd)
    for name in cfg.stages:
        run_stage(cfg, rd, STAGES[name], force=force)
    print_run_summary(cfg, rd)


# --------------------------------------------------------------------------------------------------------------
# What `run` prints at the end


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
