"""What a stage's subcommand does beyond "run this stage in the run directory": the default handler, and the extra
flags and stand-alone uses of `curate` (input -> output without a run), `plan` (`plan sweep`, planning from flags)
and `export --model` (any model folder outside a run). A stage's declaration (launch/stages.py) names these hooks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from launch.config import ConfigError, RunConfig, dump_yaml, load_config


def run_dir_of(args: argparse.Namespace, cfg_name: str) -> Path:
    return args.run_dir if args.run_dir is not None else Path("runs") / cfg_name


def load_for(args: argparse.Namespace, overrides: list[str], required: bool = True,
             default_name: str = "run") -> RunConfig:
    """The command's config (`--config` plus overrides); with --print-config, print it as YAML and stop."""
    if args.config is None and required:
        raise ConfigError(f"{args.command}: --config FILE.yaml is required")
    if args.config is not None and not args.config.is_file():
        raise ConfigError(f"config file not found: {args.config}")
    cfg = load_config(args.config, overrides, default_name=default_name)
    if getattr(args, "print_config", False):
        print(dump_yaml(cfg), end="")
        raise PrintedConfig
    return cfg


class PrintedConfig(Exception):
    """--print-config printed the resolved config: the command stops there with status 0."""


def cmd_stage(args: argparse.Namespace, overrides: list[str]) -> int:
    """`tinyfoundry <stage>` / `tinyfoundry run`: the stage (or every configured stage) in the run directory."""
    from launch import registry
    from launch.rundir import RunDir
    from launch.stages import run_pipeline, run_stage, write_config

    cfg = load_for(args, overrides)
    rd = RunDir(run_dir_of(args, cfg.name))
    if args.command == "run":
        run_pipeline(cfg, rd, force=args.force)
        return 0
    write_config(cfg, rd)
    run_stage(cfg, rd, registry.get(args.command), force=args.force)
    return 0


# --------------------------------------------------------------------------------------------------------------
# curate


def curate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", action="append", help="path, glob or hf:<dataset> (repeatable); no config needed")
    p.add_argument("--profile", choices=["web", "stories"], help="named filter profile")
    p.add_argument("--output", type=Path, help="output folder (default <run-dir>/data)")
    p.add_argument("--shard", help="process shard i of n, as i/n (for SLURM arrays)")


def cmd_curate(args: argparse.Namespace, overrides: list[str]) -> int:
    """With --config and no --output/--shard: the curate stage of a run. Otherwise stand-alone input -> output."""
    overrides = list(overrides)
    if args.input:
        overrides.append("--curate.inputs=" + json.dumps(list(args.input)))
    if args.profile:
        overrides.append(f"--curate.profile={args.profile}")
    if args.config is not None and args.output is None and args.shard is None:
        return cmd_stage(args, overrides)
    if args.config is None and not args.input:
        raise ConfigError("curate: give --input PATH_OR_GLOB (and --profile, --output), or --config FILE.yaml")
    from data_pipelines.curate import run_curate

    cfg = load_for(args, overrides, required=False, default_name="curate")
    out = args.output or (run_dir_of(args, cfg.name) / "data")
    shard = parse_shard(args.shard) if args.shard else None
    stats = run_curate(cfg.curate, Path(out), inputs=list(cfg.curate.inputs), shard=shard)
    if stats.get("finalized") is False:
        print(f"shard done; waiting for shards {stats.get('shards_missing')} before the cross-shard dedup "
              f"(the last shard to finish writes {out})")
    else:
        print(f"kept {stats.get('docs_out')} of {stats.get('docs_in')} documents -> {out}")
    return 0


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise ConfigError(f"--shard: need 0 <= i < n, got {text!r}")
    return i, n


# --------------------------------------------------------------------------------------------------------------
# plan


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", choices=["sweep"], help="`sweep`: run an IsoFLOP sweep and fit a law")
    p.add_argument("--flops", help="compute budget in FLOPs (e.g. 1e18)")
    p.add_argument("--hours", help="wall-clock budget in hours on --device")
    p.add_argument("--law", help="chinchilla | epoch | tokens-per-param | kaplan | fitted")


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    overrides = list(overrides)
    for flag in ("flops", "hours", "law"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"--plan.{flag}={value}")
    if args.action == "sweep":
        from train.planner import run_sweep

        cfg = load_for(args, overrides, required=False)
        rd_root = run_dir_of(args, cfg.name)
        shards = rd_root / "shards"
        if not (shards / "index.json").is_file():
            raise ConfigError(f"plan sweep: no token shards at {shards} (run `tinyfoundry tokenize` first)")
        result = run_sweep(cfg.sweep, shards, rd_root / "sweep")
        print(result.get("summary", result))
        return 0
    if args.config is None:
        # Stand-alone planning from flags: no run directory needed beyond plan.json.
        from launch import registry
        from launch.rundir import RunDir
        from launch.stages import run_stage, write_config

        cfg = load_for(args, overrides, required=False, default_name="plan")
        rd = RunDir(run_dir_of(args, cfg.name))
        write_config(cfg, rd)
        run_stage(cfg, rd, registry.get("plan"), force=True)
        return 0
    return cmd_stage(args, overrides)


# --------------------------------------------------------------------------------------------------------------
# export


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="export this model outside a run: a checkpoints/final dir, a "
                                              "compressed/<pass> dir, an HF dir or a .ckpt (no --config needed)")
    p.add_argument("--out", type=Path, help="with --model: output folder (default <model>-export beside it)")


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    """`tinyfoundry export --model DIR`: export any model dir outside a run. Held-out tokens for the runtime
    figures come from the run the dir sits in (`<run>/shards`), when there is one. Without --model: the stage."""
    if args.model is None:
        return cmd_stage(args, overrides)
    from launch.stages import val_tokens
    from models.export import format_files, run_export

    model = args.model
    if not model.exists():
        raise ConfigError(f"--model: no such file or folder: {model}")
    cfg = load_for(args, overrides, required=False, default_name="export")
    out = args.out or model.parent / f"{model.name}-export"
    shards = next((p / "shards" for p in (model.parent, model.parent.parent, model.parent.parent.parent)
                   if (p / "shards" / "index.json").is_file()), None)
    tokens, bpt = val_tokens(shards) if shards is not None else (None, None)
    report_path = model.parent / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    info = run_export(cfg.export, model, out, report=report, val_tokens=tokens, bytes_per_token=bpt,
                      source_label=model.name)
    print(format_files(info))
    print(f"wrote {out}")
    return 0
