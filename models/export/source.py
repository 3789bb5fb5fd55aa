"""Which weights an export ships: `export.source` resolved against the compress stage's report.

- `final`: the trained model (`checkpoints/final`).
- `best`: the smallest pass (bytes on disk) whose held-out bpb is within `max_bpb_increase` (a fraction: 0.02 =
  +2%) of the baseline's, as compress measured them; the trained model when no pass qualifies.
- any other word: the pass of that name (`compressed/<name>/`).
A quantized pass also names the full-precision model it started from (`input` in its compression.json): the
GGUF types that are not the pass's own grid are made from that model, never by re-rounding the pass's weights.
"""

from __future__ import annotations

import json
from pathlib import Path


def resolve_source(source: str, final_dir: Path, compressed_dir: Path, max_bpb_increase: float) -> tuple[Path, str]:
    """-> (model dir, label for the report). Unknown names raise ValueError naming export.source."""
    if source == "final":
        return Path(final_dir), "final"
    report_path = Path(compressed_dir) / "report.json"
    if not report_path.is_file():
        raise ValueError(f"export.source: {source!r} needs the compress stage's {report_path} "
                         f"(run compress first, or use export.source: final)")
    report = json.loads(report_path.read_text())
    passes = report.get("passes", [])
    if source == "best":
        limit = report["baseline"]["val_bpb"] * (1.0 + max_bpb_increase)
        ok = [p for p in passes if p["val_bpb"] <= limit]
        if not ok:
            return Path(final_dir), f"final (no pass within +{max_bpb_increase:.1%} bpb)"
        best = min(ok, key=lambda p: (p["bytes"], p["val_bpb"]))
        return Path(compressed_dir) / best["name"], best["name"]
    names = [p["name"] for p in passes]
    if source not in names:
        raise ValueError(f"export.source: no pass named {source!r} in {report_path} "
                         f"(choose final, best or one of: {', '.join(names) or 'none'})")
    return Path(compressed_dir) / source, source


def pass_info(model_dir: Path) -> dict:
    """compression.json's `pass` entry of a compressed dir ({} for a plain model dir)."""
    f = Path(model_dir) / "compression.json"
    if not f.is_file():
        return {}
    return json.loads(f.read_text()).get("pass", {})


def full_precision_input(model_dir: Path) -> Path | None:
    """The full-precision model a quantized pass started from: a sibling pass, or the compress baseline."""
    model_dir = Path(model_dir)
    info = pass_info(model_dir)
    src = info.get("input")
    if not src:
        return None
    if src != "baseline":
        return model_dir.parent / src
    report = model_dir.parent / "report.json"
    if report.is_file():
        base = json.loads(report.read_text()).get("baseline", {}).get("model_dir")
        if base and Path(base).exists():
            return Path(base)
    final = model_dir.parent.parent / "checkpoints" / "final"
    return final if final.is_dir() else None
