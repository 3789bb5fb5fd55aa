"""Tokenize stage vs tokenizers' own encode_batch, on the same text, in one process.

    .venv/bin/python benchmarks/bench_tokenize.py [--quick] [--repeat N]

Builds a parquet corpus (column `text`, like curate's output) from ../shared/data (TinyStories + DCLM web pages,
non-ASCII included), trains one tokenizer, then times, interleaved and repeated:
- `encode_batch`: Tokenizer.encode_batch(all texts) on texts already in memory (the Rust encoder alone);
- `encode_batch_fast`: the same without offsets (what we call);
- `ours`: run_tokenize() with that tokenizer (tokenizer_file=..., so no training): read parquet, scan + hash
  + split, encode, convert, write shards and index — the whole stage, from a fresh shards folder.
Reports MB/s of UTF-8 text (median of the repeats) and ours / encode_batch. Target: >= 0.9x.
Also times the BPE training once (not part of the ratio: encode_batch has no training step).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_pipelines.tokenize import TokenizeConfig, run_tokenize  # noqa: E402
from data_pipelines.tokenize.bpe import load_tokenizer  # noqa: E402

DATA = (ROOT / ".." / "shared" / "data").resolve()


def corpus_texts() -> list[str]:
    stories = (DATA / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8").split("\n<|endoftext|>\n")
    web = [json.loads(line)["text"] for line in (DATA / "web" / "dclm_labeled_499.jsonl").open(encoding="utf-8")]
    return [t for t in stories + web if t]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="~3 MB of text, 3 repeats")
    ap.add_argument("--repeat", type=int, default=0, help="timed repeats per contender (default 3 quick, 5 full)")
    args = ap.parse_args()
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
        tok = load_tokenizer(tok_file)
        ours_cfg = TokenizeConfig(tokenizer_file=str(tok_file), progress=False, val_fraction=0.01)

        times: dict[str, list[float]] = {"encode_batch": [], "encode_batch_fast": [], "ours": []}
        for r in range(repeat + 1):  # the first round warms caches and the thread pool; not counted
            t = time.perf_counter()
            tok.encode_batch(texts, add_special_tokens=False)
            t_eb = time.perf_counter() - t
            t = time.perf_counter()
            tok.encode_batch_fast(texts, add_special_tokens=False)
            t_ebf = time.perf_counter() - t
            shards = tmp / f"shards_{r}"
            t = time.perf_counter()
            run_tokenize(ours_cfg, [data], tmp / "tok_ours", shards, seed=0)
            t_ours = time.perf_counter() - t
            shutil.rmtree(shards)
            if r:
                times["encode_batch"].append(t_eb)
                times["encode_batch_fast"].append(t_ebf)
                times["ours"].append(t_ours)

    mbps = {k: num_bytes / 1e6 / statistics.median(v) for k, v in times.items()}
    print(f"{'contender':<20} {'MB/s (median)':>14} {'runs (s)':>30}")
    for k, v in times.items():
        print(f"{k:<20} {mbps[k]:>14.2f}   {' '.join(f'{x:.2f}' for x in v):>28}")
    ratio = mbps["ours"] / mbps["encode_batch"]
    print(f"ours / encode_batch      = {ratio:.3f}x  (target >= 0.9x: {'PASS' if ratio >= 0.9 else 'FAIL'})")
    print(f"ours / encode_batch_fast = {mbps['ours'] / mbps['encode_batch_fast']:.3f}x")


if __name__ == "__main__":
    main()
