"""launch/serve.py: a real server on 127.0.0.1 driven by the official `openai` client, and run_synth's
openai / tinyfoundry teachers against it (journal resume, retries on 429/5xx, fail-fast on 4xx)."""

from __future__ import annotations

import json
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

openai = pytest.importorskip("openai", reason="the OpenAI-compatible teacher needs the openai client")
torch = pytest.importorskip("torch")

from data_pipelines.synthetic import GateConfig, SynthConfig, run_synth  # noqa: E402
from data_pipelines.synthetic.grammar import write_story  # noqa: E402
from data_pipelines.synthetic.teachers import TeacherConfigError  # noqa: E402
from data_pipelines.synthetic.vocab import Word  # noqa: E402
from launch.serve import make_server  # noqa: E402

OPEN_GATES = GateConfig(require_words=False, max_unknown_share=1.0, min_words=0, max_words=100_000,
                        max_repeated_share=1.0, dedup="none")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny tinyfoundry model + a byte-level BPE tokenizer trained here on grammar stories."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from models import ModelConfig, Transformer, save_model_dir

    root = tmp_path_factory.mktemp("tiny")
    rng = random.Random(0)
    corpus = [write_story(Word(n, "thing"), Word(v, "alone"), Word(a, "look"), (), rng).text
              for n, v, a in [("ball", "jump", "red"), ("cup", "swim", "big"), ("kite", "run", "blue")] * 5]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=256)
    save_model_dir(root / "tiny-story-model", Transformer(cfg), tokenizer_file=root / "tokenizer.json")
    return root / "tiny-story-model"


@pytest.fixture(scope="module")
def server(model_dir: Path) -> Iterator:
    srv = make_server(model_dir, port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(srv) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key="unused", max_retries=0, timeout=60)


def test_binds_loopback_and_lists_the_model(server) -> None:
    assert server.server_address[0] == "127.0.0.1"
    models = list(client(server).models.list())
    assert [m.id for m in models] == ["tiny-story-model"]


def test_completions_match_the_model(server) -> None:
    c = client(server)
    r = c.completions.create(model="tiny-story-model", prompt="Once upon a time", max_tokens=12, temperature=0)
    direct = server.lm.complete(["Once upon a time"], 12, temperature=0)[0]
    assert r.choices[0].text == direct[0]
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens == direct[2] and r.usage.prompt_tokens == server.lm.count_tokens(
        "Once upon a time")
    # n and a list of prompts are served in one batched call
    r2 = c.completions.create(model="tiny-story-model", prompt=["a", "b"], max_tokens=4, n=2, temperature=0.8,
                              seed=1)
    assert len(r2.choices) == 4 and [ch.index for ch in r2.choices] == [0, 1, 2, 3]


def test_chat_and_streaming(server) -> None:
    c = client(server)
    msgs = [{"role": "user", "content": "Write a story about a red ball."}]
    r = c.chat.completions.create(model="tiny-story-model", messages=msgs, max_tokens=16, temperature=0)
    text = r.choices[0].message.content
    assert r.choices[0].message.role == "assistant" and isinstance(text, str)
    stream = c.chat.completions.create(model="tiny-story-model", messages=msgs, max_tokens=16, temperature=0,
                                       stream=True)
    pieces = [ch.choices[0].delta.content or "" for ch in stream if ch.choices]
    assert "".join(pieces) == text
    s2 = c.completions.create(model="tiny-story-model", prompt="Tom", max_tokens=10, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in s2) == c.completions.create(
        model="tiny-story-model", prompt="Tom", max_tokens=10, temperature=0).choices[0].text


def test_concurrent_requests_share_batches_and_match_single_answers(model_dir: Path) -> None:
    srv = make_server(model_dir, port=0, batch_wait_s=0.5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        prompts = ["Once upon a time", "Tom and Sue went to the", "The big red ball", "Lily", "One day, a cat"]
        alone = [srv.lm.complete([p], 10, temperature=0)[0][0] for p in prompts]
        got: list[str | None] = [None] * len(prompts)

        def ask(i: int) -> None:
            r = client(srv).completions.create(model="tiny-story-model", prompt=prompts[i], max_tokens=10,
                                               temperature=0)
            got[i] = r.choices[0].text

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == alone
        assert srv.num_generations == len(prompts) and srv.num_batches < len(prompts)
    finally:
        srv.shutdown()
        srv.server_close()


def test_errors(server) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-17", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny-story-model", prompt="hi", max_tokens=2, top_p=3)
    req = urllib.request.Request(server.url + "/completions", data=b"{not json", method="POST",
                                 headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 400 and "invalid JSON" in json.loads(e.value.read())["error"]["message"]


def test_run_synth_through_the_server_resumes_from_the_journal(server, tmp_path: Path) -> None:
    cfg = SynthConfig(teacher="openai", num_stories=5, max_attempts_factor=1.0, gates=OPEN_GATES,
                      openai={"base_url": server.url, "num_concurrent": 2, "max_tokens": 24, "api": "completions"})
    before = server.num_generations
    stats = run_synth(cfg, tmp_path, seed=0)
    assert server.num_generations - before == 5
    assert stats["num_prompts"] == 5 and stats["teacher"] == "openai" and stats["model"] == "tiny-story-model"
    assert stats["num_accepted"] + stats["num_rejected"] == 5 and "teacher_error" not in stats["rejected"]
    journal = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(journal) == 5
    rows = []
    for f in [*tmp_path.glob("synth-*.parquet"), *tmp_path.glob("rejected/*.parquet")]:
        rows += pq.read_table(f).to_pylist()
    assert len(rows) == 5 and {r["teacher"] for r in rows} == {"openai"}
    assert all('the verb "' in r["prompt"] for r in rows)

    # rerun: everything comes from the journal, nothing is sent again
    again = run_synth(cfg, tmp_path, seed=0)
    assert server.num_generations - before == 5 and again["num_replayed_from_journal"] == 5
    # a crash mid-write leaves a torn last line: only that prompt is sent again
    (tmp_path / "journal.jsonl").write_text("\n".join(journal[:4]) + "\n" + journal[4][: len(journal[4]) // 2])
    run_synth(cfg, tmp_path, seed=0)
    assert server.num_generations - before == 6


def test_tinyfoundry_teacher_self_generates(model_dir: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(teacher="tinyfoundry", num_stories=3, max_attempts_factor=1.0, gates=OPEN_GATES,
                      local={"model_path": str(model_dir), "max_new_tokens": 16, "batch_size": 2,
                             "prefix": "instruct"})
    stats = run_synth(cfg, tmp_path, seed=0)
    assert stats["num_prompts"] == 3 and stats["teacher"] == "tinyfoundry"
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 3


# ---- a stand-in for a remote OpenAI-compatible service: fails first, then answers well ----------


class _Flaky(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions: the first `fail` calls get 429/503, later ones a grammar story
    written for the words in the prompt; `status` forces an error status on every call."""

    protocol_version = "HTTP/1.1"
    fail: list[int] = []
    status: int | None = None
    calls = 0

    def log_message(self, *a) -> None:
        pass

    def _send(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code == 429:
            self.send_header("retry-after", "0.01")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(200, {"object": "list", "data": [{"id": "remote-teacher", "object": "model"}]})

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        if type(self).status is not None:
            return self._send(type(self).status, {"error": {"message": "nope", "type": "x", "code": "x"}})
        if type(self).fail:
            return self._send(type(self).fail.pop(0), {"error": {"message": "busy", "type": "x", "code": "x"}})
        prompt = body["messages"][-1]["content"]
        verb, noun, adj = re.search(r'verb "(.+?)", the noun "(.+?)" and the adjective "(.+?)"', prompt).groups()
        story = write_story(Word(noun, "thing"), Word(verb, "alone"), Word(adj, "look"), (), random.Random(prompt))
        content = f"Sure! Here is your story:\n\n{story.text}\n\nSummary: {story.summary}"
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}]})


@pytest.fixture()
def flaky() -> Iterator[ThreadingHTTPServer]:
    _Flaky.fail, _Flaky.status, _Flaky.calls = [], None, 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_teacher_retries_429_and_5xx_then_keeps_good_stories(flaky, tmp_path: Path, monkeypatch) -> None:
    _Flaky.fail = [429, 503, 500]
    monkeypatch.setenv("TF_TEST_KEY", "sk-test")
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    cfg = SynthConfig(teacher="openai", num_stories=4, instruct_format=True, gates=GateConfig(dedup="exact"),
                      openai={"base_url": url, "num_concurrent": 1, "backoff_s": 0.01, "max_retries": 3,
                              "api_key_env": "TF_TEST_KEY"})
    stats = run_synth(cfg, tmp_path, seed=5)
    assert stats["num_accepted"] == 4 and stats["model"] == "remote-teacher"
    assert _Flaky.calls == 4 + 3 and stats["num_retries"] == 3
    rows = pq.read_table(tmp_path / "synth-00000.parquet").to_pylist()
    for r in rows:
        assert r["teacher"] == "openai" and r["model"] == "remote-teacher"
        assert re.match(r"(Features: [^\n]+\n)?Words: ", r["text"]) and "\nStory: " in r["text"]
        assert "Sure!" not in r["text"]
        assert r["summary"] and f"Summary: {r['summary']}" in r["text"]


def test_openai_teacher_counts_a_bad_request_and_goes_on(flaky, tmp_path: Path) -> None:
    _Flaky.status = 400
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    cfg = SynthConfig(teacher="openai", num_stories=3, max_attempts_factor=1.0,
                      openai={"base_url": url, "model": "m", "backoff_s": 0.01})
    stats = run_synth(cfg, tmp_path, seed=0)
    assert stats["rejected"] == {"teacher_error": 3} and _Flaky.calls == 3  # 400 is not retried
    assert not (tmp_path / "journal.jsonl").read_text()  # failures are not journaled: a rerun asks again


def test_openai_teacher_fails_fast_on_auth_errors(flaky, tmp_path: Path) -> None:
    _Flaky.status = 401
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    cfg = SynthConfig(teacher="openai", num_stories=6,
                      openai={"base_url": url, "model": "m", "backoff_s": 0.01, "num_concurrent": 1})
    with pytest.raises(TeacherConfigError, match="401"):
        run_synth(cfg, tmp_path, seed=0)
    assert _Flaky.calls <= 2  # no retries, queued requests cancelled (one in flight per worker at most)
    assert not list(tmp_path.glob("synth-*.parquet"))
