"""`tinyfoundry eval`: one model (checkpoint, model dir, compressed model or export) -> eval.json.

Design and invariants
- The model is loaded by the models room (`models.load_model`: model dir, HF export dir or Lightning .ckpt);
  a compressed model by `models.compress.load_compressed` when the path holds one. Evaluation code never
  reads weights itself, so every format the models room supports is evaluated the same way.
- The tokenizer is the `tokenizer.json` that travels with the model (in the model dir, beside it, or in the
  run directory's `tokenizer/`), loaded with `tokenizers.Tokenizer.from_file`.
- eval.json holds: loss (nats/token, bits per byte and the counts), probe metrics (flat scalars) with the
  fairness detail and a few sample generations, the judge's summary (never the API key), the config, and
  wall time. It is written atomically (temp file + os.replace).
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from models.tokenizer_lookup import require_tokenizer
from train.eval.config import EvalConfig
from train.eval.loss import evaluate_loss, read_documents
from train.eval.probes import _max_seq_len, run_probes


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: cuda requested but not available, got {name!r}")
    return torch.device(name)


def find_tokenizer(model_path: Path, hint: Path | str | None = None) -> Path:
    """tokenizer.json in/next to the model (models/tokenizer_lookup.py's order); ValueError naming where it looked."""
    return require_tokenizer(model_path, hint)


def _is_compressed(path: Path) -> bool:
    try:
        from models.compress import is_compressed_dir
    except ImportError:
        return False
    return path.is_dir() and bool(is_compressed_dir(path))


def load_for_eval(model_path: Path, device: torch.device) -> tuple[torch.nn.Module, Any, Path]:
    """(model in eval mode on `device`, tokenizers.Tokenizer, tokenizer path) for any supported model format."""
    from tokenizers import Tokenizer

    model_path = Path(model_path)
    if not model_path.exists():
        raise ValueError(f"model: no such file or directory {model_path}")
    tok_hint = None
    if _is_compressed(model_path):
        from models.compress import load_compressed

        loaded = load_compressed(model_path, device="cpu", dtype=torch.float32)
    else:
        from models import load_model

        loaded = load_model(model_path, device="cpu", dtype=torch.float32)
    if isinstance(loaded, tuple):
        model, tok_hint = loaded[0], (loaded[1] if len(loaded) > 1 else None)
    else:
        model = loaded
    tok_path = find_tokenizer(model_path, tok_hint)
    model = model.to(device).eval()
    return model, Tokenizer.from_file(str(tok_path)), tok_path


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and o != o:
        return None
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def _clean(o: Any) -> Any:
    """NaN -> None recursively (JSON has no NaN)."""
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_clean(v) for v in o]
    return o


def evaluate_model(
    cfg: EvalConfig, model: torch.nn.Module, tokenizer: Any, docs: list[str] | None, device: torch.device,
    progress: bool = True,
) -> dict[str, Any]:
    """Loss/bpb (when docs are given), probes and the optional judge on an already loaded model."""
    result: dict[str, Any] = {}
    if docs is not None:
        seq_len = cfg.seq_len or _max_seq_len(model) or 512
        result["loss"] = evaluate_loss(model, tokenizer, docs, seq_len, cfg.batch_size, cfg.num_docs,
                                       cfg.max_tokens, device, progress)
    if cfg.probes.enabled or cfg.judge.enabled:
        pr = run_probes(model, tokenizer, cfg.probes, device, progress)
        gens = pr["generations"]
        result["probes"] = pr["metrics"] if cfg.probes.enabled else {}
        result["fairness"] = pr["fairness"] if cfg.probes.enabled else {}
        mixed = [g for pair in zip(gens["story"], gens["word"]) for g in pair] + gens["fairness"]
        result["samples"] = [{"prompt": g["prompt"], "text": g["text"]} for g in mixed[: cfg.num_saved_samples]]
        if cfg.judge.enabled:
            from train.eval.judge import judge_stories

            result["judge"] = judge_stories(cfg.judge, [(g["prompt"], g["text"]) for g in gens["story"]])
    return result


def run_eval(
    cfg: EvalConfig, model_path: Path, data_path: Path | list[Path] | None, out_path: Path
) -> dict[str, Any]:
    """Evaluate one model on held-out text; writes eval.json (out_path itself if it ends in .json, else inside it)."""
    t0 = time.time()
    device = resolve_device(cfg.device)
    model, tokenizer, tok_path = load_for_eval(Path(model_path), device)
    paths = [] if data_path is None else ([data_path] if isinstance(data_path, (str, Path)) else list(data_path))
    docs = read_documents([Path(p) for p in paths], cfg.text_field) if paths else None
    result = {
        "model": str(model_path),
        "tokenizer": str(tok_path),
        "data": [str(p) for p in paths],
        **evaluate_model(cfg, model, tokenizer, docs, device),
        "config": dataclasses.asdict(cfg),
        "device": str(device),
        "wall_s": round(time.time() - t0, 2),
    }
    result = _clean(result)
    out_path = Path(out_path)
    target = out_path if out_path.suffix == ".json" else out_path / "eval.json"
    write_json_atomic(target, result)
    return result
