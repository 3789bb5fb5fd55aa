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
   shards, then write ``part-*.parquet``, ``dropped/*.parquet``, ``stats.json``, ``report.md`` + PNGs and
   the dataset card ``README.md`` (card.py) that makes ``datasets.load_dataset(out_dir)`` load the kept ones.

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
from .readers import ReaderOptions, ReadStats, read_source, resolve_inputs
from .steps import build_step, is_dedup

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
    keys = list(dict.fromkeys(k for r in rows for k in r))  # every row's fields (from_pylist reads the first row's)
    try:
        table = pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})
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
        names = [s for s in cfg.resolved_steps if not is_dedup(s)]
        self.steps = [(name, build_step(name, cfg)) for name in names]
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
        """Kept docs (+ keys), dropped docs (+ reason), scores; texts after every transform.

        Each step sees the batch's surviving documents at once (`filter_batch`), so a model-based
        filter runs one forward pass per batch; outputs stay in input order."""
        verdict: list[tuple[str, str] | None] = [None] * len(docs)
        alive = list(range(len(docs)))
        for name, step in self.steps:
            if not alive:
                break
            reasons = step.filter_batch([docs[i] for i in alive])
            for i, reason in zip(alive, reasons):
                if reason is not None:
                    verdict[i] = (reason, name)
            alive = [i for i, reason in zip(alive, reasons) if reason is None]
        kept = [docs[i] for i in alive]
        dropped = [(doc, v[0], v[1]) for doc, v in zip(docs, verdict) if v is not None]
        scores = [(doc.scores, v is None) for doc, v in zip(docs, verdict)]
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


class _RowFiles:
    """Rows buffered and written `per_file` at a time as `<prefix>-NNNN.parquet` in `folder`."""

    def __init__(self, folder: Path, prefix: str, per_file: int, digits: int = 4) -> None:
        self.folder, self.prefix, self.per_file, self.digits = folder, prefix, per_file, digits
        self.rows: list[dict[str, Any]] = []
        self.files: list[str] = []

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.flush()

    def flush(self, final: bool = False) -> None:
        while len(self.rows) >= self.per_file or (final and self.rows):
            name = f"{self.prefix}-{len(self.files):0{self.digits}d}.parquet"
            _write_parquet(self.folder / name, self.rows[: self.per_file])
            self.files.append(name)
            del self.rows[: self.per_file]


class _ShardTally:
    """What one shard saw: counts, drop reasons and examples, sampled scores, dedup keys."""

    def __init__(self) -> None:
        self.docs_in = self.docs_kept = 0
        self.dropped: Counter[str] = Counter()
        self.by_step: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, str]]] = {}
        self.scores: dict[str, dict[str, list[float]]] = {"kept": {}, "dropped": {}}
        self.pii: Counter[str] = Counter()
        self.exact_keys: list[int] = []
        self.band_keys: list[np.ndarray] = []

    def add(self, res: dict[str, Any]) -> None:
        self.docs_in += len(res["kept"]) + len(res["dropped"])
        self.docs_kept += len(res["kept"])
        self.pii.update(res["pii"])
        for sc, keep in res["scores"]:
            bucket = self.scores["kept" if keep else "dropped"]
            for k, v in sc.items():
                lst = bucket.setdefault(k, [])
                if len(lst) < MAX_SCORES_PER_SHARD:
                    lst.append(float(v))
        if res["exact"] is not None:
            self.exact_keys.extend(res["exact"])
        if res["bands"] is not None:
            self.band_keys.append(res["bands"])
        for doc, reason, step in res["dropped"]:
            self.dropped[reason] += 1
            self.by_step[step] += 1
            _add_example(self.examples, reason, {"id": doc.id, "text": doc.text[:300]})

    def save_keys(self, shard_dir: Path) -> None:
        if self.exact_keys:
            ek = np.array([[k >> 64, k & ((1 << 64) - 1)] for k in self.exact_keys], dtype=np.uint64)
            np.save(shard_dir / "exact_keys.npy", ek)
        if self.band_keys:
            np.save(shard_dir / "band_keys.npy", np.concatenate(self.band_keys))


def _add_example(examples: dict[str, list[dict[str, Any]]], reason: str, example: dict[str, Any]) -> None:
    ex = examples.setdefault(reason, [])
    if len(ex) < _EXAMPLES_PER_REASON:
        ex.append(example)


def _progress(shard: int, num_shards: int) -> Any:
    return tqdm(
        desc=f"curate shard {shard}/{num_shards}",
        unit="doc",
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )


def _processed(cfg: CurateConfig, docs: Iterator[Document], num_workers: int) -> Iterator[dict[str, Any]]:
    """`DocProcessor` results per batch, in input order: in a spawn pool of `num_workers` processes when
    there is more than one batch (a single batch is not worth starting processes for), else in-process."""
    batches = _batches(docs, cfg.batch_size)
    head = [b for b in (next(batches, None), next(batches, None)) if b is not None]
    if num_workers > 1 and len(head) > 1:
        pool = mp.get_context("spawn").Pool(num_workers, initializer=_init_worker, initargs=(cfg,))
        try:
            yield from _bounded_imap(pool, itertools.chain(head, batches), max_pending=2 * num_workers)
        finally:
            pool.terminate()
    else:
        _init_worker(cfg)
        yield from map(_work, itertools.chain(head, batches))


def _run_shard(
    cfg: CurateConfig, sources: list[str], shard: int, num_shards: int, shard_dir: Path
) -> dict[str, Any]:
    """Shard phase: read shard `shard` of `num_shards`, run the per-document steps, write survivors (with
    dedup keys) and filtered documents under `shard_dir`, then `done.json` last."""
    t0 = time.time()
    opts = ReaderOptions(cfg.text_field, cfg.id_field, cfg.separator, cfg.hf_split)
    read_stats = ReadStats()
    counter = {"bytes_in": 0}
    docs = _shard_documents(sources, shard, num_shards, opts, read_stats, counter)
    num_workers = cfg.resolved_num_workers
    if shard_dir.exists():
        shutil.rmtree(shard_dir)  # an unfinished earlier attempt
    shard_dir.mkdir(parents=True)
    kept = _RowFiles(shard_dir, "kept", cfg.num_docs_per_file)
    dropped = _RowFiles(shard_dir, "dropped", cfg.num_docs_per_file)
    tally = _ShardTally()
    bar = _progress(shard, num_shards)
    try:
        for res in _processed(cfg, docs, num_workers):
            bar.update(len(res["kept"]) + len(res["dropped"]))
            tally.add(res)
            for doc in res["kept"]:
                kept.add(_doc_row(doc))
            if cfg.write_dropped:
                for doc, reason, _step in res["dropped"]:
                    dropped.add({**_doc_row(doc), "reason": reason, "dup_of": None})
    finally:
        bar.close()
    kept.flush(final=True)
    dropped.flush(final=True)
    tally.save_keys(shard_dir)
    record = {
        "shard": shard,
        "num_shards": num_shards,
        "docs_in": tally.docs_in,
        "docs_kept": tally.docs_kept,
        "bytes_in": counter["bytes_in"],
        "dropped": dict(tally.dropped),
        "dropped_by_step": dict(tally.by_step),
        "examples": tally.examples,
        "read": read_stats.to_dict(),
        "pii_redactions": dict(tally.pii),
        "kept_files": kept.files,
        "dropped_files": dropped.files,
        "wall_s": round(time.time() - t0, 3),
        "num_workers": num_workers,
    }
    _atomic_write_json(shard_dir / "scores.json", tally.scores)
    _atomic_write_json(shard_dir / "done.json", record)
    return record


# ---------------------------------------------------------------------------------------------
# finalize phase
# ---------------------------------------------------------------------------------------------
class _Dedup:
    """The cross-shard dedup tables, checked in the configured order; the first copy of a document wins."""

    def __init__(self, cfg: CurateConfig) -> None:
        steps = cfg.resolved_steps
        m = cfg.minhash
        self.exact = ExactDeduper(cfg.exact_dedup.normalize) if "exact_dedup" in steps else None
        self.minhash = MinHashDeduper(m.ngram, m.num_bands, m.rows_per_band, m.seed) if "minhash" in steps else None
        self.order = [s for s in steps if is_dedup(s)]

    def check(self, doc_id: str, row: int, ek: np.ndarray | None, bk: np.ndarray | None) -> tuple[str | None, str | None]:
        """(reason, id of the earlier copy) for row `row` of a shard's keys, or (None, None) to keep it."""
        for step in self.order:
            dup_of = None
            if step == "exact_dedup" and self.exact is not None and ek is not None:
                dup_of = self.exact.check_key(doc_id, (int(ek[row, 0]) << 64) | int(ek[row, 1]))
                if dup_of is not None:
                    return "exact_dup", dup_of
            elif step == "minhash" and self.minhash is not None and bk is not None:
                dup_of = self.minhash.check_keys(doc_id, bk[row].tolist())
                if dup_of is not None:
                    return "near_dup", dup_of
        return None, None


class _Totals:
    """Counts merged over shards and over the dedup pass (the body of stats.json)."""

    def __init__(self) -> None:
        self.docs_in = self.docs_out = self.bytes_in = self.bytes_out = 0
        self.dropped: Counter[str] = Counter()
        self.by_step: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = {}
        self.read = ReadStats()
        self.pii: Counter[str] = Counter()
        self.words_kept: list[float] = []

    def add_record(self, rec: dict[str, Any]) -> None:
        self.docs_in += rec["docs_in"]
        self.bytes_in += rec["bytes_in"]
        self.dropped.update(rec["dropped"])
        self.by_step.update(rec["dropped_by_step"])
        for reason, ex in rec["examples"].items():
            for e in ex:
                _add_example(self.examples, reason, e)
        self.read.merge(rec["read"])
        self.pii.update(rec["pii_redactions"])

    def keep(self, text: str) -> None:
        self.docs_out += 1
        self.bytes_out += len(text.encode("utf-8", "surrogatepass"))
        if len(self.words_kept) < 200_000:
            self.words_kept.append(len(text.split()))

    def drop_dup(self, r: dict[str, Any], reason: str, dup_of: str | None) -> None:
        self.dropped[reason] += 1
        self.by_step["exact_dedup" if reason == "exact_dup" else "minhash"] += 1
        _add_example(self.examples, reason, {"id": r["id"], "text": r["text"][:300], "dup_of": dup_of})


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _dedup_shard(
    cfg: CurateConfig, rec: dict[str, Any], shard_dir: Path, out_dir: Path, dedup: _Dedup, kept: _RowFiles,
    totals: _Totals,
) -> None:
    """Pass one shard's survivors through the dedup tables: keep into `kept`, duplicates to `dropped/`."""
    s = rec["shard"]
    for i, name in enumerate(rec["dropped_files"]):  # filtered docs: hard-link into place
        _link(shard_dir / name, out_dir / "dropped" / f"filtered-{s:05d}-{i:04d}.parquet")
    ek = np.load(shard_dir / "exact_keys.npy") if (shard_dir / "exact_keys.npy").exists() else None
    bk = np.load(shard_dir / "band_keys.npy") if (shard_dir / "band_keys.npy").exists() else None
    dups = _RowFiles(out_dir / "dropped", f"dedup-{s:05d}", cfg.num_docs_per_file)
    row = 0
    for name in rec["kept_files"]:
        for r in pq.read_table(shard_dir / name).to_pylist():
            reason, dup_of = dedup.check(r["id"], row, ek, bk)
            row += 1
            if reason is None:
                kept.add(r)
                totals.keep(r["text"])
            else:
                totals.drop_dup(r, reason, dup_of)
                if cfg.write_dropped:
                    dups.rows.append({**r, "reason": reason, "dup_of": dup_of})
    dups.flush(final=True)


def _merged_scores(run_dir: Path, num_shards: int) -> dict[str, dict[str, list[float]]]:
    scores: dict[str, dict[str, list[float]]] = {"kept": {}, "dropped": {}}
    for s in range(num_shards):
        sc = json.loads((run_dir / f"shard-{s:05d}" / "scores.json").read_text())
        for side in ("kept", "dropped"):
            for k, v in sc[side].items():
                scores[side].setdefault(k, []).extend(v)
    return scores


def _stats(
    cfg: CurateConfig, totals: _Totals, records: list[dict[str, Any]], files: list[str], wall_s: float,
    with_minhash: bool,
) -> dict[str, Any]:
    m = cfg.minhash
    shard_wall = sum(r["wall_s"] for r in records)
    return {
        "docs_in": totals.docs_in,
        "docs_out": totals.docs_out,
        "dropped": dict(sorted(totals.dropped.items(), key=lambda kv: -kv[1])),
        "dropped_by_step": {s: totals.by_step.get(s, 0) for s in cfg.resolved_steps},
        "bytes_in": totals.bytes_in,
        "bytes_out": totals.bytes_out,
        "keep_fraction": round(totals.docs_out / totals.docs_in, 6) if totals.docs_in else 0.0,
        "steps": cfg.resolved_steps,
        "profile": cfg.profile,
        "num_shards": len(records),
        "num_workers": max(r["num_workers"] for r in records),
        "files": files,
        "read": totals.read.to_dict(),
        "pii_redactions": dict(totals.pii),
        "minhash": {
            "ngram": m.ngram,
            "num_bands": m.num_bands,
            "rows_per_band": m.rows_per_band,
            "threshold": round(m.threshold, 4),
        }
        if with_minhash
        else None,
        "shard_wall_s": round(shard_wall, 3),
        "wall_s": round(wall_s, 3),
        "docs_per_s": round(totals.docs_in / shard_wall, 1) if shard_wall > 0 else None,
        "examples": totals.examples,
    }


def _finalize(
    cfg: CurateConfig, run_dir: Path, out_dir: Path, num_shards: int, wall_s: float
) -> dict[str, Any]:
    """Finalize phase: cross-shard dedup in shard order, then the outputs, stats.json, report and card."""
    from .card import card_text
    from .report import write_report

    records = [json.loads((run_dir / f"shard-{s:05d}" / "done.json").read_text()) for s in range(num_shards)]
    dedup = _Dedup(cfg)
    # clear outputs of an earlier run into this folder (they are replaced below)
    (out_dir / "dropped").mkdir(parents=True, exist_ok=True)
    for old in list(out_dir.glob("part-*.parquet")) + list((out_dir / "dropped").glob("*.parquet")):
        old.unlink()
    totals = _Totals()
    kept = _RowFiles(out_dir, "part", cfg.num_docs_per_file, digits=5)
    for rec in records:
        totals.add_record(rec)
        _dedup_shard(cfg, rec, run_dir / f"shard-{rec['shard']:05d}", out_dir, dedup, kept, totals)
    kept.flush(final=True)
    stats = _stats(cfg, totals, records, kept.files, wall_s, dedup.minhash is not None)
    write_report(out_dir, stats, _merged_scores(run_dir, num_shards), totals.words_kept, plots=cfg.plots)
    has_dropped = any((out_dir / "dropped").glob("*.parquet"))
    _atomic_write_bytes(out_dir / "README.md", card_text(stats, has_dropped).encode())
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

    todo, num_shards = _shards_to_run(cfg, sources, work, shard)

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

    stats = _finalize_once(cfg, run_dir, out_dir, sources, num_shards, shard is not None, t0)
    if stats.get("finalized") is False:
        return stats
    if stats["docs_out"] == 0:
        raise CurateError(_empty_message(stats, out_dir))
    return stats


def _shards_to_run(
    cfg: CurateConfig, sources: list[str], work: Path, shard: tuple[int, int] | None
) -> tuple[list[int], int]:
    """(shards this call processes, shard count): `shard=(i, n)` means shard i of n; no shard means every
    shard of the last sharded run with this config and inputs, or the whole input as one shard."""
    if shard is not None:
        i, n = int(shard[0]), int(shard[1])
        if not (n >= 1 and 0 <= i < n):
            raise ValueError(f"shard: must be i/n with 0 <= i < n, got {i}/{n}")
        return [i], n
    num_shards = 1
    for cand in sorted(work.glob("*/run.json")) if work.exists() else []:
        info = json.loads(cand.read_text())
        if info.get("fingerprint") == _fingerprint(cfg, sources, info["num_shards"]):
            num_shards = info["num_shards"]
    return list(range(num_shards)), num_shards


def _finalize_once(
    cfg: CurateConfig, run_dir: Path, out_dir: Path, sources: list[str], num_shards: int, sharded: bool, t0: float
) -> dict[str, Any]:
    """Finalize under an exclusive lock file, so exactly one finisher does it (a later plain call takes over
    a stale lock); a sharded call that finds the lock taken returns ``finalized: False``."""
    lock = run_dir / "finalize.lock"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
    except FileExistsError:
        if sharded:
            return {"finalized": False, "num_shards": num_shards, "shards_missing": [], "run": run_dir.name}
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
        _atomic_write_json(run_dir / "final.json", {"finished": time.time()})
    finally:
        lock.unlink(missing_ok=True)
    return stats


def _empty_message(stats: dict[str, Any], out_dir: Path) -> str:
    top = ", ".join(f"{k}: {v}" for k, v in list(stats["dropped"].items())[:5])
    return (
        f"curate: all {stats['docs_in']} documents were dropped ({top}); "
        f"see {out_dir / 'report.md'} and {out_dir / 'dropped'}"
    )
