"""run_compress: the compress stage. Loads the trained model, runs the configured passes in order,
measures each and writes compressed/<pass>/ checkpoints, compressed/report.json and report.png.

Design and invariants
- Inputs arrive ready-made (models/ never reads shards): val tokens as a 1-D LongTensor, bytes per
  token as a float, and recovery training as a callable `recover(student, teacher) -> student` (train's
  recipe, train/recover.py, wired by the compress stage; teacher None means plain recovery). Without `recover`,
  pruning passes run without recovery and the report says so.
- Calibration and evaluation tokens are disjoint when the val split is long enough: the first
  `num_eval_tokens` are scored, calibration windows come from the tokens after them (else from the
  end of the split, and the report notes the overlap).
- Calibration data from another tokenizer is refused: ids must be < vocab_size, and when the caller
  passes the shards' tokenizer hash it must equal the hash of the model dir's tokenizer.json.
- Each pass's output is complete or absent: its files are written atomically, compression.json last.
  report.json is rewritten after every pass, so an interrupted stage still reports what it finished.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from models.compress.calibration import windows
from models.compress.config import CompressConfig, PassConfig
from models.compress.passes import PassContext
from models.compress.prune import sparsity_of
from models.compress.quantize import QTensor
from models.compress.report import eval_bpb, mark_pareto, sample, tokens_per_s, write_plot
from models.compress.storage import (
    atomic_write_json,
    dir_weight_bytes,
    load_compressed,
    save_compressed,
)
from models.hashing import file_sha256
from models.transformer import Transformer

Recover = Callable[[nn.Module, nn.Module | None], nn.Module]


def check_tokens(
    val_tokens: torch.Tensor, vocab_size: int, tokenizer_file: Path | None, tokenizer_sha256: str | None
) -> None:
    """Refuse token ids the model cannot embed, or tokens made by a different tokenizer."""
    if not isinstance(val_tokens, torch.Tensor) or val_tokens.ndim != 1:
        raise ValueError(f"val_tokens: must be a 1-D LongTensor, got {type(val_tokens).__name__}"
                         f"{tuple(getattr(val_tokens, 'shape', ()))}")
    if val_tokens.numel() and (int(val_tokens.max()) >= vocab_size or int(val_tokens.min()) < 0):
        raise ValueError(
            f"val_tokens: ids must lie in [0, vocab_size={vocab_size}) — made with a different tokenizer? "
            f"got ids in [{int(val_tokens.min())}, {int(val_tokens.max())}]"
        )
    if tokenizer_sha256 and tokenizer_file is not None and Path(tokenizer_file).is_file():
        have = file_sha256(Path(tokenizer_file))
        if have != tokenizer_sha256:
            raise ValueError(
                f"val_tokens: made with a different tokenizer (shards' tokenizer sha256 {tokenizer_sha256[:12]}…, "
                f"model's {Path(tokenizer_file)} {have[:12]}…), got mismatched calibration data"
            )


@torch.no_grad()
def quantize_model(model: Transformer, p: PassConfig, calib_NT: torch.Tensor | None, batch_size: int) -> dict[str, QTensor]:
    """Quantize in place with pass `p` (weights replaced by their dequantized values); returns the codes by name."""
    ctx = PassContext(calib_NT if calib_NT is not None else torch.zeros(0, 1, dtype=torch.long), batch_size, model)
    return p.build().apply(model, ctx).qtensors


def _count(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(t.numel() for t in params), sum(int((t != 0).sum()) for t in params)


@dataclasses.dataclass
class _Measure:
    """What every model (baseline and each pass) is measured on: the same scored tokens, prompt and probes."""

    cfg: CompressConfig
    eval_tokens: torch.Tensor
    eval_seq: int
    prompt: list[int]
    bytes_per_token: float
    tokenizer_file: Path | None
    probe: Callable[[nn.Module], dict] | None

    def bpb(self, model: nn.Module) -> float:
        return eval_bpb(model, self.eval_tokens, self.bytes_per_token, self.eval_seq, self.cfg.batch_size)

    def __call__(self, model: nn.Module, speed_model: nn.Module | None = None) -> dict:
        cfg = self.cfg
        params, nonzero = _count(model)
        probes = {"probes": self.probe(speed_model or model)} if self.probe is not None and cfg.probes else {}
        return {
            **probes,
            "params": params,
            "nonzero_params": nonzero,
            "val_bpb": self.bpb(model),
            "tokens_per_s": tokens_per_s(speed_model or model, self.prompt, cfg.num_gen_tokens,
                                         cfg.gen_batch_size),
            "sample": sample(model, self.prompt, cfg.num_sample_tokens, self.tokenizer_file),
        }


def _split_tokens(
    cfg: CompressConfig, val_tokens: torch.Tensor, max_seq_len: int
) -> tuple[torch.Tensor, int, torch.Tensor, list[int], list[str]]:
    """Scored tokens first, calibration windows from the tokens after them (else the split's end, noted)."""
    eval_seq = min(cfg.eval_seq_len or max_seq_len, max_seq_len)
    calib_seq = min(cfg.calib_seq_len, max_seq_len)
    eval_tokens = val_tokens[: cfg.num_eval_tokens]
    notes: list[str] = []
    rest = val_tokens[eval_tokens.numel():]
    if rest.numel() >= min(cfg.num_calib_tokens, 8 * calib_seq):
        calib_src = rest
    else:
        calib_src = val_tokens[-cfg.num_calib_tokens:]
        notes.append("calibration tokens overlap the scored tokens (val split too short)")
    calib_NT = windows(calib_src, calib_seq, cfg.num_calib_tokens)
    prompt = val_tokens[: cfg.num_prompt_tokens].tolist()
    return eval_tokens, eval_seq, calib_NT, prompt, notes


def _measure_baseline(model_dir: Path, base_model: Transformer, measure: _Measure) -> dict:
    t0 = time.perf_counter()
    baseline = {"name": "baseline", "method": "fp32", "model_dir": str(model_dir),
                "bytes": dir_weight_bytes(model_dir), "sparsity": sparsity_of(base_model), **measure(base_model)}
    if baseline["bytes"] == 0:  # e.g. a Lightning .ckpt: the fp32 safetensors size it would have
        baseline["bytes"] = sum(t.numel() * 4 for t in base_model.state_dict().values())
    baseline["wall_s"] = round(time.perf_counter() - t0, 2)
    return baseline


def _run_pass(
    p: PassConfig,
    teacher: nn.Module,
    calib_NT: torch.Tensor,
    recover: Recover | None,
    pass_dir: Path,
    tokenizer_file: Path | None,
    measure: _Measure,
) -> tuple[nn.Module, dict]:
    """Apply one pass to a copy of its input, write pass_dir and measure it; returns (model, report entry)."""
    method = p.build()
    pass_info = {"name": p.name, "method": p.method, "input": p.input, "gguf_type": method.gguf_type(),
                 **p.as_options()}
    entry: dict = {"name": p.name, "method": p.method, "input": p.input, "options": p.as_options(),
                   "gguf_type": method.gguf_type(), "exports": list(method.exports)}
    ctx = PassContext(calib_NT, measure.cfg.batch_size, teacher, recover, measure.bpb)
    out = method.apply(copy.deepcopy(teacher), ctx)
    model = out.model.eval()
    entry.update(out.info)
    if out.qtensors:
        save_compressed(pass_dir, model, out.qtensors, tokenizer_file, pass_info)
        runtime = getattr(p.options, "runtime", "dequant")
        speed_model, _ = load_compressed(pass_dir, runtime=runtime)
        entry["runtime"] = getattr(speed_model, "compress_runtime", "dequant")
        entry["quantized_tensors"] = len(out.qtensors)
    else:
        _save_plain(pass_dir, model, tokenizer_file, pass_info)
        speed_model = model
    entry.update(
        bytes=dir_weight_bytes(pass_dir), sparsity=sparsity_of(model), **measure(model, speed_model),
    )
    return model, entry


def run_compress(
    cfg: CompressConfig,
    model_dir: Path,
    val_tokens: torch.Tensor,
    bytes_per_token: float,
    out_dir: Path,
    recover: Recover | None = None,
    tokenizer_sha256: str | None = None,
    probe: Callable[[nn.Module], dict] | None = None,
) -> dict:
    """Run every pass of `cfg` on the model in `model_dir`; returns (and writes) the report dict.

    `probe(model) -> {metric: value}`, when given (train.eval's story-quality and fairness probes, wired by the
    caller since models/ may not import train/), is recorded for the baseline and every pass, so the report shows
    how each compression shifts those behaviours and not only bits-per-byte."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if not bytes_per_token > 0:
        raise ValueError(f"bytes_per_token: must be positive, got {bytes_per_token}")
    base_model, tokenizer_file = load_compressed(model_dir)
    base_model.eval()
    mcfg = base_model.cfg
    check_tokens(val_tokens, mcfg.vocab_size, tokenizer_file, tokenizer_sha256)
    val_tokens = val_tokens.long().cpu()
    eval_tokens, eval_seq, calib_NT, prompt, notes = _split_tokens(cfg, val_tokens, mcfg.max_seq_len)
    measure = _Measure(cfg, eval_tokens, eval_seq, prompt, bytes_per_token, tokenizer_file, probe)

    baseline = _measure_baseline(model_dir, base_model, measure)
    report: dict = {
        "baseline": baseline,
        "passes": [],
        "bytes_per_token": bytes_per_token,
        "num_eval_tokens": int(eval_tokens.numel() // eval_seq * eval_seq),
        "eval_seq_len": eval_seq,
        "num_calib_tokens": int(calib_NT.numel()),
        "notes": notes,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    models: dict[str, nn.Module] = {"baseline": base_model}
    bpbs: dict[str, float] = {"baseline": baseline["val_bpb"]}
    for p in cfg.passes:
        t0 = time.perf_counter()
        model, entry = _run_pass(p, models[p.input], calib_NT, recover, out_dir / p.name, tokenizer_file,
                                 measure)
        models[p.name] = model
        bpbs[p.name] = entry["val_bpb"]
        entry["val_bpb_before"] = bpbs[p.input]
        entry["bpb_increase_pct"] = 100.0 * (entry["val_bpb"] / baseline["val_bpb"] - 1.0)
        entry["size_ratio"] = baseline["bytes"] / max(entry["bytes"], 1)
        entry["speedup"] = entry["tokens_per_s"] / max(baseline["tokens_per_s"], 1e-9)
        entry["wall_s"] = round(time.perf_counter() - t0, 2)
        report["passes"].append(entry)
        mark_pareto([baseline, *report["passes"]])
        atomic_write_json(out_dir / "report.json", report)
    atomic_write_json(out_dir / "report.json", report)
    if cfg.plot:
        write_plot(report, out_dir / "report.png")
    return report


def _save_plain(path: Path, model: Transformer, tokenizer_file: Path | None, pass_info: dict) -> None:
    """A pruned model is an ordinary model dir (models.save_model_dir), marked with compression.json."""
    from models import save_model_dir

    path.mkdir(parents=True, exist_ok=True)
    (path / "compression.json").unlink(missing_ok=True)
    save_model_dir(path, model, tokenizer_file=tokenizer_file, extra={"compression": pass_info})
    atomic_write_json(
        path / "compression.json",
        {"format": "tinyfoundry-compressed", "version": 1, "pass": pass_info, "quantized": {}},
    )
