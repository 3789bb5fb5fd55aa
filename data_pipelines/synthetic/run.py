"""`run_synth`: prompts -> teacher -> quality gates -> parquet + stats.json.

Design
- Prompts are drawn by index (see prompts.py), so the run is deterministic for a seed and shard
  i of n takes the indices congruent to i mod n. Requests go to the teacher in batches; the loop
  stops when `num_stories` (this shard's share) are kept or `num_stories * max_attempts_factor`
  prompts were tried.
- Outputs are written atomically (temp file + os.replace) only at the end: `synth-*.parquet`
  (text, words, features, teacher, model, prompt, id, summary, plot), `rejected/rejected-*.parquet`
  (the same plus `reason`) and `stats.json`. A killed run leaves no final-named half file; a model
  teacher's journal (journal.jsonl) makes the rerun skip prompts already answered.
- Progress: a tqdm bar on stderr counting kept stories, with stories/s and acceptance.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import SynthConfig
from .gates import REASONS, QualityGates
from .prompts import PromptBuilder, instruct_text
from .teacher_registry import teacher_backend
from .teachers import make_teacher
from .vocab import Vocabulary

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.string()),
    ("words", pa.list_(pa.string())),
    ("features", pa.list_(pa.string())),
    ("teacher", pa.string()),
    ("model", pa.string()),
    ("prompt", pa.string()),
    ("summary", pa.string()),
])
REJECTED_SCHEMA = SCHEMA.append(pa.field("reason", pa.string()))


def _atomic_parquet(rows: list[dict[str, Any]], schema: pa.Schema, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # column-wise (Table.from_pylist would import pandas: seconds of start-up for nothing)
    table = pa.table({f.name: pa.array([r[f.name] for r in rows], type=f.type) for f in schema}, schema=schema)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _atomic_json(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _fallback_summary(story: str) -> str:
    first = story.strip().split("\n")[0]
    for end in (". ", "! ", "? "):
        if end in first:
            first = first[: first.index(end) + 1]
            break
    return first


@dataclass
class _Tally:
    """What the loop kept, rejected and why (one shard)."""

    target: int
    kept: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    story_words: list[int] = field(default_factory=list)
    num_candidates: int = 0
    cand_reasons: Counter[str] = field(default_factory=Counter)
    tried: int = 0

    @property
    def done(self) -> bool:
        return len(self.kept) >= self.target


def _pick_candidates(cfg: SynthConfig, gates: QualityGates, reqs: list[Any], answers: list[Any], tally: _Tally) -> None:
    """Best-of-n answers: the gates and the scorer pick one candidate per request (in place)."""
    for j, (req, ans) in enumerate(zip(reqs, answers)):
        if ans.candidates:
            k, whys = gates.choose(req, [(c.text, c.finish_reason, c.score) for c in ans.candidates],
                                   by_score=cfg.openai.scorer == "logprob")
            answers[j] = ans.candidates[k]
            tally.num_candidates += len(whys)
            tally.cand_reasons.update(w or "passed" for w in whys)


def _judge_batch(cfg: SynthConfig, gates: QualityGates, teacher: Any, reqs: list[Any], tally: _Tally, bar: Any) -> None:
    """Ask the teacher for one batch, gate the answers, and add them to `tally` until the target is met."""
    answers = teacher.generate(reqs)
    _pick_candidates(cfg, gates, reqs, answers, tally)
    verdicts = gates.check_batch(reqs, [a.text for a in answers], [a.finish_reason for a in answers])
    for req, ans, why in zip(reqs, answers, verdicts):
        if tally.done:
            break  # the rest of the batch was not needed: not counted as tried
        tally.tried += 1
        story = ans.text or ""
        summary = ans.summary or (_fallback_summary(story) if story else "")
        row = {
            "id": req.id,
            "text": instruct_text(req, story, summary) if cfg.instruct_format else story,
            "words": req.words,
            "features": list(req.features),
            "teacher": teacher.name,
            "model": teacher.model,
            "prompt": req.full_prompt,
            "summary": summary,
        }
        if why is None:
            tally.kept.append(row)
            tally.story_words.append(len(story.split()))
            bar.update(1)
        else:
            tally.reasons[why] += 1
            tally.rejected.append(row | {"reason": why})


def _generate(cfg: SynthConfig, out_dir: Path, seed: int, shard_i: int, shard_n: int, tally: _Tally,
              vocab: Vocabulary) -> Any:
    """The prompt -> teacher -> gates loop; returns the (closed) teacher for its name and counters."""
    max_prompts = max(tally.target, int(tally.target * cfg.max_attempts_factor))
    builder = PromptBuilder(cfg, vocab, seed)
    gates = QualityGates(cfg.gates, vocab)
    journal_name = "journal.jsonl" if shard_n == 1 else f"journal-{shard_i:05d}.jsonl"
    backend = teacher_backend(cfg.teacher)
    teacher = make_teacher(cfg, out_dir / journal_name, seed)
    batch_size = backend.batch_size(cfg)
    next_k = 0  # k-th prompt of this shard -> global index shard_i + k * shard_n
    bar = tqdm(total=tally.target, desc=f"synth[{cfg.teacher}]", unit="story", file=sys.stderr,
               dynamic_ncols=True, disable=None)
    try:
        while not tally.done and tally.tried < max_prompts:
            n = min(batch_size, max_prompts - tally.tried)
            if backend.journaled:  # a model's answers cost: ask for about what is still needed
                n = min(n, tally.target - len(tally.kept))
            reqs = [builder.build(shard_i + (next_k + j) * shard_n) for j in range(n)]
            next_k += n
            _judge_batch(cfg, gates, teacher, reqs, tally, bar)
            bar.set_postfix(accept=f"{len(tally.kept) / max(1, tally.tried):.0%}", tried=tally.tried, refresh=False)
    finally:
        bar.close()
        teacher.close()
    return teacher


def _write_outputs(cfg: SynthConfig, out_dir: Path, shard_i: int, shard_n: int, tally: _Tally) -> list[str]:
    """Kept stories as `synth[-<shard>]-NNNNN.parquet` (stale ones removed), rejected ones under rejected/."""
    per_file = cfg.stories_per_file
    prefix = f"synth-{shard_i:05d}" if shard_n > 1 else "synth"
    files = []
    for k in range(0, max(1, len(tally.kept)), per_file):
        path = out_dir / f"{prefix}-{k // per_file:05d}.parquet"
        _atomic_parquet(tally.kept[k : k + per_file], SCHEMA, path)
        files.append(path.name)
    for stale in out_dir.glob(f"{prefix}-*.parquet"):  # left by an earlier, larger run
        if stale.name not in files and (shard_n > 1 or stale.name.count("-") == 1):
            stale.unlink()
    rejected_path = out_dir / "rejected" / f"rejected-{shard_i:05d}.parquet"
    if tally.rejected:
        _atomic_parquet(tally.rejected, REJECTED_SCHEMA, rejected_path)
    elif rejected_path.exists():
        rejected_path.unlink()
    return files


def _stats(cfg: SynthConfig, teacher: Any, seed: int, shard: tuple[int, int], tally: _Tally, files: list[str],
           vocab_size: int, wall: float) -> dict[str, Any]:
    words, reasons, cand = tally.story_words, tally.reasons, tally.cand_reasons
    kept, tried = tally.kept, tally.tried
    return {
        "teacher": teacher.name,
        "model": teacher.model,
        "seed": seed,
        "shard": list(shard),
        "num_prompts": tried,
        "num_accepted": len(kept),
        "num_rejected": sum(reasons.values()),
        "acceptance": len(kept) / tried if tried else 0.0,
        "rejected": {r: reasons[r] for r in REASONS if reasons[r]},
        "candidates": ({"asked": tally.num_candidates, "passed": cand["passed"],
                        "rejected": {r: cand[r] for r in REASONS if cand[r]}}
                       if tally.num_candidates else None),
        "num_replayed_from_journal": getattr(teacher, "num_replayed", 0),
        "num_retries": getattr(teacher, "num_retries", 0),
        "features": dict(Counter(f for r in kept for f in r["features"])),
        "words_mean": sum(words) / len(words) if words else 0.0,
        "words_min": min(words, default=0),
        "words_max": max(words, default=0),
        "vocabulary_size": vocab_size,
        "instruct_format": cfg.instruct_format,
        "files": files,
        "wall_s": wall,
        "stories_per_s": len(kept) / wall if wall > 0 else 0.0,
        "complete": tally.done,
    }


def run_synth(cfg: SynthConfig, out_dir: Path, seed: int, shard: tuple[int, int] | None = None) -> dict:
    """Write `num_stories` gated stories to out_dir/*.parquet and return the stats (also stats.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shard_i, shard_n = shard or (0, 1)
    if not 0 <= shard_i < shard_n:
        raise ValueError(f"shard: need 0 <= i < n, got {shard}")
    tally = _Tally(target=cfg.num_stories // shard_n + (1 if shard_i < cfg.num_stories % shard_n else 0))
    t0 = time.time()
    vocab = Vocabulary.load(
        Path(cfg.nouns_file) if cfg.nouns_file else None,
        Path(cfg.verbs_file) if cfg.verbs_file else None,
        Path(cfg.adjectives_file) if cfg.adjectives_file else None,
    )
    teacher = _generate(cfg, out_dir, seed, shard_i, shard_n, tally, vocab)
    files = _write_outputs(cfg, out_dir, shard_i, shard_n, tally)
    stats = _stats(cfg, teacher, seed, (shard_i, shard_n), tally, files, len(vocab), time.time() - t0)
    if cfg.reference and tally.kept:  # the corpus's quality measure: what a student trained on it scores on real stories
        from .transfer import transfer_score

        # the bare stories (an Instruct-format text ends with "Story: <story>")
        plain = [r["text"].split("\nStory: ", 1)[-1] for r in tally.kept]
        stats["transfer"] = transfer_score(plain, Path(cfg.reference), cfg.reference_tokens, seed=seed)
    stats_name = "stats.json" if shard_n == 1 else f"stats-{shard_i:05d}.json"
    _atomic_json(stats, out_dir / stats_name)
    if not tally.done:
        print(f"synth: kept only {len(tally.kept)}/{tally.target} stories after {tally.tried} prompts; "
              f"rejections: {dict(tally.reasons)}", file=sys.stderr)
    return stats
