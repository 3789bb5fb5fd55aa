"""Exact and MinHash dedup: thresholds, recall on lightly edited stories, no false pairs."""

from __future__ import annotations

import random

import numpy as np
import pytest

from data_pipelines.curate.dedup import ExactDeduper, MinHashDeduper


def _stories(shared_data) -> list[str]:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()]


def _edit(text: str, frac: float, rng: random.Random, vocab: list[str]) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), max(1, round(len(words) * frac))):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def test_exact_dedup_normalizes_case_punctuation_and_spacing():
    ex = ExactDeduper(normalize=True)
    assert ex.is_duplicate("a", "Hello, world!  How are you?") is None
    assert ex.is_duplicate("b", "hello world how are you") == "a"
    assert ex.is_duplicate("c", "hello world how are we") is None
    strict = ExactDeduper(normalize=False)
    assert strict.is_duplicate("a", "Hello") is None
    assert strict.is_duplicate("b", "hello") is None
    assert strict.is_duplicate("c", "Hello") == "a"
    assert len(ex) == 2


def test_threshold_and_collision_probability():
    mh = MinHashDeduper(ngram=5, num_bands=14, rows_per_band=8)
    assert mh.threshold == pytest.approx((1 / 14) ** (1 / 8))
    assert 0.71 < mh.threshold < 0.73
    assert mh.collision_probability(0.9) > 0.99
    assert mh.collision_probability(0.3) < 0.001
    with pytest.raises(ValueError, match="ngram"):
        MinHashDeduper(ngram=0)


def test_signatures_are_deterministic_and_seeded():
    text = "the quick brown fox jumps over the lazy dog and runs far away into the woods"
    a = MinHashDeduper(seed=3).signature(text)
    b = MinHashDeduper(seed=3).signature(text)
    c = MinHashDeduper(seed=4).signature(text)
    assert a.dtype == np.uint32 and a.shape == (112,)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    # batch == one by one
    texts = [text, "another short one", "", text.upper()]
    mh = MinHashDeduper()
    batch = mh.signatures(texts)
    for t, row in zip(texts, batch):
        assert np.array_equal(mh.signature(t), row)
    assert np.array_equal(batch[0], batch[3])  # tokens are lower-cased


def test_empty_and_short_documents():
    mh = MinHashDeduper()
    assert mh.is_duplicate("e1", "") is None
    assert mh.is_duplicate("e2", "  ...  ") is None  # no words: never a duplicate
    assert mh.is_duplicate("s1", "hi there") is None  # fewer words than the n-gram size
    assert mh.is_duplicate("s2", "Hi, there!") == "s1"
    assert mh.query("hi there") == "s1"
    assert len(mh) == 1


def test_query_does_not_insert_and_first_copy_wins():
    mh = MinHashDeduper()
    t = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
    assert mh.query(t) is None
    assert mh.is_duplicate("a", t) is None
    assert mh.is_duplicate("b", t) == "a"
    assert mh.is_duplicate("c", t) == "a"  # duplicates are not inserted, chains point at the first
    assert mh.is_duplicate_batch(["d", "e"], [t, "something else entirely different here now"]) == ["a", None]


def test_near_dup_recall_and_no_false_pairs_on_tinystories(shared_data):
    stories = _stories(shared_data)
    assert len(stories) == 2000
    mh = MinHashDeduper(ngram=5, num_bands=14, rows_per_band=8, seed=0)
    false_pairs = [
        d for i, d in enumerate(mh.is_duplicate_batch([str(i) for i in range(2000)], stories)) if d
    ]
    assert false_pairs == []
    rng = random.Random(0)
    vocab = sorted({w for s in stories[:100] for w in s.split()})
    sample = rng.sample(range(2000), 400)
    edited = [_edit(stories[i], rng.uniform(0.01, 0.02), rng, vocab) for i in sample]
    sims = [MinHashDeduper.jaccard(stories[i], e) for i, e in zip(sample, edited)]
    assert 0.75 < float(np.median(sims)) < 0.95
    found = [mh.query(e) == str(i) for i, e in zip(sample, edited)]
    assert np.mean(found) >= 0.95
