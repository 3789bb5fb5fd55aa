"""The transfer measure: synth.reference in stats.json, and bench_synth_transfer's plumbing on a tiny budget."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from data_pipelines.synthetic import SynthConfig, run_synth
from data_pipelines.synthetic.transfer import transfer_score

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / ".." / "shared" / "data" / "tinystories" / "tinystories_2000.txt"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not REAL.is_file():
        pytest.skip("shared TinyStories sample absent")
    stories = REAL.read_text(encoding="utf-8").split("<|endoftext|>")[:40]
    path = tmp_path_factory.mktemp("ref") / "real.txt"
    path.write_text("\n<|endoftext|>\n".join(s.strip() for s in stories))
    return path


@pytest.mark.slow
def test_reference_puts_a_students_real_bpb_in_stats(tmp_path: Path, reference: Path) -> None:
    cfg = SynthConfig(num_stories=60, reference=str(reference), reference_tokens=20_000)
    stats = run_synth(cfg, tmp_path, seed=0)
    t = stats["transfer"]
    assert t["reference_stories"] == 40 and t["train_tokens"] > 0
    assert 0.5 < t["bits_per_byte"] < 8.0  # a real number of bits per byte, not a placeholder
    assert json.loads((tmp_path / "stats.json").read_text())["transfer"]["bits_per_byte"] == t["bits_per_byte"]


@pytest.mark.slow
def test_real_stories_teach_real_stories_better_than_nonsense(reference: Path) -> None:
    """The measure can fail: a student trained on real stories beats one trained on word salad."""
    real = REAL.read_text(encoding="utf-8").split("<|endoftext|>")[100:260]
    words = " ".join(real).split()
    salad = [" ".join(words[i::7][:150]) for i in range(7)] * 20
    a = transfer_score(real, reference, 30_000, seed=0)["bits_per_byte"]
    b = transfer_score(salad, reference, 30_000, seed=0)["bits_per_byte"]
    assert a < b - 0.1, (a, b)


def test_reference_must_exist() -> None:
    with pytest.raises(ValueError, match="reference_tokens"):
        SynthConfig(reference="x.txt", reference_tokens=0)


def _bench():
    spec = importlib.util.spec_from_file_location("bench_synth_transfer", REPO / "benchmarks" / "bench_synth_transfer.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_synth_transfer"] = bench
    spec.loader.exec_module(bench)
    return bench


def test_teacher_shards_add_up(tmp_path: Path) -> None:
    """--teacher-shards: the shards' counts are summed, and the servers' rates (each from its own journal's clock)
    are added, since they ran side by side."""
    bench = _bench()
    part = {"num_prompts": 10, "num_accepted": 3, "num_rejected": 7, "num_replayed_from_journal": 0, "num_retries": 0,
            "rejected": {"missing_words": 5, "too_short": 2}, "wall_s": 100.0, "acceptance": 0.3,
            "candidates": {"asked": 20, "passed": 4, "rejected": {"missing_words": 16}}}
    other = part | {"num_accepted": 1, "num_rejected": 9, "rejected": {"missing_words": 9}, "wall_s": 120.0,
                    "candidates": {"asked": 20, "passed": 1, "rejected": {"chatter": 19}}}
    st = bench.merge_stats([part, other])
    assert st["num_prompts"] == 20 and st["num_accepted"] == 4 and st["acceptance"] == 0.2
    assert st["rejected"] == {"missing_words": 14, "too_short": 2} and st["wall_s"] == 120.0
    assert st["candidates"] == {"asked": 40, "passed": 5, "rejected": {"missing_words": 16, "chatter": 19}}
    journals = [tmp_path / "journal-00000.jsonl", tmp_path / "journal-00001.jsonl"]
    for j, step in zip(journals, (10.0, 20.0)):  # 0.1 and 0.05 prompts/s
        j.write_text("".join(json.dumps({"id": str(i), "t": 1000.0 + i * step, "candidates": [{}, {}]}) + "\n"
                             for i in range(5)))
    out = bench.throughput(journals + [tmp_path / "absent.jsonl"], st, 1.0)
    assert out.startswith("0.1500 prompts/s") and "10 journaled prompts, 2 server(s)" in out, out
    assert "2.0 candidates" in out and "accepted stories/s = 0.0300" in out, out
    # a journal resumed after a pause: the pause is not generation time
    stamps = [1000.0, 1010.0, 1020.0, 9000.0, 9010.0, 9020.0]
    journals[1].write_text("".join(json.dumps({"id": str(i), "t": t}) + "\n" for i, t in enumerate(stamps)))
    out = bench.throughput(journals, st, 1.0)
    assert out.startswith("0.2000 prompts/s"), out  # 0.1 + 0.1 (4 answers in 40 s), not 0.1 + 5 / 8020


def test_cut_to_bytes_never_passes_the_budget() -> None:
    bench = _bench()
    docs = ["one two three four", "five six seven eight nine", "ten"]
    assert bench.cut_to_bytes(docs, 100) == docs
    assert bench.cut_to_bytes(docs, 19) == ["one two three four"]  # 18 bytes + 1 separator
    cut = bench.cut_to_bytes(docs, 30)  # 19 + "five six" (8) + 1 <= 30: the second story cut at a space
    assert cut == ["one two three four", "five six"]
    assert sum(len(d.encode()) + 1 for d in cut) <= 30
    assert bench.cut_to_bytes(docs, 5) == ["one"]


def test_worth_real_bytes_reads_the_real_curve() -> None:
    """--real-multiples: the teacher's bpb placed on the real students' curve, linear in log(bytes)."""
    bench = _bench()

    def row(run: str, nbytes: int, bpb: float) -> dict:
        return {"run": run, "corpus_bytes": nbytes, "bpb": bpb}

    curve = [row(bench.real_name(0.5), 10_000, 3.0), row("real@teacher", 20_000, 2.6),
             row(bench.real_name(4), 80_000, 2.0), row("grammar@teacher", 20_000, 2.2)]
    side, worth = bench.worth_real_bytes([*curve, row("teacher", 20_000, 2.6)], "teacher")
    assert side == "" and worth == pytest.approx(20_000)
    side, worth = bench.worth_real_bytes([*curve, row("teacher", 20_000, 2.8)], "teacher")
    assert side == "" and worth == pytest.approx((10_000 * 20_000) ** 0.5)  # half way in log bytes
    assert bench.worth_real_bytes([*curve, row("teacher", 20_000, 2.3)], "grammar@teacher")[1] == pytest.approx(
        20_000 * 4 ** (2 / 3))  # 2.2 is two thirds of the way from 2.6 to 2.0
    assert bench.worth_real_bytes([*curve, row("teacher", 20_000, 1.5)], "teacher") == (">", 80_000)
    assert bench.worth_real_bytes([*curve, row("teacher", 20_000, 3.5)], "teacher") == ("<", 10_000)
    assert bench.worth_real_bytes([row("real@teacher", 1, 2.0), row("teacher", 1, 2.0)], "teacher") == ("", None)
    rows = sorted([row(bench.real_name(10), 9, 1.0), row(bench.real_name(2), 5, 1.0), row("teacher", 1, 2.0)],
                  key=bench.order)
    assert [r["run"] for r in rows] == ["teacher", "real@2xteacher", "real@10xteacher"]


@pytest.mark.slow
def test_bench_synth_transfer_plumbing(tmp_path: Path) -> None:
    if not REAL.is_file():
        pytest.skip("shared TinyStories sample absent")
    bench = _bench()
    train, val = bench.split_stories(0)
    grammar, stats = bench.grammar_corpus(tmp_path, 40, 0)
    assert len(grammar) == 40 and stats["num_accepted"] == 40
    cut = bench.cut_to_bytes(train, sum(len(x.encode()) + 1 for x in grammar))
    assert abs(sum(len(x.encode()) + 1 for x in cut) - sum(len(x.encode()) + 1 for x in grammar)) < 3000
    rows = [bench.student(name, docs, val[:20], 2e9, tmp_path, 0) for name, docs in
            (("real", train[:200]), ("grammar", grammar))]
    assert [r["run"] for r in rows] == ["real", "grammar"]
    assert rows[0]["params"] == rows[1]["params"] and rows[0]["tokens"] == rows[1]["tokens"]  # same model, same tokens
    for r in rows:
        assert 0.5 < r["bpb"] < 9 and 0 < r["distinct4"] <= 1 and "word_usage" in r["probes"]
    bench.report(rows, {"grammar": stats})
