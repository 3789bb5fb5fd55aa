"""run_tokenize end to end: exact packing, the split, determinism, resume after a real kill, uint32 shards,
input formats. The corpus is real text from ../shared/data written as curate-style parquet."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_pipelines.tokenize import ShardIndex, TokenizeConfig, load_tokenizer, run_tokenize
from data_pipelines.tokenize.pack import PROGRESS_DIR

REPO = Path(__file__).resolve().parents[2]
INJECTED = "A story that quotes the separator <|endoftext|> in its text and goes on — “naïvely”."


def _stories(shared_data: Path, n: int) -> list[str]:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    return text.split("\n<|endoftext|>\n")[:n]


def _web(shared_data: Path, n: int) -> list[str]:
    lines = (shared_data / "web" / "dclm_labeled_499.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["text"] for line in lines[:n]]


@pytest.fixture(scope="module")
def corpus(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[str], list[str]]:
    """Two parquet files (like curate's output): (files, texts in order, ids in order)."""
    texts = _stories(shared_data, 160) + [INJECTED] + _web(shared_data, 30)
    ids = [f"doc-{i:04d}" for i in range(len(texts))]
    root = tmp_path_factory.mktemp("corpus")
    files = [root / "part-0.parquet", root / "part-1.parquet"]
    half = 100
    pq.write_table(pa.table({"text": texts[:half], "id": ids[:half]}), files[0], row_group_size=64)
    pq.write_table(pa.table({"text": texts[half:], "id": ids[half:]}), files[1], row_group_size=64)
    return files, texts, ids


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    """One full run (trains a 512-token BPE): (tokenizer_dir, shards_dir, stats)."""
    files, _, _ = corpus
    out = tmp_path_factory.mktemp("run")
    cfg = TokenizeConfig(vocab_size=512, val_fraction=0.1, shard_bytes=60_000, batch_bytes=20_000, progress=False)
    stats = run_tokenize(cfg, files, out / "tokenizer", out / "shards", seed=7)
    return out / "tokenizer", out / "shards", stats


def _docs(idx: ShardIndex, split: str) -> list[np.ndarray]:
    """The split's documents as id arrays (split at EOS; BOS kept)."""
    out = []
    for arr in idx.open(split):
        assert arr[-1] == idx.eos_id, "a shard must end at a document boundary"
        cuts = np.flatnonzero(np.asarray(arr) == idx.eos_id)
        start = 0
        for c in cuts:
            out.append(np.asarray(arr[start:c]))
            start = c + 1
    return out


def _cfg(tok_dir: Path, **kw) -> TokenizeConfig:
    base = {"tokenizer_file": str(tok_dir / "tokenizer.json"), "val_fraction": 0.1, "shard_bytes": 60_000,
            "batch_bytes": 20_000, "progress": False}
    return TokenizeConfig(**{**base, **kw})


def _snapshot(shards: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(shards.iterdir()) if p.is_file()}


def test_shards_hold_exactly_the_documents(corpus, trained) -> None:
    _, texts, _ = corpus
    tok_dir, shards, stats = trained
    idx = ShardIndex.load(shards)
    tok = load_tokenizer(tok_dir)
    assert stats["tokenizer_trained"] and stats["vocab_size"] == idx.vocab_size == 512
    assert idx.dtype == "uint16" and (idx.pad_id, idx.bos_id, idx.eos_id) == (0, 1, 2)
    assert stats["num_units"] > 2 and len(idx.splits["train"].shards) > 2  # several units, several shards
    decoded = {s: [tok.decode(d.tolist(), skip_special_tokens=False) for d in _docs(idx, s)] for s in ("train", "val")}
    # no document in both splits, none lost, none invented; order within a split is corpus order
    assert sorted(decoded["train"] + decoded["val"]) == sorted(texts)
    assert [t for t in texts if t in set(decoded["val"])] == decoded["val"]
    assert not set(decoded["train"]) & set(decoded["val"])
    assert len(decoded["val"]) == round(0.1 * len(texts)) == idx.splits["val"].num_docs
    for s in ("train", "val"):
        info = idx.splits[s]
        assert info.num_tokens == sum(len(a) for a in idx.open(s))
        assert info.num_bytes == sum(len(t.encode("utf-8")) for t in decoded[s])
        assert info.bytes_per_token == pytest.approx(info.num_bytes / info.num_tokens)
        assert idx.bytes_per_token(s) == info.bytes_per_token
        all_ids = np.concatenate(idx.open(s))
        assert int(np.count_nonzero(all_ids == idx.eos_id)) == info.num_docs  # only separators are EOS
        assert int(all_ids.max()) < idx.vocab_size and idx.pad_id not in all_ids
    assert INJECTED in decoded["train"] + decoded["val"]
    with open(shards / "index.json", encoding="utf-8") as f:
        raw = json.load(f)
    assert raw["tokenizer_sha256"] == idx.tokenizer_sha256 and len(idx.tokenizer_sha256) == 64


def test_split_is_by_document_id_and_seeded(corpus, trained, tmp_path: Path) -> None:
    files, texts, ids = corpus
    tok_dir, shards, _ = trained
    tok = load_tokenizer(tok_dir)
    val_a = {tok.decode(d.tolist()) for d in _docs(ShardIndex.load(shards), "val")}
    # same ids in another file layout -> same split
    one = tmp_path / "one.parquet"
    pq.write_table(pa.table({"text": texts[::-1], "id": ids[::-1]}), one)
    run_tokenize(_cfg(tok_dir), [one], tmp_path / "tok1", tmp_path / "s1", seed=7)
    assert {tok.decode(d.tolist()) for d in _docs(ShardIndex.load(tmp_path / "s1"), "val")} == val_a
    # another seed -> another split of the same size
    run_tokenize(_cfg(tok_dir), files, tmp_path / "tok2", tmp_path / "s2", seed=8)
    val_b = {tok.decode(d.tolist()) for d in _docs(ShardIndex.load(tmp_path / "s2"), "val")}
    assert len(val_b) == len(val_a) and val_b != val_a


def test_deterministic_training_and_packing(corpus, trained, tmp_path: Path) -> None:
    files, _, _ = corpus
    tok_dir, shards, _ = trained
    cfg = TokenizeConfig(vocab_size=512, val_fraction=0.1, shard_bytes=60_000, batch_bytes=15_000, progress=False)
    run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "shards", seed=7)  # other batch size: same bytes
    assert (tmp_path / "tok" / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    assert _snapshot(tmp_path / "shards") == _snapshot(shards)


def test_process_pool_writes_the_same_bytes_and_resumes(corpus, trained, tmp_path: Path) -> None:
    """num_proc=2 (spawned workers packing whole units) writes exactly the shards one process writes; a pool run
    after a partial one (two unit records deleted, one shard truncated) redoes only those units, same bytes."""
    files, _, _ = corpus
    tok_dir, shards, _ = trained
    cfg = TokenizeConfig(vocab_size=512, val_fraction=0.1, shard_bytes=60_000, batch_bytes=20_000, progress=False,
                         num_proc=2)
    stats = run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "pool", seed=7)
    assert stats["num_workers"] == 2 and stats["num_units"] >= 3
    assert _snapshot(tmp_path / "pool") == _snapshot(shards)
    pool = tmp_path / "pool"
    (pool / PROGRESS_DIR / "unit_00000.json").unlink()
    (pool / PROGRESS_DIR / "unit_00002.json").unlink()
    victim = next(pool.glob("train_00001.bin"))
    victim.write_bytes(victim.read_bytes()[:10])
    again = run_tokenize(cfg, files, tmp_path / "tok", pool, seed=7)
    assert again["num_units_skipped"] == again["num_units"] - 3
    assert _snapshot(pool) == _snapshot(shards)


def test_rerun_skips_everything_and_config_change_redoes(corpus, trained, tmp_path: Path) -> None:
    files, _, _ = corpus
    tok_dir, _, _ = trained
    cfg = _cfg(tok_dir)
    first = run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "shards", seed=7)
    again = run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "shards", seed=7)
    assert first["num_units_skipped"] == 0 and again["num_units_skipped"] == again["num_units"]
    bos = run_tokenize(_cfg(tok_dir, add_bos=True), files, tmp_path / "tok", tmp_path / "shards", seed=7)
    assert bos["num_units_skipped"] == 0
    idx = ShardIndex.load(tmp_path / "shards")
    assert idx.add_bos
    docs = _docs(idx, "train")
    assert all(d[0] == idx.bos_id and idx.bos_id not in d[1:] for d in docs)
    assert idx.splits["train"].num_tokens == first["train"]["num_tokens"] + first["train"]["num_docs"]


def test_resume_after_kill_skips_finished_shards(corpus, trained, tmp_path: Path) -> None:
    """A child process dies (os._exit, no cleanup) while writing unit 2; the rerun keeps units 0-1 untouched
    and ends byte-identical to an uninterrupted run."""
    files, _, _ = corpus
    tok_dir, _, _ = trained
    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os
        from pathlib import Path
        from data_pipelines.tokenize import TokenizeConfig, run_tokenize, pack
        real_read = pack.sources.read
        units = []
        def read(path, start, num_rows, *a, **k):
            units.append(start)
            for i, batch in enumerate(real_read(path, start, num_rows, *a, batch_rows=16)):
                if len(units) == 3 and i == 3:  # unit 2, after ~50 rows: its first batch is in flight
                    os._exit(137)
                yield batch
        pack.sources.read = read
        cfg = TokenizeConfig(tokenizer_file={str(tok_dir / "tokenizer.json")!r}, val_fraction=0.1,
                             shard_bytes=60_000, batch_bytes=20_000, progress=False)
        run_tokenize(cfg, {[str(f) for f in files]!r}, Path({str(out / "tok")!r}), Path({str(out / "shards")!r}), 7)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    shards = out / "shards"
    assert not (shards / "index.json").exists()
    done = sorted(p.name for p in (shards / PROGRESS_DIR).glob("unit_*.json"))
    assert done == ["unit_00000.json", "unit_00001.json"]
    assert list(shards.glob(".*.tmp")), "the killed unit should have left a partial temp file"
    kept = {p.name: p.stat().st_mtime_ns for p in shards.glob("*_0000[01].bin")}
    assert kept

    stats = run_tokenize(_cfg(tok_dir), files, out / "tok", shards, seed=7)
    assert stats["num_units_skipped"] == 2 < stats["num_units"]
    assert {p.name: p.stat().st_mtime_ns for p in shards.glob("*_0000[01].bin")} == kept
    assert not list(shards.glob(".*.tmp"))
    run_tokenize(_cfg(tok_dir), files, tmp_path / "tok_ref", tmp_path / "ref", seed=7)
    assert _snapshot(shards) == _snapshot(tmp_path / "ref")


def test_uint32_shards_hold_the_same_ids(corpus, trained, tmp_path: Path) -> None:
    files, _, _ = corpus
    tok_dir, shards, _ = trained
    run_tokenize(_cfg(tok_dir, shard_dtype="uint32"), files, tmp_path / "tok", tmp_path / "s32", seed=7)
    idx32, idx16 = ShardIndex.load(tmp_path / "s32"), ShardIndex.load(shards)
    assert idx32.dtype == "uint32" and idx16.dtype == "uint16"
    for split in ("train", "val"):
        a32, a16 = idx32.open(split), idx16.open(split)
        assert [a.dtype for a in a32] == [np.dtype(np.uint32)] * len(a32)
        for sh in idx32.splits[split].shards:
            assert (tmp_path / "s32" / sh.file).stat().st_size == 4 * sh.num_tokens
        np.testing.assert_array_equal(np.concatenate(a32), np.concatenate(a16).astype(np.uint32))


def test_txt_jsonl_and_compressed_inputs(shared_data: Path, trained, tmp_path: Path) -> None:
    tok_dir, _, _ = trained
    tok = load_tokenizer(tok_dir)
    stories = _stories(shared_data, 40)
    txt = tmp_path / "stories.txt"
    txt.write_text("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n", encoding="utf-8")
    jl = tmp_path / "docs.jsonl.gz"
    with gzip.open(jl, "wt", encoding="utf-8") as f:
        for i, t in enumerate(_web(shared_data, 10)):
            f.write(json.dumps({"story": t, "id": i}) + "\n\n")
    stats = run_tokenize(_cfg(tok_dir, text_field="story", shard_bytes=10_000), [txt, jl], tmp_path / "t",
                         tmp_path / "s", seed=1)
    assert stats["train"]["num_docs"] + stats["val"]["num_docs"] == 50
    idx = ShardIndex.load(tmp_path / "s")
    got = [tok.decode(d.tolist()) for s in ("train", "val") for d in _docs(idx, s)]
    assert sorted(got) == sorted(stories + _web(shared_data, 10))


def test_bad_inputs_are_named(trained, tmp_path: Path) -> None:
    tok_dir, _, _ = trained
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"content": ["x"]}), bad)
    with pytest.raises(ValueError, match="bad.parquet: no column 'text'"):
        run_tokenize(_cfg(tok_dir), [bad], tmp_path / "t", tmp_path / "s", seed=0)
    with pytest.raises(ValueError, match="missing.parquet: input file not found"):
        run_tokenize(_cfg(tok_dir), [tmp_path / "missing.parquet"], tmp_path / "t", tmp_path / "s", seed=0)
    csv = tmp_path / "table.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    with pytest.raises(ValueError, match="table.csv: unsupported input format"):
        run_tokenize(_cfg(tok_dir), [csv], tmp_path / "t", tmp_path / "s", seed=0)


def test_training_text_is_capped_and_excludes_val(corpus, tmp_path: Path) -> None:
    files, texts, _ = corpus
    cfg = TokenizeConfig(vocab_size=512, max_train_bytes=30_000, val_fraction=0.1, progress=False)
    stats = run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "shards", seed=7)
    total = sum(len(t.encode("utf-8")) for t in texts)
    assert stats["tokenizer_trained"] and 30_000 <= stats["tokenizer_train_bytes"] < 30_000 + max(
        len(t.encode("utf-8")) for t in texts) < total
    again = run_tokenize(cfg, files, tmp_path / "tok", tmp_path / "shards", seed=7)
    assert not again["tokenizer_trained"] and again["tokenizer_sha256"] == stats["tokenizer_sha256"]

