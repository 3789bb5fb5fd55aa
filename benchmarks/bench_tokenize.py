"""Tokenize stage vs tokenizers' own encode_batch, on the same text, in one process.

    .venv/bin/python benchmarks/bench_tokenize.py [--quick] [--repeat N] [--batch-bytes B]
    .venv/bin/python benchmarks/bench_tokenize.py --memory-mb 100   # peak RSS of the whole stage on 100 MB

Builds a parquet corpus (column `text`, like curate's output) from ../shared/data (TinyStories + DCLM web pages,
non-ASCII included), trains one tokenizer, then times, interleaved and repeated, each run in a fresh process:
- `encode_batch`: Tokenizer.from_file(tokenizer.json).encode_batch(all texts), texts already in memory (the Rust
  encoder alone; loaded fresh each round like ours, so neither side keeps a warm BPE word cache across rounds);
- `encode_batch_fast`: the same without offsets (we call encode_batch: no measurable gain from _fast here);
- `ours`: run_tokenize() with that tokenizer (tokenizer_file=..., so no training): read parquet, scan + hash
  + split, encode, convert, write shards and index — the whole stage, from a fresh shards folder.
Reports MB/s of UTF-8 text (median of the repeats) and ours / encode_batch. Target: >= 0.9x.
Also times the BPE training once (not part of the ratio: encode_batch has no training step).

    .venv/bin/python benchmarks/bench_tokenize.py --parallel-mb 224 [--files 4] [--repeat 2]

Parallel packing: a corpus of that many MB (the shared stories and web pages repeated, each copy shuffled and
tagged so every document is distinct) in `--files` parquet files, one tokenizer trained once; then the whole stage
with `num_proc=1` (today's single process, the Rust encoder on all cores) and `num_proc=N` (a pool of N = cores
worker processes), alternating, each in a fresh child process. Prints MB/s, the ratio (target >= 1.7x on 2 cores)
and whether the shard bytes are identical.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]

from data_pipelines.tokenize import TokenizeConfig, run_tokenize  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data").resolve()


def corpus_texts() -> list[str]:
    stories = (DATA / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8").split("\n<|endoftext|>\n")
    web = [json.loads(line)["text"] for line in (DATA / "web" / "dclm_labeled_499.jsonl").open(encoding="utf-8")]
    return [t for t in stories + web if t]


def memory_check(target_mb: float) -> None:
    """Peak RSS of a child process that tokenizes `target_mb` of text (streaming: should not grow with size)."""
    import resource

    base = corpus_texts()
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_mem_") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data.parquet"
        writer, written, c = None, 0, 0
        while written < target_mb * 1e6:
            texts = [f"{t}\n[{c}]" for t in base]
            table = pa.table({"text": texts, "id": [f"{c}-{i}" for i in range(len(texts))]})
            writer = writer or pq.ParquetWriter(data, table.schema)
            writer.write_table(table, row_group_size=2048)
            written += sum(len(t.encode("utf-8")) for t in texts)
            c += 1
        writer.close()
        code = (f"from pathlib import Path; from data_pipelines.tokenize import TokenizeConfig, run_tokenize; "
                f"s = run_tokenize(TokenizeConfig(vocab_size=4096, max_train_bytes=5_000_000, progress=False), "
                f"[Path({str(data)!r})], Path({str(tmp / 'tok')!r}), Path({str(tmp / 'shards')!r}), 0); "
                f"print(round(s['wall_s'], 1), 's', round(s['pack_mb_per_s'], 2), 'MB/s pack')")
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                             env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"memory: {written / 1e6:.0f} MB of text -> peak RSS {peak_mb:.0f} MB "
              f"(child wall {time.perf_counter() - t:.0f} s; {out.stdout.strip()})")


def parallel_check(target_mb: float, num_files: int, repeat: int) -> None:
    """num_proc=1 vs num_proc=cores on a corpus of `target_mb` MB in `num_files` files (see the module doc)."""
    import hashlib
    import random

    base = corpus_texts()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_par_") as tmp_s:
        tmp = Path(tmp_s)
        files = [tmp / f"part-{i}.parquet" for i in range(num_files)]
        rng = random.Random(0)
        written, c = 0, 0
        for f in files:
            writer, part = None, 0
            while part < target_mb * 1e6 / num_files:
                texts = [f"{t}\n[{c}]" for t in rng.sample(base, len(base))]
                table = pa.table({"text": texts, "id": [f"{c}-{i}" for i in range(len(texts))]})
                writer = writer or pq.ParquetWriter(f, table.schema)
                writer.write_table(table, row_group_size=2048)
                part += sum(len(t.encode("utf-8")) for t in texts)
                c += 1
            writer.close()
            written += part
        print(f"corpus: {written / 1e6:.0f} MB of text in {num_files} parquet files; {cores} cores")
        run_tokenize(TokenizeConfig(vocab_size=4096, max_train_bytes=5_000_000, progress=False, num_proc=1), files[:1],
                     tmp / "tok", tmp / "shards_train", 0)
        tok_file = tmp / "tok" / "tokenizer.json"
        wall: dict[int, list[float]] = {1: [], cores: []}
        busy: dict[int, list[float]] = {1: [], cores: []}  # CPU seconds / wall seconds: cores kept busy
        digests: dict[int, str] = {}
        for r in range(repeat):
            for n in ([1, cores] if r % 2 == 0 else [cores, 1]):  # alternate the order: the machine is shared
                out_dir = tmp / f"shards_{n}"
                shutil.rmtree(out_dir, ignore_errors=True)
                code = (f"from pathlib import Path; from data_pipelines.tokenize import TokenizeConfig, run_tokenize; "
                        f"s = run_tokenize(TokenizeConfig(tokenizer_file={str(tok_file)!r}, progress=False, "
                        f"num_proc={n}), {[str(f) for f in files]!r}, Path({str(tmp / 'tok_run')!r}), "
                        f"Path({str(out_dir)!r}), 0); print(s['wall_s'], s['num_workers'])")
                ru0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                     check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                ru1, t1 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
                # the child's CPU time, its pool workers' included (reaped by it, so counted in its children)
                busy[n].append((ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / (t1 - t0))
                w, workers = out.stdout.split()
                wall[n].append(float(w))
                h = hashlib.sha256()
                for p in sorted(out_dir.glob("*.bin")) + [out_dir / "index.json"]:
                    h.update(p.name.encode() + p.read_bytes())
                digests[n] = h.hexdigest()
                print(f"  round {r}: num_proc={n} ({workers} workers) {float(w):.1f} s, {busy[n][-1]:.2f} cores busy "
                      "on average (process start included)", flush=True)
    one, many = statistics.median(wall[1]), statistics.median(wall[cores])
    print("\n| stage | MB/s (median wall) | runs (s) | cores busy (median) |\n|---|---|---|---|")
    for n in (1, cores):
        print(f"| num_proc={n} | {written / 1e6 / statistics.median(wall[n]):.2f} | "
              f"{' '.join(f'{x:.1f}' for x in wall[n])} | {statistics.median(busy[n]):.2f} of {cores} |")
    print(f"ceiling of any pool over the single process: {cores / statistics.median(busy[1]):.2f}x "
          "(cores / cores the single process already keeps busy)")
    ratio = one / many
    print(f"pool / single process = {ratio:.2f}x (target >= 1.7x: {'PASS' if ratio >= 1.7 else 'FAIL'}); "
          f"shards and index byte-identical: {len(set(digests.values())) == 1}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~3 MB of text, 3 repeats")
    ap.add_argument("--repeat", type=int, default=0, help="timed repeats per contender (default 3 quick, 5 full)")
    ap.add_argument("--memory-mb", type=float, default=0,
                    help="instead: pack a corpus of this many MB in a child process and report its peak RSS")
    ap.add_argument("--batch-bytes", type=int, default=TokenizeConfig.batch_bytes, help="TokenizeConfig.batch_bytes")
    ap.add_argument("--parallel-mb", type=float, default=0,
                    help="instead: num_proc=1 vs a process pool on a corpus of this many MB")
    ap.add_argument("--files", type=int, default=4, help="--parallel-mb: parquet files the corpus is split into")
    args = ap.parse_args()
    if args.parallel_mb:
        return parallel_check(args.parallel_mb, args.files, args.repeat or 2)
    if args.memory_mb:
        return memory_check(args.memory_mb)
    copies = 1 if args.quick else 4
    repeat = args.repeat or (3 if args.quick else 5)

    base = corpus_texts()
    texts = [t if c == 0 else f"{t}\n[{c}]" for c in range(copies) for t in base]  # distinct docs per copy
    num_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory(prefix="bench_tokenize_") as tmp_s:
        tmp = Path(tmp_s)
        data = tmp / "data.parquet"
        pq.write_table(pa.table({"text": texts, "id": [f"doc{i}" for i in range(len(texts))]}), data, row_group_size=2048)
        print(f"corpus: {len(texts)} docs, {num_bytes / 1e6:.1f} MB UTF-8, parquet {data.stat().st_size / 1e6:.1f} MB")

        cfg = TokenizeConfig(vocab_size=4096, progress=False, val_fraction=0.01)
        t = time.perf_counter()
        stats = run_tokenize(cfg, [data], tmp / "tok", tmp / "shards_train", seed=0)
        train_s = time.perf_counter() - t
        print(f"first run incl. BPE training (vocab 4096): {train_s:.2f} s "
              f"(training {stats['tokenizer_s']:.2f} s), {stats['train']['bytes_per_token']:.2f} bytes/token")
        tok_file = tmp / "tok" / "tokenizer.json"

        # Each timed run is a fresh child process: in one long-lived process, whatever tokenizes first runs up
        # to ~1.5x faster than later runs (measured by reversing the order), which would bias the ratio.
        child = textwrap.dedent(f"""
            import sys, time
            from pathlib import Path
            import pyarrow.parquet as pq
            from tokenizers import Tokenizer
            from data_pipelines.tokenize import TokenizeConfig, run_tokenize
            which = sys.argv[1]
            texts = pq.read_table({str(data)!r}, columns=["text"]).column("text").to_pylist()
            t, c = time.perf_counter(), time.process_time()
            if which == "ours":
                cfg = TokenizeConfig(tokenizer_file={str(tok_file)!r}, progress=False, val_fraction=0.01,
                                     batch_bytes={args.batch_bytes})
                run_tokenize(cfg, [Path({str(data)!r})], Path({str(tmp / "tok_ours")!r}),
                             Path({str(tmp / "shards_ours")!r}), seed=0)
            else:
                getattr(Tokenizer.from_file({str(tok_file)!r}), which)(texts, add_special_tokens=False)
            print(time.perf_counter() - t, time.process_time() - c)
        """)
        names = ["encode_batch", "encode_batch_fast", "ours"]
        wall: dict[str, list[float]] = {k: [] for k in names}
        cpu: dict[str, list[float]] = {k: [] for k in names}
        for r in range(repeat):
            for name in names[r % 3:] + names[:r % 3]:  # rotate the order: the machine is shared and noisy
                shutil.rmtree(tmp / "shards_ours", ignore_errors=True)
                out = subprocess.run([sys.executable, "-c", child, name], cwd=ROOT, capture_output=True, text=True,
                                     check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
                w, c = map(float, out.stdout.split())
                wall[name].append(w)
                cpu[name].append(c)
        contenders = names

    print(f"{'contender':<20} {'MB/s wall':>10} {'MB/s cpu':>9}   wall per run (s)")
    for k in contenders:
        print(f"{k:<20} {num_bytes / 1e6 / statistics.median(wall[k]):>10.2f} "
              f"{num_bytes / 1e6 / statistics.median(cpu[k]):>9.2f}   {' '.join(f'{x:.2f}' for x in wall[k])}")
    for ref in ("encode_batch", "encode_batch_fast"):
        r_wall = statistics.median(a / b for a, b in zip(wall[ref], wall["ours"]))
        r_cpu = statistics.median(cpu[ref]) / statistics.median(cpu["ours"])
        verdict = f"  (target >= 0.9x: {'PASS' if r_wall >= 0.9 else 'FAIL'})" if ref == "encode_batch" else ""
        print(f"ours / {ref:<18} = {r_wall:.3f}x wall (median of per-round ratios), {r_cpu:.3f}x cpu{verdict}")


if __name__ == "__main__":
    main()
