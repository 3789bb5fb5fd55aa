"""The tokenize stage: scan the corpus, train (or reuse) the BPE, pack documents into token shards.

Design and invariants
- Three streaming passes, each in bounded memory (one encode batch of text + per-document bookkeeping of
  24 bytes: two 64-bit hashes and a length):
  1. scan: every document's key (id column, else `<file>:<row>`) is hashed with the seed (blake2b-128). The
     corpus is cut into work units of ~`shard_bytes` text bytes that never span files.
  2. train: the BPE learns from the train split, or from its documents with the smallest second hash that
     add up to `max_train_bytes` (an even sample: corpora are often sorted by source).
  3. pack: each unit is read, encoded by the Rust encoder (`encode_batch`, parallel over all cores),
     and written as `train_<unit>.bin` / `val_<unit>.bin`; then a completion record is written.
- Split: the `round(val_fraction * N)` documents with the smallest first hash go to val (at least one when
  N >= 2). The split depends only on (seed, document keys), not on file order or batch sizes, and a document
  (or a duplicate carrying the same id) is in exactly one split.
- Packing rule: `[<|bos|>] ids <|endoftext|>` per document, documents back to back, a shard ends at a
  document boundary. Literal special-token strings inside documents are encoded as text.
- Resume: a unit is finished when `.progress/unit_<n>.json` exists with the current fingerprint (tokenizer
  sha256, inputs' names/sizes/mtimes, the fields that change the bytes written) and its files have the
  recorded sizes. Such units are skipped after a kill; the others are rewritten from scratch (temp file +
  os.replace). index.json is written last, so its presence means the folder is complete; stale shards and
  records from an earlier, different run are deleted.
- Parallelism (benchmarks/bench_tokenize.py, LOG notes): the Rust encoder's thread pool already uses every
  core (CPU time per MB was the same with 1 and 2 threads: no parallel overhead). A background thread reads and
  encodes batch k+1 (the encoder releases the GIL) while the main thread turns batch k into uint16/32 and
  writes it (~0.1 us/token, one thread). On 2 shared cores that overlap cannot hide everything: the stage
  costs ~10% more CPU than a bare encode_batch. On many cores the single converter thread would cap the rate
  (estimate: tens of MB/s). Units are independent, so `num_proc` worker processes pack whole units at once
  (`multiprocessing` spawn pool, each worker with its own tokenizer and an encoder pool of cores / workers
  threads, units handed out largest first): every byte written is the same as one process writes (a unit's
  shard depends only on the unit), resume is per unit as before, and memory is one unit's batches per worker.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer
from tqdm import tqdm

from data_pipelines.tokenize import foreign, sources
from data_pipelines.tokenize.bpe import (
    TOKENIZER_FILE,
    check_special_tokens,
    file_sha256,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
    write_hf_files,
)
from data_pipelines.tokenize.config import TokenizeConfig
from data_pipelines.tokenize.shards import FORMAT, INDEX_FILE, SPLITS, VERSION

PROGRESS_DIR = ".progress"
TOKENIZER_RECORD = ".tokenize_record.json"


@dataclass(frozen=True)
class Unit:
    """A work unit: consecutive rows of one input file; writes one shard per split."""

    index: int
    file: int
    start: sources.Position
    num_rows: int
    num_bytes: int
    first_doc: int


@dataclass
class Corpus:
    """What the scan learned: work units and per-document hashes, lengths and split."""

    files: list[Path]
    units: list[Unit]
    hash_split: np.ndarray  # (N,) uint64: decides the split
    hash_sample: np.ndarray  # (N,) uint64: decides the tokenizer-training sample
    num_bytes: np.ndarray  # (N,) int64 UTF-8 bytes per document
    is_val: np.ndarray  # (N,) bool

    @property
    def total_bytes(self) -> int:
        return int(self.num_bytes.sum())


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _files_signature(files: list[Path]) -> list[list[Any]]:
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- pass 1: scan


def scan_corpus(cfg: TokenizeConfig, files: list[Path], seed: int, progress: bool = False) -> Corpus:
    """Hash every document, choose the split, and cut the corpus into work units (see module doc)."""
    units: list[Unit] = []
    digests = bytearray()  # 16 bytes per document
    lengths: list[np.ndarray] = []
    salt = f"{seed}\x00".encode()
    n_docs = 0
    bar = tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="tokenize: scan",
               disable=not progress, file=sys.stderr)
    for fi, path in enumerate(files):
        start: sources.Position | None = None
        rows = nbytes = 0
        first = n_docs
        for keys, lens, first_row, offsets in sources.scan(path, cfg.text_field, cfg.id_field):
            for k in keys:
                digests += hashlib.blake2b(salt + k.encode(), digest_size=16).digest()
            lengths.append(lens)
            # a unit closes once it holds >= shard_bytes of text
            for i, ln in enumerate(lens.tolist()):
                if start is None:
                    start, rows, nbytes, first = sources.Position(first_row + i, int(offsets[i])), 0, 0, n_docs
                rows += 1
                nbytes += ln
                n_docs += 1
                if nbytes >= cfg.shard_bytes:
                    units.append(Unit(len(units), fi, start, rows, nbytes, first))
                    start = None
        if start is not None:
            units.append(Unit(len(units), fi, start, rows, nbytes, first))
        bar.update(path.stat().st_size)
    bar.close()
    hashes = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    num_bytes = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    is_val = np.zeros(n_docs, dtype=bool)
    if cfg.val_fraction > 0 and n_docs >= 2:
        n_val = int(min(max(round(cfg.val_fraction * n_docs), 1), n_docs - 1))
        threshold = np.partition(hashes[:, 0], n_val - 1)[n_val - 1]
        is_val = hashes[:, 0] <= threshold  # `<=`: documents sharing an id share a split
    return Corpus(list(files), units, hashes[:, 0].copy(), hashes[:, 1].copy(), num_bytes, is_val)


def _read_unit(corpus: Corpus, unit: Unit, cfg: TokenizeConfig) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """(texts, is_val, num_bytes) batches of about `cfg.batch_bytes` text bytes, in row order."""
    row = 0
    texts: list[str] = []
    first = 0
    batch_bytes = 0
    for chunk in sources.read(corpus.files[unit.file], unit.start, unit.num_rows, cfg.text_field, cfg.id_field):
        for text in chunk:
            texts.append(text)
            batch_bytes += int(corpus.num_bytes[unit.first_doc + row])
            row += 1
            if batch_bytes >= cfg.batch_bytes:
                sl = slice(unit.first_doc + first, unit.first_doc + row)
                yield texts, corpus.is_val[sl], corpus.num_bytes[sl]
                texts, first, batch_bytes = [], row, 0
    if row != unit.num_rows:
        raise ValueError(f"{corpus.files[unit.file]}: expected {unit.num_rows} rows from row {unit.start.row}, "
                         f"read {row} (file changed during the stage?)")
    if texts:
        sl = slice(unit.first_doc + first, unit.first_doc + row)
        yield texts, corpus.is_val[sl], corpus.num_bytes[sl]


# ---------------------------------------------------------------- pass 2: tokenizer


def _training_batches(corpus: Corpus, cfg: TokenizeConfig, used: dict[str, int]) -> Iterator[list[str]]:
    """Train-split documents (an even hash sample once they exceed `max_train_bytes`), in corpus order.
    `used["bytes"]` counts the text handed to the trainer."""
    take = ~corpus.is_val
    if int(corpus.num_bytes[take].sum()) > cfg.max_train_bytes:
        # the train documents with the smallest sample hashes, just enough to reach the cap: an even sample
        train_idx = np.flatnonzero(take)
        order = train_idx[np.argsort(corpus.hash_sample[train_idx], kind="stable")]
        k = int(np.searchsorted(np.cumsum(corpus.num_bytes[order]), cfg.max_train_bytes))
        take = np.zeros_like(take)
        take[order[:k + 1]] = True
    budget = min(int(corpus.num_bytes[take].sum()), cfg.max_train_bytes)
    bar = tqdm(total=budget, unit="B", unit_scale=True, desc="tokenize: train BPE (read)", disable=not cfg.progress,
               file=sys.stderr)
    used["bytes"] = 0
    try:
        for unit in corpus.units:
            row = unit.first_doc
            if not take[row:row + unit.num_rows].any():
                continue
            for chunk in sources.read(corpus.files[unit.file], unit.start, unit.num_rows, cfg.text_field,
                                      cfg.id_field):
                batch = []
                for text, keep, n in zip(chunk, take[row:row + len(chunk)], corpus.num_bytes[row:row + len(chunk)]):
                    if keep and used["bytes"] < cfg.max_train_bytes:
                        batch.append(text)
                        used["bytes"] += int(n)
                row += len(chunk)
                if batch:
                    yield batch
                    bar.update(sum(len(t.encode("utf-8")) for t in batch))
                if used["bytes"] >= cfg.max_train_bytes:
                    return
    finally:
        bar.close()


def _prepare_tokenizer(cfg: TokenizeConfig, corpus: Corpus, tokenizer_dir: Path, seed: int) -> tuple[Tokenizer, str, int]:
    """Make tokenizer_dir/tokenizer.json (trained, reused, or copied from cfg.tokenizer_file).

    Returns (tokenizer ready for packing, its sha256, text bytes it was trained on now: 0 if not trained now)."""
    target = tokenizer_dir / TOKENIZER_FILE
    if cfg.tokenizer_file:
        src = foreign.resolve_source(cfg.tokenizer_file)  # tokenizer.json, a folder holding one, or a .gguf
        record_path = tokenizer_dir / TOKENIZER_RECORD
        stat = src.stat()
        source = {"source": str(src.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        current = target.is_file() and (
            _read_json(record_path).get("source") == source if src.suffix == ".gguf"
            else file_sha256(target) == file_sha256(src))
        if not current:
            foreign.import_tokenizer(src, tokenizer_dir)
            if not (tokenizer_dir / "tokenizer_config.json").is_file():
                try:
                    check_special_tokens(Tokenizer.from_file(str(target)), target)
                    write_hf_files(tokenizer_dir)  # one of ours without its side files
                except ValueError:
                    pass
            if src.suffix == ".gguf":
                _write_json_atomic(record_path, {"source": source})
        tok = load_tokenizer(target)  # validates it
        return tok, file_sha256(target), 0
    record_path = tokenizer_dir / TOKENIZER_RECORD
    fingerprint = _digest({
        "kind": "bpe", "vocab_size": cfg.vocab_size, "min_frequency": cfg.min_frequency,
        "max_train_bytes": cfg.max_train_bytes, "val_fraction": cfg.val_fraction, "seed": seed,
        "text_field": cfg.text_field, "id_field": cfg.id_field, "files": _files_signature(corpus.files),
    })
    record = _read_json(record_path)
    if record and record.get("fingerprint") == fingerprint and target.is_file() and file_sha256(target) == record.get("sha256"):
        return load_tokenizer(target), record["sha256"], 0
    if int(corpus.num_bytes[~corpus.is_val].sum()) == 0:
        raise ValueError("data_files: no text in the train split to train the tokenizer on")
    used: dict[str, int] = {}
    tok = train_tokenizer(_training_batches(corpus, cfg, used), cfg.vocab_size, cfg.min_frequency,
                          show_progress=cfg.progress)
    sha = save_tokenizer(tok, tokenizer_dir)
    _write_json_atomic(record_path, {"fingerprint": fingerprint, "sha256": sha, "vocab_size": tok.get_vocab_size(),
                                     "train_bytes": used["bytes"]})
    return load_tokenizer(target), sha, used["bytes"]  # reloaded: the packing settings of load_tokenizer


# ---------------------------------------------------------------- pass 3: pack


PIPELINE = True  # encode in a background thread; False = read, encode, convert one after another


def _encode_stream(tok, batches: Iterator[tuple[list[str], np.ndarray, np.ndarray]]):
    """Read + encode in a background thread (the Rust encoder releases the GIL), one batch ahead of the consumer."""
    if not PIPELINE:
        for texts, is_val, nbytes in batches:
            yield tok.encode_batch(texts, add_special_tokens=False), is_val, nbytes
        return
    q: queue.Queue = queue.Queue(maxsize=1)  # in flight: one being written, one queued, one being encoded
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for texts, is_val, nbytes in batches:
                if not put((tok.encode_batch(texts, add_special_tokens=False), is_val, nbytes)):
                    return
            put(None)
        except BaseException as e:  # re-raised in the consumer
            put(e)

    t = threading.Thread(target=work, name="tokenize-encode", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join()


def _unit_done(record: dict[str, Any] | None, fingerprint: str, shards_dir: Path, itemsize: int) -> bool:
    if not record or record.get("fingerprint") != fingerprint:
        return False
    for split in SPLITS:
        s = record[split]
        if s["file"] is not None:
            f = shards_dir / s["file"]
            if not f.is_file() or f.stat().st_size != s["num_tokens"] * itemsize:
                return False
    return True


def _pack_unit(tok, corpus: Corpus, unit: Unit, cfg: TokenizeConfig, dtype: np.dtype, shards_dir: Path,
               fingerprint: str, bar: tqdm, special: dict[str, int]) -> dict[str, Any]:
    names = {split: f"{split}_{unit.index:05d}.bin" for split in SPLITS}
    tmps = {split: shards_dir / f".{names[split]}.tmp" for split in SPLITS}
    stats = {split: {"num_tokens": 0, "num_docs": 0, "num_bytes": 0} for split in SPLITS}
    bos = np.array([special["bos_id"]], dtype=dtype)
    eos = np.array([special["eos_id"]], dtype=dtype)
    handles = {split: open(tmps[split], "wb") for split in SPLITS}
    try:
        for encs, is_val, nbytes in _encode_stream(tok, _read_unit(corpus, unit, cfg)):
            # per-document arrays (2-4 B/token) rather than one list of Python ints (~36 B/token) per batch
            parts: dict[str, list[np.ndarray]] = {"train": [], "val": []}
            for enc, v in zip(encs, is_val.tolist()):
                part = parts["val" if v else "train"]
                if cfg.add_bos:
                    part.append(bos)
                part.append(np.array(enc.ids, dtype=dtype))
                part.append(eos)
            del encs
            for split, part in parts.items():
                if part:
                    arr = np.concatenate(part)
                    handles[split].write(arr.data)
                    stats[split]["num_tokens"] += len(arr)
            n_val = int(is_val.sum())
            stats["val"]["num_docs"] += n_val
            stats["train"]["num_docs"] += len(is_val) - n_val
            stats["val"]["num_bytes"] += int(nbytes[is_val].sum())
            stats["train"]["num_bytes"] += int(nbytes[~is_val].sum())
            bar.update(int(nbytes.sum()))
        for h in handles.values():
            h.flush()
            os.fsync(h.fileno())
    finally:
        for h in handles.values():
            h.close()
    record: dict[str, Any] = {"fingerprint": fingerprint, "unit": asdict(unit)}
    for split in SPLITS:
        if stats[split]["num_docs"]:
            os.replace(tmps[split], shards_dir / names[split])
            record[split] = {"file": names[split], **stats[split]}
        else:
            tmps[split].unlink()
            (shards_dir / names[split]).unlink(missing_ok=True)
            record[split] = {"file": None, **stats[split]}
    _write_json_atomic(shards_dir / PROGRESS_DIR / f"unit_{unit.index:05d}.json", record)
    return record


POOL_MIN_BYTES = 32_000_000
"""`num_proc: 0` (auto) starts worker processes only for at least this much text: a spawned worker costs ~1-2 s
of imports, about what 16 MB of packing takes on one core."""

_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_path: str, corpus: Corpus, cfg: TokenizeConfig, dtype: str, shards_dir: str,
                 fingerprint: str, threads: int, special: dict[str, int]) -> None:
    """Per worker process: the shared inputs once, and an encoder thread pool of `threads` (rayon reads
    RAYON_NUM_THREADS when its pool first starts, which is after this)."""
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    _WORKER.update(tok=load_tokenizer(Path(tokenizer_path)), corpus=corpus, cfg=cfg, dtype=np.dtype(dtype),
                   shards_dir=Path(shards_dir), fingerprint=fingerprint, special=special)


def _pack_unit_in_worker(unit: Unit) -> dict[str, Any]:
    w = _WORKER
    with tqdm(disable=True) as bar:
        return _pack_unit(w["tok"], w["corpus"], unit, w["cfg"], w["dtype"], w["shards_dir"], w["fingerprint"], bar,
                          w["special"])


def _num_workers(cfg: TokenizeConfig, todo: list[Unit]) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.num_proc == 0 and sum(u.num_bytes for u in todo) < POOL_MIN_BYTES:
        return 1
    return max(1, min(cfg.num_proc or cores, len(todo)))


def _pack_units(tok, tokenizer_path: Path, corpus: Corpus, todo: list[Unit], cfg: TokenizeConfig, dtype: np.dtype,
                shards_dir: Path, fingerprint: str, bar: tqdm, special: dict[str, int]) -> list[dict[str, Any]]:
    """Pack the units of `todo` in this process or in a pool of worker processes; records in any order."""
    workers = _num_workers(cfg, todo)
    if workers <= 1:
        return [_pack_unit(tok, corpus, u, cfg, dtype, shards_dir, fingerprint, bar, special) for u in todo]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process whose encoder threads already ran
    records = []
    order = sorted(todo, key=lambda u: -u.num_bytes)  # largest first: the shortest tail on the last worker
    with ctx.Pool(workers, initializer=_init_worker,
                  initargs=(str(tokenizer_path), corpus, cfg, dtype.str, str(shards_dir), fingerprint,
                            max(1, cores // workers), special)) as pool:
        for rec in pool.imap_unordered(_pack_unit_in_worker, order):
            records.append(rec)
            bar.update(rec["unit"]["num_bytes"])
    return records


def _build_index(records: list[dict[str, Any]], vocab_size: int, dtype: np.dtype, sha: str, cfg: TokenizeConfig,
                 seed: int, special: dict[str, int]) -> dict[str, Any]:
    splits = {}
    for split in SPLITS:
        rs = [r[split] for r in records]
        shards = [{"file": r["file"], "num_tokens": r["num_tokens"], "num_docs": r["num_docs"]} for r in rs if r["file"]]
        num_tokens = sum(r["num_tokens"] for r in rs)
        num_bytes = sum(r["num_bytes"] for r in rs)
        splits[split] = {
            "num_docs": sum(r["num_docs"] for r in rs),
            "num_tokens": num_tokens,
            "num_bytes": num_bytes,
            "bytes_per_token": num_bytes / num_tokens if num_tokens else 0.0,
            "shards": shards,
        }
    return {
        "format": FORMAT, "version": VERSION, "dtype": dtype.name, "vocab_size": vocab_size,
        "eos_id": special["eos_id"], "bos_id": special["bos_id"], "pad_id": special["pad_id"], "add_bos": cfg.add_bos,
        "tokenizer_sha256": sha, "seed": seed, "val_fraction": cfg.val_fraction, "splits": splits,
    }


def _checked_inputs(data_files: list[Path]) -> list[Path]:
    files = [Path(f) for f in data_files]
    if not files:
        raise ValueError("data_files: no input files given")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{f}: input file not found")
        sources.file_format(f)
    return files


def _shard_dtype(cfg: TokenizeConfig, vocab_size: int) -> np.dtype:
    if cfg.shard_dtype == "auto":
        return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)
    dtype = np.dtype(cfg.shard_dtype)
    if vocab_size > np.iinfo(dtype).max + 1:
        raise ValueError(f"shard_dtype: {cfg.shard_dtype} cannot hold vocab size {vocab_size}")
    return dtype


def _pending_units(corpus: Any, shards_dir: Path, fingerprint: str, dtype: np.dtype) -> tuple[list[dict[str, Any]], list[Unit]]:
    """(record per unit, {} where not done; units still to pack): a unit whose progress record matches the
    fingerprint and whose shard files are whole is not packed again."""
    records: list[dict[str, Any]] = []
    todo: list[Unit] = []
    for unit in corpus.units:
        rec = _read_json(shards_dir / PROGRESS_DIR / f"unit_{unit.index:05d}.json")
        if _unit_done(rec, fingerprint, shards_dir, dtype.itemsize):
            records.append(rec)
        else:
            records.append({})
            todo.append(unit)
    return records, todo


def _remove_stale(index: dict[str, Any], corpus: Any, shards_dir: Path) -> None:
    """Delete shard files and progress records that the new index no longer names (an earlier, larger run)."""
    keep = {sh["file"] for s in index["splits"].values() for sh in s["shards"]}
    for f in shards_dir.glob("*.bin"):
        if f.name not in keep:
            f.unlink()
    keep_records = {f"unit_{u.index:05d}.json" for u in corpus.units}
    for f in (shards_dir / PROGRESS_DIR).glob("unit_*.json"):
        if f.name not in keep_records:
            f.unlink()


def run_tokenize(cfg: TokenizeConfig, data_files: list[Path], tokenizer_dir: Path, shards_dir: Path,
                 seed: int) -> dict[str, Any]:
    """Train/reuse the tokenizer and pack `data_files` into `shards_dir`; returns stats (see module doc)."""
    t0 = time.perf_counter()
    files = _checked_inputs(data_files)
    tokenizer_dir, shards_dir = Path(tokenizer_dir), Path(shards_dir)
    shards_dir.mkdir(parents=True, exist_ok=True)
    (shards_dir / PROGRESS_DIR).mkdir(exist_ok=True)
    for tmp in shards_dir.glob(".*.tmp"):
        tmp.unlink()

    corpus = scan_corpus(cfg, files, seed, cfg.progress)
    if not corpus.units:
        raise ValueError(f"data_files: no documents found in {len(files)} file(s)")
    t_scan = time.perf_counter()
    tok, sha, trained_bytes = _prepare_tokenizer(cfg, corpus, tokenizer_dir, seed)
    t_tok = time.perf_counter()
    vocab_size = tok.get_vocab_size()
    special = foreign.special_ids(tokenizer_dir / TOKENIZER_FILE)  # ours: 1/2/0; a base model's: its own
    dtype = _shard_dtype(cfg, vocab_size)
    fingerprint = _digest({
        "format": FORMAT, "version": VERSION, "tokenizer_sha256": sha, "dtype": dtype.name, "add_bos": cfg.add_bos,
        "val_fraction": cfg.val_fraction, "seed": seed, "shard_bytes": cfg.shard_bytes,
        "text_field": cfg.text_field, "id_field": cfg.id_field, "files": _files_signature(files),
    })

    records, todo = _pending_units(corpus, shards_dir, fingerprint, dtype)
    if todo:
        (shards_dir / INDEX_FILE).unlink(missing_ok=True)  # incomplete until every unit is done again
    done_bytes = corpus.total_bytes - sum(u.num_bytes for u in todo)
    bar = tqdm(total=corpus.total_bytes, initial=done_bytes, unit="B", unit_scale=True, desc="tokenize: pack",
               disable=not cfg.progress, file=sys.stderr, smoothing=0.1)
    t_pack = time.perf_counter()
    for rec in _pack_units(tok, tokenizer_dir / TOKENIZER_FILE, corpus, todo, cfg, dtype, shards_dir, fingerprint,
                           bar, special):
        records[rec["unit"]["index"]] = rec
    bar.close()
    pack_s = time.perf_counter() - t_pack

    index = _build_index(records, vocab_size, dtype, sha, cfg, seed, special)
    _remove_stale(index, corpus, shards_dir)
    _write_json_atomic(shards_dir / INDEX_FILE, index)

    packed_bytes = sum(u.num_bytes for u in todo)
    return {
        "vocab_size": vocab_size,
        "dtype": dtype.name,
        "tokenizer_sha256": sha,
        "tokenizer_trained": trained_bytes > 0,
        "tokenizer_train_bytes": trained_bytes,
        "num_units": len(corpus.units),
        "num_units_skipped": len(corpus.units) - len(todo),
        "num_workers": _num_workers(cfg, todo) if todo else 0,
        "train": {k: v for k, v in index["splits"]["train"].items() if k != "shards"},
        "val": {k: v for k, v in index["splits"]["val"].items() if k != "shards"},
        "scan_s": t_scan - t0,
        "tokenizer_s": t_tok - t_scan,
        "pack_s": pack_s,
        "pack_mb_per_s": packed_bytes / 1e6 / pack_s if pack_s > 0 and packed_bytes else 0.0,
        "wall_s": time.perf_counter() - t0,
    }
