"""The curation runner: shards, workers, resume, cross-shard dedup, outputs and stats.

Design
------
Two phases, so that a scheduler can fan the expensive part out and dedup still sees everything:

1. **Shard** ``i`` of ``n`` (parallel over cores with a process pool): read its documents, run every
   per-document step in order (transforms and filters), and for the survivors compute the dedup
   keys (exact hash, MinHash band keys). Survivors and keys go to ``.work/<run>/shard-i/``; filtered
   documents go there too, with their reason. A ``done.json`` written last marks the shard finished.
2. **Finalize** (once every shard is done; whoever finishes last, or any later call): walk shards in
   order and documents in order through the exact and MinHash tables, so the first copy wins across
   shards, then write ``part-*.parquet``, ``dropped/*.parquet``, ``stats.json``, ``report.md`` + PNGs.

Sharding: with at least ``n`` input files, shard ``i`` takes files ``i, i+n, ...``; with fewer, every
shard reads every file and takes documents ``i, i+n, ...`` (so one big file still fans out).

Resume: ``<run>`` is a hash of the config's data-affecting fields, the resolved input list, and the
inputs' sizes and mtimes, plus ``n``; a rerun with the same run skips shards with ``done.json``
and, if finalized, returns the recorded stats. Changed inputs or config give a new ``<run>``, so stale
records are never reused. Every file is written to a temp name and ``os.replace``d.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from .config import CurateConfig
from .dedup import ExactDeduper, MinHashDeduper
from .documents import Document
from .filters import STEP_CLASSES
from .readers import ReaderOptions, ReadStats, read_source, resolve_inputs

DEDUP_STEPS = ("exact_dedup", "minhash")
MAX_SCORES_PER_SHARD = 50_000
_EXAMPLES_PER_REASON = 3


class CurateError(ValueError):
    """Curation cannot produce a dataset (no input documents, or every document dropped)."""


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _atomic_write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as a parquet file (atomic). Metadata that arrow cannot type goes to one JSON column."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        fixed = ("id", "text", "source", "reason", "dup_of")
        rows = [
            {
                **{k: r[k] for k in fixed if k in r},
                "metadata": json.dumps({k: v for k, v in r.items() if k not in fixed}, default=str),
            }
            for r in rows
        ]
        table = pa.Table.from_pylist(rows)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _doc_row(doc: Document) -> dict[str, Any]:
    return {"id": doc.id, "text": doc.text, **doc.metadata, "source": doc.source}


def _fingerprint(cfg: CurateConfig, sources: list[str], num_shards: int) -> str:
    d = cfg.to_dict()
    for k in ("inputs", "num_workers", "batch_size", "plots"):
        d.pop(k, None)
    stamp = []
    for s in sources:
        try:
            st = os.stat(s)
            stamp.append([s, st.st_size, int(st.st_mtime)])
        except OSError:
            stamp.append([s, None, None])
    blob = json.dumps({"cfg": d, "sources": stamp, "n": num_shards}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
class DocProcessor:
    """Runs the per-document steps of one config and computes dedup keys (one per process)."""

    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        names = [s for s in cfg.resolved_steps if s not in DEDUP_STEPS]
        self.steps = [(name, STEP_CLASSES[name](getattr(cfg, name))) for name in names]
        steps = cfg.resolved_steps
        self.exact = ExactDeduper(cfg.exact_dedup.normalize) if "exact_dedup" in steps else None
        m = cfg.minhash
        self.minhash = (
            MinHashDeduper(m.ngram, m.num_bands, m.rows_per_band, m.seed) if "minhash" in steps else None
        )

    def pop_pii_counts(self) -> dict[str, int]:
        """Redactions since the last call."""
        for name, step in self.steps:
            if name == "pii":
                counts = dict(step.counts)
                step.counts.clear()
                return counts
        return {}

    def process(self, docs: list[Document]) -> dict[str, Any]:
        """Kept docs (+ keys), dropped docs (+ reason), scores; texts after every transform."""
        kept: list[Document] = []
        dropped: list[tuple[Document, str, str]] = []
        scores: list[tuple[dict[str, float], bool]] = []
        for doc in docs:
            reason = step_name = None
            for name, step in self.steps:
                reason = step(doc)
                if reason is not None:
                    step_name = name
                    break
            scores.append((doc.scores, reason is None))
            if reason is None:
                kept.append(doc)
            else:
                dropped.append((doc, reason, step_name or ""))
        exact_keys = [self.exact.key(d.text) for d in kept] if self.exact is not None else None
        band_keys = self.minhash.band_keys([d.text for d in kept]) if self.minhash is not None else None
        return {"kept": kept, "dropped": dropped, "scores": scores, "exact": exact_keys, "bands": band_keys}


_WORKER: DocProcessor | None = None


def _init_worker(cfg: CurateConfig) -> None:
    global _WORKER
    _WORKER = DocProcessor(cfg)


def _work(docs: list[Document]) -> dict[str, Any]:
    assert _WORKER is not None
    out = _WORKER.process(docs)
    out["pii"] = _WORKER.pop_pii_counts()
    return out


# ---------------------------------------------------------------------------------------------
# shard phase
# ---------------------------------------------------------------------------------------------
def _shard_documents(
    sources: list[str],
    shard: int,
    num_shards: int,
    opts: ReaderOptions,
    stats: ReadStats,
    counter: dict[str, int],
) -> Iterator[Document]:
    by_file = len(sources) >= num_shards
    mine = sources[shard::num_shards] if by_file else sources
    index = 0
    for source in mine:
        for doc in read_source(source, opts, stats):
            take = by_file or index % num_shards == shard
            index += 1
            if take:
                counter["bytes_in"] += len(doc.text.encode("utf-8", "surrogatepass"))
                yield doc


def _batches(it: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in it:
        batch.append(doc)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _bounded_imap(pool: Any, batches: Iterator[list[Document]], max_pending: int) -> Iterator[dict[str, Any]]:
    """Ordered results with at most `max_pending` batches in flight (Pool.imap would read the whole
    input ahead into its task queue)."""
    pending: deque[Any] = deque()
    for batch in batches:
        pending.append(pool.apply_async(_work, (batch,)))
        if len(pending) >= max_pending:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def _run_shard(
    cfg: CurateConfig, sources: list[str], shard: int, num_shards: int, shard_dir: Path
) -> dict[str, Any]:
    t0 = time.time()
    opts = ReaderOptions(cfg.text_field, cfg.id_field, cfg.separator, cfg.hf_split)
    read_stats = ReadStats()
    counter = {"bytes_in": 0}
    docs = _shard_documents(sources, shard, num_shards, opts, read_stats, counter)
    num_workers = cfg.resolved_num_workers

    if shard_dir.exists():
        shutil.rmtree(shard_dir)  # an unfinished earlier attempt
    shard_dir.mkdir(parents=True)
    kept_rows: list[dict[str, Any]] = []
    drop_rows: list[dict[str, Any]] = []
    kept_files: list[str] = []
    drop_files: list[str] = []
    exact_keys: list[int] = []
    band_keys: list[np.ndarray] = []
    dropped: Counter[str] = Counter()
    by_step: Counter[str] = Counter()
    examples: dict[str, list[dict[str, str]]] = {}
    scores: dict[str, dict[str, list[float]]] = {"kept": {}, "dropped": {}}
    pii: Counter[str] = Counter()
    docs_in = docs_kept = 0

    def flush_kept(final: bool = False) -> None:
        while len(kept_rows) >= cfg.num_docs_per_file or (final and kept_rows):
            name = f"kept-{len(kept_files):04d}.parquet"
            _write_parquet(shard_dir / name, kept_rows[: cfg.num_docs_per_file])
            kept_files.append(name)
            del kept_rows[: cfg.num_docs_per_file]

    def flush_dropped(final: bool = False) -> None:
        while len(drop_rows) >= cfg.num_docs_per_file or (final and drop_rows):
            name = f"dropped-{len(drop_files):04d}.parquet"
            _write_parquet(shard_dir / name, drop_rows[: cfg.num_docs_per_file])
            drop_files.append(name)
            del drop_rows[: cfg.num_docs_per_file]

    bar = tqdm(
        desc=f"curate shard {shard}/{num_shards}",
        unit="doc",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    pool = None
    try:
        batches = _batches(docs, cfg.batch_size)
        head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
        if num_workers > 1 and len(head) > 1:  # a single batch is not worth starting processes for
            pool = mp.get_context("spawn").Pool(
                num_workers, initializer=_init_worker, initargs=(cfg,)
            )
            results = _bounded_imap(pool, itertools.chain(head, batches), max_pending=2 * num_workers)
        else:
            _init_worker(cfg)
            results = map(_work, itertools.chain(head, batches))
        for res in results:
            n = len(res["kept"]) + len(res["dropped"])
            docs_in += n
            docs_kept += len(res["kept"])
            bar.update(n)
            pii.update(res["pii"])
            for sc, keep in res["scores"]:
                bucket = scores["kept" if keep else "dropped"]
                for k, v in sc.items():
                    lst = bucket.setdefault(k, [])
                    if len(lst) < MAX_SCORES_PER_SHARD:
                        lst.append(float(v))
            for doc in res["kept"]:
                kept_rows.append(_doc_row(doc))
            if res["exact"] is not None:
                exact_keys.extend(res["exact"])
            if res["bands"] is not None:
                band_keys.append(res["bands"])
            for doc, reason, step in res["dropped"]:
                dropped[reason] += 1
                by_step[step] += 1
                ex = examples.setdefault(reason, [])
                if len(ex) < _EXAMPLES_PER_REASON:
                    ex.append({"id": doc.id, "text": doc.text[:300]})
                if cfg.write_dropped:
                    drop_rows.append({**_doc_row(doc), "reason": reason})
            flush_kept()
            flush_dropped()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    flush_kept(final=True)
    flush_dropped(final=True)
    if exact_keys:
        ek = np.array([[k >> 64, k & ((1 << 64) - 1)] for k in exact_keys], dtype=np.uint64)
        np.save(shard_dir / "exact_keys.npy", ek)
    if band_keys:
        np.save(shard_dir / "band_keys.npy", np.concatenate(band_keys))
    record = {
        "shard": shard,
        "num_shards": num_shards,
        "docs_in": docs_in,
        "docs_kept": docs_kept,
        "bytes_in": counter["bytes_in"],
        "dropped": dict(dropped),
        "dropped_by_step": dict(by_step),
        "examples": examples,
        "read": read_stats.to_dict(),
        "pii_redactions": dict(pii),
        "kept_files": kept_files,
        "dropped_files": drop_files,
        "wall_s": round(time.time() - t0, 3),
        "num_workers": num_workers,
    }
    _atomic_write_json(shard_dir / "scores.json", scores)
    _atomic_write_json(shard_dir / "done.json", record)
    return record


# ---------------------------------------------------------------------------------------------
# finalize phase
# ---------------------------------------------------------------------------------------------
def _finalize(
    cfg: CurateConfig, run_dir: Path, out_dir: Path, num_shards: int, wall_s: float
) -> dict[str, Any]:
    from .report import write_report

    records = [json.loads((run_dir / f"shard-{s:05d}" / "done.json").read_text()) for s in range(num_shards)]
    steps = cfg.resolved_steps
    exact = ExactDeduper(cfg.exact_dedup.normalize) if "exact_dedup" in steps else None
    m = cfg.minhash
    mh = MinHashDeduper(m.ngram, m.num_bands, m.rows_per_band, m.seed) if "minhash" in steps else None
    dedup_order = [s for s in steps if s in DEDUP_STEPS]

    # clear outputs of an earlier run into this folder (they are replaced below)
    (out_dir / "dropped").mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("part-*.parquet")) + list((out_dir / "dropped").glob("*.parquet")):
        old.unlink()

    dropped: Counter[str] = Counter()
    by_step: Counter[str] = Counter()
    examples: dict[str, list[dict[str, str]]] = {}
    read = ReadStats()
    pii: Counter[str] = Counter()
    docs_in = docs_out = bytes_in = bytes_out = 0
    out_files: list[str] = []
    out_rows: list[dict[str, Any]] = []
    words_kept: list[float] = []

    def flush(final: bool = False) -> None:
        while len(out_rows) >= cfg.num_docs_per_file or (final and out_rows):
            name = f"part-{len(out_files):05d}.parquet"
            _write_parquet(out_dir / name, out_rows[: cfg.num_docs_per_file])
            out_files.append(name)
            del out_rows[: cfg.num_docs_per_file]

    for rec in records:
        s = rec["shard"]
        shard_dir = run_dir / f"shard-{s:05d}"
        docs_in += rec["docs_in"]
        bytes_in += rec["bytes_in"]
        dropped.update(rec["dropped"])
        by_step.update(rec["dropped_by_step"])
        for reason, ex in rec["examples"].items():
            examples.setdefault(reason, []).extend(ex[: _EXAMPLES_PER_REASON - len(examples.get(reason, []))])
        read.merge(rec["read"])
        pii.update(rec["pii_redactions"])
        for i, name in enumerate(rec["dropped_files"]):  # filtered docs: hard-link into place
            dst = out_dir / "dropped" / f"filtered-{s:05d}-{i:04d}.parquet"
            try:
                os.link(shard_dir / name, dst)
            except OSError:
                shutil.copyfile(shard_dir / name, dst)
        ek = np.load(shard_dir / "exact_keys.npy") if (shard_dir / "exact_keys.npy").exists() else None
        bk = np.load(shard_dir / "band_keys.npy") if (shard_dir / "band_keys.npy").exists() else None
        row = 0
        dup_rows: list[dict[str, Any]] = []
        for name in rec["kept_files"]:
            for r in pq.read_table(shard_dir / name).to_pylist():
                r = {k: v for k, v in r.items()}
                reason = dup_of = None
                for step in dedup_order:
                    if step == "exact_dedup" and exact is not None and ek is not None:
                        dup_of = exact.check_key(r["id"], (int(ek[row, 0]) << 64) | int(ek[row, 1]))
                        reason = "exact_dup" if dup_of is not None else None
                    elif step == "minhash" and mh is not None and bk is not None:
                        dup_of = mh.check_keys(r["id"], bk[row].tolist())
                        reason = "near_dup" if dup_of is not None else None
                    if reason is not None:
                        break
                row += 1
                if reason is None:
                    out_rows.append(r)
                    docs_out += 1
                    bytes_out += len(r["text"].encode("utf-8", "surrogatepass"))
                    if len(words_kept) < 200_000:
                        words_kept.append(len(r["text"].split()))
                    flush()
                else:
                    dropped[reason] += 1
                    by_step["exact_dedup" if reason == "exact_dup" else "minhash"] += 1
                    ex = examples.setdefault(reason, [])
                    if len(ex) < _EXAMPLES_PER_REASON:
                        ex.append({"id": r["id"], "text": r["text"][:300], "dup_of": dup_of})
                    if cfg.write_dropped:
                        dup_rows.append({**r, "reason": reason, "dup_of": dup_of})
        if dup_rows:
            for i in range(0, len(dup_rows), cfg.num_docs_per_file):
                _write_parquet(
                    out_dir / "dropped" / f"dedup-{s:05d}-{i // cfg.num_docs_per_file:04d}.parquet",
                    dup_rows[i : i + cfg.num_docs_per_file],
                )
    flush(final=True)

    scores: dict[str, dict[str, list[float]]] = {"kept": {}, "dropped": {}}
    for s in range(num_shards):
        sc = json.loads((run_dir / f"shard-{s:05d}" / "scores.json").read_text())
        for side in ("kept", "dropped"):
            for k, v in sc[side].items():
                scores[side].setdefault(k, []).extend(v)

    shard_wall = sum(r["wall_s"] for r in records)
    stats = {
        "docs_in": docs_in,
        "docs_out": docs_out,
        "dropped": dict(sorted(dropped.items(), key=lambda kv: -kv[1])),
        "dropped_by_step": {s: by_step.get(s, 0) for s in steps},
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "keep_fraction": round(docs_out / docs_in, 6) if docs_in else 0.0,
        "steps": steps,
        "profile": cfg.profile,
        "num_shards": num_shards,
        "num_workers": max(r["num_workers"] for r in records),
        "files": out_files,
        "read": read.to_dict(),
        "pii_redactions": dict(pii),
        "minhash": {
            "ngram": m.ngram,
            "num_bands": m.num_bands,
            "rows_per_band": m.rows_per_band,
            "threshold": round(m.threshold, 4),
        }
        if mh is not None
        else None,
        "shard_wall_s": round(shard_wall, 3),
        "wall_s": round(wall_s, 3),
        "docs_per_s": round(docs_in / shard_wall, 1) if shard_wall > 0 else None,
        "examples": examples,
    }
    write_report(out_dir, stats, scores, words_kept, plots=cfg.plots)
    _atomic_write_json(out_dir / "stats.json", stats)
    return stats


# ---------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------
def run_curate(
    cfg: CurateConfig, out_dir: Path, inputs: list[str] | None = None, shard: tuple[int, int] | None = None
) -> dict[str, Any]:
    """Curate ``inputs`` (default ``cfg.inputs``) into ``out_dir``; returns the stats dict.

    With ``shard=(i, n)`` only shard i of n is processed (a finished shard is skipped); the call that
    finds every shard of the run finished also finalizes (cross-shard dedup, outputs, stats). Without
    ``shard``, every unfinished shard of the last sharded run with this config is processed, or the
    whole input as one shard. Raises ``CurateError`` if there are no documents or none survive.
    """
    t0 = time.time()
    out_dir = Path(out_dir)
    inputs = list(inputs) if inputs else list(cfg.inputs)
    if not inputs:
        raise CurateError("inputs: no input given (set curate.inputs or pass --input)")
    sources = resolve_inputs(inputs)
    work = out_dir / ".work"

    if shard is not None:
        i, n = int(shard[0]), int(shard[1])
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard: must be i/n with 0 <= i < n, got {i}/{n}")
        todo, num_shards = [i], n
    else:
        num_shards = 1
        for cand in sorted(work.glob("*/run.json")) if work.exists() else []:
            info = json.loads(cand.read_text())
            if info.get("fingerprint") == _fingerprint(cfg, sources, info["num_shards"]):
                num_shards = info["num_shards"]
        todo = list(range(num_shards))

    fp = _fingerprint(cfg, sources, num_shards)
    run_dir = work / fp
    final_path = run_dir / "final.json"
    if final_path.exists() and (out_dir / "stats.json").exists():
        stats = json.loads((out_dir / "stats.json").read_text())
        if stats.get("docs_out", 0) == 0:
            raise CurateError(_empty_message(stats, out_dir))
        return stats
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "run.json").exists():
        _atomic_write_json(
            run_dir / "run.json",
            {"fingerprint": fp, "num_shards": num_shards, "sources": sources, "config": cfg.to_dict()},
        )

    for s in todo:
        if (run_dir / f"shard-{s:05d}" / "done.json").exists():
            continue
        _run_shard(cfg, sources, s, num_shards, run_dir / f"shard-{s:05d}")

    missing = [s for s in range(num_shards) if not (run_dir / f"shard-{s:05d}" / "done.json").exists()]
    if missing:
        return {"finalized": False, "num_shards": num_shards, "shards_missing": missing, "run": fp}

    # exactly one finisher finalizes: an exclusive lock file (a later plain call takes over a stale one)
    lock = run_dir / "finalize.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    except FileExistsError:
        if shard is not None:
            return {"finalized": False, "num_shards": num_shards, "shards_missing": [], "run": fp}
    try:
        total_in = sum(
            json.loads((run_dir / f"shard-{s:05d}" / "done.json").read_text())["docs_in"]
            for s in range(num_shards)
        )
        if total_in == 0:
            raise CurateError(
                f"inputs: no documents found in {len(sources)} source(s): {', '.join(sources[:5])}"
            )
        stats = _finalize(cfg, run_dir, out_dir, num_shards, time.time() - t0)
        _atomic_write_json(final_path, {"finished": time.time()})
    finally:
        lock.unlink(missing_ok=True)
    if stats["docs_out"] == 0:
        raise CurateError(_empty_message(stats, out_dir))
    return stats


def _empty_message(stats: dict[str, Any], out_dir: Path) -> str:
    top = ", ".join(f"{k}: {v}" for k, v in list(stats["dropped"].items())[:5])
    return (
        f"curate: all {stats['docs_in']} documents were dropped ({top}); "
        f"see {out_dir / 'report.md'} and {out_dir / 'dropped'}"
    )
