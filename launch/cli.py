"""`tinyfoundry`: one command per stage, `run` for all of them, and tools around a trained model.

    tinyfoundry <stage> --config FILE.yaml [--run-dir DIR] [--section.key=value ...]
    tinyfoundry run --config FILE.yaml          # every stage in order, skipping those whose outputs are current
    tinyfoundry generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
    tinyfoundry <stage> --config FILE.yaml --print-config   # the resolved config as YAML
    tinyfoundry --version

Bad input (unknown key, wrong type, out-of-range value, missing file) prints one line naming the key or path and exits
with status 2; set TINYFOUNDRY_DEBUG=1 to see the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from launch.config import ConfigError, describe_section
from launch.stage_commands import PrintedConfig


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _options_epilog(sections: tuple[str, ...]) -> str:
    parts = ["config options (set in the YAML section, or override as --section.key=value):"]
    for sec in sections:
        try:
            parts.append(f"\n[{sec}]\n" + describe_section(sec))
        except Exception as e:  # a component that fails to import should not hide the others' help
            parts.append(f"\n[{sec}]\n  (unavailable: {e})")
    return "\n".join(parts)


def version() -> str:
    """The installed package's version (pyproject.toml's, through the package metadata)."""
    from importlib import metadata

    try:
        return metadata.version("tinyfoundry")
    except metadata.PackageNotFoundError:
        return "unknown (not installed; pip install -e .)"


def _stage_parsers(sub: Any, with_epilogs: bool) -> None:
    """One subcommand per registered stage, and `run`: their help and options come from the stage declarations."""
    from launch import registry

    every_section = tuple(registry.section_classes())
    entries = [(s.name, s.help, s.sections, s.add_arguments) for s in registry.stages().values()]
    entries.append(("run", "run every configured stage in order, skipping stages whose outputs are current",
                    every_section, None))
    for name, help_, sections, add_arguments in entries:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter,
                           epilog=_options_epilog(sections) if with_epilogs else None)
        p.add_argument("--config", type=Path, help="the run's YAML config")
        p.add_argument("--run-dir", type=Path, help="run directory (default runs/<config name>/)")
        p.add_argument("--force", action="store_true", help="redo the stage even if its outputs are current")
        p.add_argument("--print-config", action="store_true",
                       help="print the resolved config (file, includes and overrides) as YAML and exit")
        if add_arguments is not None:
            add_arguments(p)


def build_parser(with_epilogs: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinyfoundry", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("-V", "--version", action="version", version=f"tinyfoundry {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _stage_parsers(sub, with_epilogs)

    g = sub.add_parser("generate", help="sample text from a checkpoint or export", formatter_class=_Formatter)
    g.add_argument("--model", type=Path, required=True, help="model folder, .ckpt, HF export or compressed model")
    g.add_argument("--prompt", default="Once upon a time", help="text to continue")
    g.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most")
    g.add_argument("--temperature", type=float, default=0.8, help="sampling temperature; 0 is greedy")
    g.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = all)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    g.add_argument("--seed", type=int, default=0, help="sampling seed")

    sub.add_parser("models", help="list the model presets with params and FLOPs per token")

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server for a model (127.0.0.1 by default)")
    s.add_argument("--model", type=Path, required=True, help="model folder or export")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    s.add_argument("--port", type=int, default=8000, help="port")
    s.add_argument("--model-name", default=None, help="model id clients send (default: the model folder's name)")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $TINYFOUNDRY_API_KEY; none when unset)")
    s.add_argument("--max-batch", type=int, default=16, help="requests decoded together at most")

    e = sub.add_parser("eval", help="loss, bits-per-byte and story-quality probes of a model on held-out text",
                       formatter_class=_Formatter)
    e.add_argument("--model", type=Path, required=True, help="model folder, .ckpt, export or compressed model")
    e.add_argument("--data", type=Path, default=None,
                   help="held-out text: .txt, .jsonl or .parquet (with --harness: the file of the task 'local')")
    e.add_argument("--out", type=Path, default=None, help="where to write eval.json (default beside the model)")
    e.add_argument("--harness", default=None, metavar="TASKS",
                   help="run lm-evaluation-harness instead: comma-separated task names; 'local' = a task from --data")
    e.add_argument("--harness-via", choices=["hf", "serve"], default="hf",
                   help="lm-eval backend: 'hf' on the HF export, or 'serve' (local-completions on our server)")
    e.add_argument("--harness-limit", type=int, default=None, help="documents per task at most")

    la = sub.add_parser("launch", help="write cluster launch scripts (SLURM sbatch / torchrun)")
    la.add_argument("target", choices=["slurm"], help="what to write")
    la.add_argument("--config", type=Path, required=True, help="the run's YAML config")
    la.add_argument("--out", type=Path, default=Path("train.sbatch"), help="script to write")
    la.add_argument("--nodes", type=int, default=1, help="number of nodes")
    la.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node")
    la.add_argument("--run-dir", type=Path, help="run directory on the cluster (default runs/<config name>/)")
    la.add_argument("--strategy", default="ddp", help="ddp | fsdp | deepspeed_stage_1/2/3")
    la.add_argument("--partition", default="", help="SLURM partition")
    la.add_argument("--time", default="24:00:00", help="SLURM time limit")
    return parser


def cmd_generate(args: argparse.Namespace) -> int:
    from launch.generation import generate_text

    if args.temperature < 0:
        raise ConfigError(f"--temperature: must be >= 0, got {args.temperature}")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens: must be >= 1, got {args.max_new_tokens}")
    text = generate_text(args.model, args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    print(args.prompt + text)
    return 0


def cmd_models() -> int:
    from models.presets import format_table

    print(format_table())
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from launch.serve import serve_main

    if args.max_batch < 1:
        raise ConfigError(f"--max-batch: must be >= 1, got {args.max_batch}")
    serve_main(str(args.model), host=args.host, port=args.port, model_name=args.model_name, api_key=args.api_key,
               max_batch=args.max_batch)
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    from launch.config import build_dataclass, parse_overrides
    from train.eval import EvalConfig, run_eval

    raw = parse_overrides(overrides)
    unknown = [k for k in raw if k != "eval"]
    if unknown:
        raise ConfigError(f"eval: unknown option section '{unknown[0]}' (options look like --eval.key=value)")
    cfg = build_dataclass(EvalConfig, raw.get("eval", {}), "eval")
    if args.data is not None and not args.data.exists():
        raise ConfigError(f"--data: {args.data} does not exist")
    if not args.model.exists():
        raise ConfigError(f"--model: {args.model} does not exist")
    out = args.out or ((args.model if args.model.is_dir() else args.model.parent) / "eval.json")
    if args.harness is not None:
        from launch.harness import run_harness

        tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
        if not tasks:
            raise ConfigError("--harness: name at least one task")
        if args.harness_limit is not None and args.harness_limit < 1:
            raise ConfigError(f"--harness-limit: must be >= 1, got {args.harness_limit}")
        hout = out.parent / f"harness-{args.harness_via}.json"
        res = run_harness(args.model, tasks, args.harness_via, hout, data=args.data, limit=args.harness_limit)
        print(json.dumps(res["results"], indent=2))
        print(f"wrote {hout}")
        return 0
    if args.data is None:
        raise ConfigError("eval: --data is required (held-out text), unless --harness is given")
    result = run_eval(cfg, args.model, args.data, out)
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict))}, indent=2))
    print(f"wrote {out}")
    return 0


def cmd_launch(args: argparse.Namespace) -> int:
    from launch.slurm import write_sbatch

    if not args.config.is_file():
        raise ConfigError(f"config file not found: {args.config}")
    path = write_sbatch(args.config, args.out, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                        run_dir=args.run_dir, strategy=args.strategy, partition=args.partition, time_limit=args.time)
    print(f"wrote {path}")
    return 0


def dispatch(argv: list[str]) -> int:
    from launch import registry
    from launch.stage_commands import cmd_stage

    # Only build the (slow) per-section help when it will be shown.
    wants_help = any(a in ("-h", "--help") for a in argv)
    parser = build_parser(with_epilogs=wants_help)
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        if rest:
            raise ConfigError(f"unrecognized arguments: {' '.join(rest)} (see tinyfoundry --help)")
        parser.print_help()
        return 0
    stages = registry.stages()
    if rest and args.command not in (*stages, "run", "eval"):
        raise ConfigError(f"{args.command}: unrecognized arguments: {' '.join(rest)}")
    if args.command in stages:
        return (stages[args.command].command or cmd_stage)(args, rest)
    if args.command == "run":
        return cmd_stage(args, rest)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "models":
        return cmd_models()
    if args.command == "serve":
        return cmd_serve(args)
    if args.command == "eval":
        return cmd_eval(args, rest)
    if args.command == "launch":
        return cmd_launch(args)
    parser.error(f"unknown command {args.command}")
    return 2


def main(argv: list[str] | None = None) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("TINYFOUNDRY_DEBUG") == "1"
    try:
        return dispatch(argv)
    except PrintedConfig:
        return 0
    except KeyboardInterrupt:
        print("tinyfoundry: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
        if debug:
            raise
        print(f"tinyfoundry: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        code = _known_failure(e)
        if code is None or debug:
            raise
        print(f"tinyfoundry: {'error: ' if code == 2 else ''}{_one_line(e)}", file=sys.stderr)
        return code


def _known_failure(e: BaseException) -> int | None:
    """Exit status for failures that deserve one line rather than a traceback."""
    from launch.stages import StageInterrupted

    if isinstance(e, StageInterrupted):
        return 130
    if type(e).__name__ == "NonFiniteLossError":  # train.system; not imported here to keep startup light
        return 3
    if isinstance(e, ValueError):
        # components raise ValueError for bad data (a missing text field, a vocab mismatch): one line, exit 2
        return 2
    return None


def _one_line(e: BaseException) -> str:
    if isinstance(e, FileNotFoundError) and e.filename:
        return f"file not found: {e.filename}"
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
