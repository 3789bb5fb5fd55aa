"""Stage orchestration: each stage reads its section of the run config and its upstream outputs, calls one entry
function of its component, and records a manifest. `run` is every configured stage in pipeline order.

Each stage is declared once, at the end of this file (`register(Stage(...))`: name, sections, inputs, outputs,
function, help); the CLI, the config schema, `run` and the manifests are derived from those declarations
(launch/registry.py).

Why here and not in the components: the components know nothing of each other or of the run directory's layout beyond
the paths they are handed; this module is the one place that wires outputs to inputs (launch/ is the only package that
imports every other one).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launch import registry
from launch import stage_commands as commands
from launch.config import ConfigError, RunConfig, dump_yaml
from launch.registry import Inputs, Stage, register
from launch.summary import print_run_summary

if TYPE_CHECKING:  # launch.rundir imports models (torch): loaded when a stage runs, not for `tinyfoundry --help`
    from launch.rundir import RunDir


def log(msg: str) -> None:
    print(f"[tinyfoundry] {msg}", file=sys.stderr, flush=True)


class StageInterrupted(Exception):
    """A stage stopped on a signal after saving its state (e.g. training's last.ckpt)."""


# --------------------------------------------------------------------------------------------------------------
# Running one stage: upstream identity, manifest, outputs


def upstream_identities(cfg: RunConfig, rd: RunDir, stage: Stage) -> dict[str, str]:
    """What a stage consumes, as identities: upstream stages' run ids, or fingerprints of external files."""
    spec = stage.inputs(cfg, rd)
    deps: dict[str, str] = {}
    for up in spec.needs:
        rid = rd.run_id(up)
        if rid is None:
            raise ConfigError(
                f"{stage.name} needs the outputs of '{up}' in {rd.root}, which are missing or unfinished: "
                f"run `tinyfoundry {up}` first, or `tinyfoundry run`"
            )
        deps[up] = rid
    for up in spec.uses:
        rid = rd.run_id(up)
        if rid:
            deps[up] = rid
    deps.update(spec.files)
    return deps


def run_stage(cfg: RunConfig, rd: RunDir, stage: Stage, force: bool = False) -> dict[str, Any] | None:
    inputs = upstream_identities(cfg, rd, stage)
    chash = cfg.section_hash(*stage.hashed)
    if not force and rd.is_current(stage.name, chash, inputs):
        log(f"{stage.name}: up to date (manifest matches), skipped")
        return None
    log(f"{stage.name}: running")
    rd.begin(stage.name, chash, inputs, stage.outputs)
    t0 = time.time()
    outputs = stage.fn(cfg, rd)
    wall = time.time() - t0
    if isinstance(outputs, dict) and outputs.get("status") == "interrupted":
        # no manifest: the stage is unfinished, and the same command resumes it
        raise StageInterrupted(f"{stage.name} interrupted after {wall:.0f}s; rerun the same command to resume")
    rd.finish(stage.name, chash, inputs, wall, outputs=_summary(outputs), paths=stage.outputs)
    log(f"{stage.name}: done in {wall:.1f}s")
    return outputs


def _summary(outputs: Any) -> dict[str, Any]:
    """Small scalar facts of a stage's result for its manifest."""
    if not isinstance(outputs, dict):
        return {}
    return {k: v for k, v in outputs.items() if isinstance(v, (int, float, str, bool)) and not isinstance(v, dict)}


def write_config(cfg: RunConfig, rd: RunDir) -> None:
    from launch.rundir import atomic_write_text

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


# --------------------------------------------------------------------------------------------------------------
# The declarations: one per stage, in pipeline order (launch/registry.py derives the CLI, schema and `run` from them)


def _curate_inputs(cfg: RunConfig, rd: RunDir) -> Inputs:
    if not cfg.curate.inputs:
        return Inputs(needs=("synth",))
    from data_pipelines.curate import resolve_inputs
    from launch.rundir import file_fingerprint

    fp = file_fingerprint(resolve_inputs(cfg.curate.inputs)) + "|" + "|".join(cfg.curate.inputs)
    return Inputs(files={"inputs": fp})


def _train_inputs(cfg: RunConfig, rd: RunDir) -> Inputs:
    with_plan = "plan" in cfg.stages or rd.plan_json.is_file()
    return Inputs(needs=("tokenize", "plan") if with_plan else ("tokenize",))


def _finetune_inputs(cfg: RunConfig, rd: RunDir) -> Inputs:
    from launch.rundir import file_fingerprint

    needs = (() if cfg.finetune.base else ("train",)) + (() if cfg.finetune.data else ("tokenize",))
    files = {f"data:{d}": file_fingerprint([Path(d)]) for d in cfg.finetune.data if Path(d).is_file()}
    return Inputs(needs=needs, files=files)


def _compress_inputs(cfg: RunConfig, rd: RunDir) -> Inputs:
    return Inputs(needs=("train", "tokenize") + (("finetune",) if "finetune" in cfg.stages else ()))


def _export_inputs(cfg: RunConfig, rd: RunDir) -> Inputs:
    needs = ["train"]
    if "compress" in cfg.stages or cfg.export.source != "final":
        needs.append("compress")
    if "finetune" in cfg.stages:
        needs.append("finetune")
    return Inputs(needs=tuple(needs))


register(Stage(
    "synth", stage_synth, declares={"synth": "data_pipelines.synthetic:SynthConfig"}, outputs=("synth",),
    help="make TinyStories-style stories (offline grammar, an OpenAI-compatible server, or a local model)"))
register(Stage(
    "curate", stage_curate, declares={"curate": "data_pipelines.curate:CurateConfig"}, inputs=_curate_inputs,
    outputs=("data",), add_arguments=commands.curate_arguments, command=commands.cmd_curate,
    help="read, normalize, filter and deduplicate documents"))
register(Stage(
    "tokenize", stage_tokenize, declares={"tokenize": "data_pipelines.tokenize:TokenizeConfig"},
    inputs=lambda cfg, rd: Inputs(needs=("curate",)), outputs=("tokenizer", "shards"),
    help="train a byte-level BPE tokenizer and pack token shards"))
register(Stage(
    "plan", stage_plan, declares={"plan": "train.planner:PlanConfig", "sweep": "train.planner.sweep:SweepConfig"},
    reads=("plan", "model"), help_sections=("model",), outputs=("plan.json",),
    inputs=lambda cfg, rd: Inputs(uses=("tokenize",)),  # unique tokens come from the shards when present
    add_arguments=commands.plan_arguments, command=commands.cmd_plan,
    help="choose model size and token count for a compute budget (`plan sweep` fits your own law)"))
register(Stage(
    "train", stage_train, declares={"model": "models:ModelConfig", "train": "train:TrainConfig"},
    inputs=_train_inputs, outputs=("checkpoints", "tb", "train"), help="train the model with Lightning"))
register(Stage(
    "finetune", stage_finetune, declares={"finetune": "train.finetune_config:FinetuneConfig"},
    reads=("finetune", "train"), inputs=_finetune_inputs, outputs=("finetune",), default=False,
    help="adapt a base model (ours, HF, GGUF): full fine-tuning, LoRA or QLoRA, chat data with loss masks"))
register(Stage(
    "compress", stage_compress, declares={"compress": "models.compress:CompressConfig"}, inputs=_compress_inputs,
    outputs=("compressed",), help="quantize and prune the trained model, with a size-vs-quality report"))
register(Stage(
    "export", stage_export, declares={"export": "models.export:ExportConfig"}, inputs=_export_inputs,
    outputs=("export",), add_arguments=commands.export_arguments, command=commands.cmd_export,
    help="write the Hugging Face (safetensors) and GGUF exports"))


def run_pipeline(cfg: RunConfig, rd: RunDir, force: bool = False) -> None:
    check_export_source(cfg)
    write_config(cfg, rd)
    for name in cfg.stages:
        run_stage(cfg, rd, registry.get(name), force=force)
    print_run_summary(cfg, rd)
