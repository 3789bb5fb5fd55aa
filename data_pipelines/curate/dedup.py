"""Exact and MinHash-LSH near-duplicate detection.

Design
------
Both dedupers split their work into a *key* computation that is pure and parallel (run in worker
processes, on any shard) and a *check* that is sequential and keeps state (run once, in document
order). That split is what makes dedup work across shards: workers ship small integer keys, and the
single pass that owns the tables decides, so the first occurrence (in shard order, then document
order) is kept and every later copy names it.

MinHash: documents are lower-cased ``\\w+`` tokens; each word is hashed once (xxh3-64, stable across
processes and machines, unlike ``hash``), a word n-gram's 64-bit hash is a fixed linear combination
of its word hashes (numpy, uint64 wrap-around), and each of the ``b*r`` permutations is a
multiply-shift hash ``(a*x mod 2^64) >> 32``. The minimum over a document's n-grams is its signature
(uint32[b*r]); a batch of documents is hashed as one flat array and reduced with
``np.minimum.reduceat``, so numpy overhead is paid per batch, not per document. LSH folds each band's
``r`` values into one 64-bit key; two documents that share any band key are candidates, and the
effective Jaccard threshold is ``(1/b)^(1/r)`` (0.72 for 14 bands x 8 rows).

Invariants: a document found to be a duplicate is never inserted (so chains point at the first
copy); documents with no word tokens have no signature and are never near-duplicates.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import numpy as np
import xxhash

from .config import ExactDedupConfig, MinHashConfig
from .steps import DedupStep, register_step

WORD_RE = re.compile(r"\w+")
_NONWORD_RE = re.compile(r"[\W_]+")
_MAX_SHINGLES_PER_CHUNK = 1 << 13  # (permutations x shingles) uint64 temporary stays ~7 MB, cache-sized
_MAX_CACHED_WORDS = 1 << 20  # word-hash cache is cleared past this many entries


def words(text: str) -> list[str]:
    """Lower-cased word tokens (``\\w+``) used for shingling."""
    return WORD_RE.findall(text.lower())


class ExactDeduper:
    """Exact duplicates by a 128-bit hash of the (optionally normalized) text."""

    def __init__(self, normalize: bool = True) -> None:
        self.normalize = normalize
        self._seen: dict[int, str] = {}

    def key(self, text: str) -> int:
        """128-bit hash of the text; with ``normalize`` case, punctuation and spacing are ignored."""
        if self.normalize:
            text = _NONWORD_RE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
        return xxhash.xxh3_128_intdigest(text.encode("utf-8", "surrogatepass"))

    def check_key(self, doc_id: str, key: int) -> str | None:
        """Id of the earlier document with this key, else None (and remember this one)."""
        first = self._seen.get(key)
        if first is None:
            self._seen[key] = doc_id
        return first

    def is_duplicate(self, doc_id: str, text: str) -> str | None:
        """Id of an earlier identical document, else None (and remember this one)."""
        return self.check_key(doc_id, self.key(text))

    def __len__(self) -> int:
        return len(self._seen)


class MinHashDeduper:
    """MinHash signatures over word n-grams + LSH banding (b bands x r rows)."""

    def __init__(self, ngram: int = 5, num_bands: int = 14, rows_per_band: int = 8, seed: int = 0) -> None:
        if ngram < 1 or num_bands < 1 or rows_per_band < 1:
            raise ValueError(
                f"ngram/num_bands/rows_per_band: must be >= 1, got {ngram}/{num_bands}/{rows_per_band}"
            )
        self.ngram = ngram
        self.num_bands = num_bands
        self.rows_per_band = rows_per_band
        self.seed = seed
        rng = np.random.default_rng(seed)
        num_perm = num_bands * rows_per_band
        u64 = np.iinfo(np.uint64).max
        # odd multipliers keep the multiply-shift hashes bijective on the low bits
        self._gram_mul = rng.integers(1, u64, size=ngram, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self._perm_a = rng.integers(1, u64, size=num_perm, dtype=np.uint64, endpoint=True) | np.uint64(1)
        self._band_mul = rng.integers(1, u64, size=rows_per_band, dtype=np.uint64, endpoint=True) | np.uint64(
            1
        )
        self._tables: list[dict[int, str]] = [{} for _ in range(num_bands)]
        self._count = 0
        self._word_cache: dict[str, int] = {}

    @property
    def num_perm(self) -> int:
        return self.num_bands * self.rows_per_band

    @property
    def threshold(self) -> float:
        """Effective Jaccard threshold of the banding: (1/b)^(1/r)."""
        return (1.0 / self.num_bands) ** (1.0 / self.rows_per_band)

    def collision_probability(self, jaccard: float) -> float:
        """P(two docs with this n-gram Jaccard share at least one band) = 1 - (1 - J^r)^b."""
        return 1.0 - (1.0 - jaccard**self.rows_per_band) ** self.num_bands

    # ---- pure part (parallel) ----------------------------------------------------------------
    def _word_hashes(self, toks: list[str]) -> np.ndarray:
        cache = self._word_cache
        try:
            return np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))
        except KeyError:
            if len(cache) > _MAX_CACHED_WORDS:
                cache.clear()
            h = xxhash.xxh3_64_intdigest
            for t in toks:
                if t not in cache:
                    cache[t] = h(t.encode("utf-8", "surrogatepass"))
            return np.fromiter(map(cache.__getitem__, toks), dtype=np.uint64, count=len(toks))

    def _shingle_hashes(self, text: str) -> np.ndarray:
        toks = words(text)
        if not toks:
            return np.empty(0, dtype=np.uint64)
        wh = self._word_hashes(toks)
        n = min(self.ngram, len(toks))
        num = len(toks) - n + 1
        with np.errstate(over="ignore"):
            acc = wh[:num] * self._gram_mul[0]
            for k in range(1, n):
                acc += wh[k : k + num] * self._gram_mul[k]
        return acc

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """uint32[N, b*r] signatures; rows of documents without words are all 0xFFFFFFFF."""
        out_NP = np.full((len(texts), self.num_perm), np.iinfo(np.uint32).max, dtype=np.uint32)
        parts = [self._shingle_hashes(t) for t in texts]
        start = 0
        while start < len(parts):
            # a chunk of whole documents with at most _MAX_SHINGLES_PER_CHUNK shingles (at least one doc)
            end, total = start, 0
            while end < len(parts) and (end == start or total + len(parts[end]) <= _MAX_SHINGLES_PER_CHUNK):
                total += len(parts[end])
                end += 1
            rows = [i for i in range(start, end) if len(parts[i])]
            if rows:
                flat_S = np.concatenate([parts[i] for i in rows])
                offsets = np.cumsum([0] + [len(parts[i]) for i in rows[:-1]])
                # multiply-shift hashing: the top 32 bits of a*x (a odd) are a universal hash, and
                # taking them is monotonic, so the min is taken on the full product, then shifted.
                with np.errstate(over="ignore"):
                    hv_PS = self._perm_a[:, None] * flat_S[None, :]
                min_PD = np.minimum.reduceat(hv_PS, offsets, axis=1) >> np.uint64(32)
                out_NP[rows] = min_PD.T.astype(np.uint32)
            start = end
        return out_NP

    def signature(self, text: str) -> np.ndarray:
        """uint32[b*r] signature of one document."""
        return self.signatures([text])[0]

    def band_keys(self, texts: Sequence[str]) -> np.ndarray:
        """uint64[N, b] LSH keys (one per band); a row of zeros means 'no words, never a duplicate'."""
        sig_NP = self.signatures(texts)
        sig_NBR = sig_NP.reshape(len(texts), self.num_bands, self.rows_per_band).astype(np.uint64)
        with np.errstate(over="ignore"):
            keys_NB = (sig_NBR * self._band_mul[None, None, :]).sum(axis=2, dtype=np.uint64)
            keys_NB |= np.uint64(1)  # never 0: 0 is reserved for "empty"
        empty = (sig_NP == np.iinfo(np.uint32).max).all(axis=1)
        keys_NB[empty] = 0
        return keys_NB

    # ---- stateful part (sequential) ----------------------------------------------------------
    def check_keys(self, doc_id: str, keys: Sequence[int], insert: bool = True) -> str | None:
        """Id of an earlier document sharing a band key, else None (inserting this one if asked)."""
        keys = [int(k) for k in keys]
        if not keys or keys[0] == 0:
            return None
        for table, k in zip(self._tables, keys):
            first = table.get(k)
            if first is not None:
                return first
        if insert:
            for table, k in zip(self._tables, keys):
                table[k] = doc_id
            self._count += 1
        return None

    def is_duplicate(self, doc_id: str, text: str) -> str | None:
        """Id of an earlier near-duplicate, else None (and insert this document)."""
        return self.check_keys(doc_id, self.band_keys([text])[0].tolist())

    def is_duplicate_batch(self, doc_ids: Sequence[str], texts: Sequence[str]) -> list[str | None]:
        """``is_duplicate`` for many documents in order (signatures hashed as one batch)."""
        keys = self.band_keys(texts).tolist()
        return [self.check_keys(i, k) for i, k in zip(doc_ids, keys)]

    def query(self, text: str) -> str | None:
        """Id of an earlier near-duplicate, else None; inserts nothing."""
        return self.check_keys("", self.band_keys([text])[0].tolist(), insert=False)

    def __len__(self) -> int:
        return self._count

    @staticmethod
    def jaccard(a: str, b: str, ngram: int = 5) -> float:
        """Exact Jaccard similarity of the two texts' word n-gram sets (for checks and reports)."""

        def grams(t: str) -> set[tuple[str, ...]]:
            w = words(t)
            n = min(ngram, len(w))
            return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)} if w else set()

        ga, gb = grams(a), grams(b)
        if not ga and not gb:
            return 1.0
        return len(ga & gb) / len(ga | gb)


@register_step
class ExactDedupStep(DedupStep):
    """`exact_dedup`: exact duplicates after normalization, across all shards (reason `exact_dup`)."""

    name = "exact_dedup"
    config_cls = ExactDedupConfig
    reasons = ("exact_dup",)


@register_step
class MinHashStep(DedupStep):
    """`minhash`: near duplicates by MinHash-LSH, across all shards (reason `near_dup`)."""

    name = "minhash"
    config_cls = MinHashConfig
    reasons = ("near_dup",)
