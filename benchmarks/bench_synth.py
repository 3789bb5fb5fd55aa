"""The offline story grammar vs real TinyStories, side by side.

Real: ../shared/data/tinystories/tinystories_2000.txt (2,000 stories by GPT-3.5/4, Eldan & Li 2023).
Ours: the same number of grammar stories from run_synth (default config, seed 0).

Measured (each corpus cut to the same number of words where a figure depends on size):
- distinct 4-gram ratio: distinct word 4-grams / all word 4-grams (higher = more varied), for the
  whole corpus and the mean per story;
- vocabulary: distinct word types; share of our ~1,700 lemmas the corpus uses (any inflection);
  share of the corpus's tokens outside our simple vocabulary (the not_simple gate's measure);
- length: words per story (mean, p10/p50/p90), paragraphs per story;
- the quality gates' verdicts on the real stories (no required words or dialogue check: they had other prompts);
- speed: grammar stories per second (one process, all gates on).

Run: .venv/bin/python benchmarks/bench_synth.py [--quick]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq

from data_pipelines.synthetic import SynthConfig, run_synth  # noqa: E402
from data_pipelines.synthetic.config import GateConfig  # noqa: E402
from data_pipelines.synthetic.gates import QualityGates, unknown_share  # noqa: E402
from data_pipelines.synthetic.prompts import PromptBuilder  # noqa: E402
from data_pipelines.synthetic.vocab import Vocabulary, forms  # noqa: E402

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories" / "tinystories_2000.txt"
WORD = re.compile(r"[a-z]+(?:['’-][a-z]+)*")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def distinct4(ws: list[str]) -> float:
    grams = [tuple(ws[i : i + 4]) for i in range(len(ws) - 3)]
    return len(set(grams)) / len(grams) if grams else 0.0


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def measure(stories: list[str], vocab: Vocabulary, budget_words: int) -> dict[str, float]:
    per = [words(s) for s in stories]
    flat: list[str] = []
    for w in per:
        flat.extend(w)
    flat = flat[:budget_words]
    types = set(flat)
    lemma_hits = sum(1 for lemma in vocab.lemmas if forms(lemma) & types)
    lengths = [len(w) for w in per]
    paras = [len([p for p in re.split(r"\n\s*\n|\n", s) if p.strip()]) for s in stories]
    return {
        "stories": len(stories),
        "distinct 4-grams (corpus, equal words)": distinct4(flat),
        "distinct 4-grams (mean per story)": statistics.mean(distinct4(w) for w in per if len(w) > 3),
        "word types (equal words)": len(types),
        "our lemmas used (share)": lemma_hits / len(vocab.lemmas),
        "tokens outside simple vocab": statistics.mean(unknown_share(s, vocab.simple_forms) for s in stories),
        "words/story mean": statistics.mean(lengths),
        "words/story p10": pct(lengths, 0.1),
        "words/story p50": pct(lengths, 0.5),
        "words/story p90": pct(lengths, 0.9),
        "paragraphs/story mean": statistics.mean(paras),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 stories instead of 2,000")
    args = ap.parse_args()
    if not REAL.is_file():
        sys.exit(f"real sample not found: {REAL}")
    real = [s.strip() for s in REAL.read_text(encoding="utf-8").split("<|endoftext|>") if s.strip()]
    n = 500 if args.quick else len(real)
    real = real[:n]
    vocab = Vocabulary.load()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        stats = run_synth(SynthConfig(num_stories=n), Path(tmp), seed=0)
        dt = time.perf_counter() - t0
        ours = pq.read_table(Path(tmp) / "synth-00000.parquet").column("text").to_pylist()
    budget = min(sum(len(words(s)) for s in real), sum(len(words(s)) for s in ours))
    m_real, m_ours = measure(real, vocab, budget), measure(ours, vocab, budget)

    print(f"grammar vs real TinyStories ({n} stories each; size-dependent figures on {budget:,} words each)")
    print(f"{'metric':42s} {'real':>10s} {'grammar':>10s} {'grammar/real':>13s}")
    for k in m_real:
        a, b = m_real[k], m_ours[k]
        fmt = "{:10.3f}" if isinstance(a, float) and a < 10 else "{:10.1f}"
        ratio = f"{b / a:13.2f}" if a else f"{'-':>13s}"
        print(f"{k:42s} {fmt.format(a)} {fmt.format(b)} {ratio}")

    # the gates on real stories (required words off: those stories answered other prompts)
    gates = QualityGates(GateConfig(require_words=False, require_dialogue=False), vocab)
    builder = PromptBuilder(SynthConfig(), vocab, seed=0)
    reqs = [builder.build(i) for i in range(len(real))]
    verdicts = gates.check_batch(reqs, real)
    c = Counter(v or "accepted" for v in verdicts)
    print(f"\nquality gates on the real stories (required words and dialogue off): {dict(c.most_common())}")
    shares = sorted(unknown_share(s, vocab.simple_forms) for s in real)
    print("real stories' share of tokens outside our simple vocabulary: "
          f"p50 {pct(shares, 0.5):.3f}  p90 {pct(shares, 0.9):.3f}  p99 {pct(shares, 0.99):.3f}")
    print(f"\ngrammar run: {stats['num_accepted']} kept of {stats['num_prompts']} prompts "
          f"({stats['acceptance']:.1%}), rejected {stats['rejected']}, "
          f"{n / dt:.0f} stories/s end to end (gates, dedup, parquet) in one process")


if __name__ == "__main__":
    main()
