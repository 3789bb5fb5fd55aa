"""launch/serve.py: a real server on 127.0.0.1 driven by the official `openai` client, and run_synth's
openai / tinyfoundry teachers against it (journal resume, retries on 429/5xx, fail-fast on 4xx)."""

from __future__ import annotations

import http.client
import json
import random
import re
import threading
import time
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
from data_pipelines.synthetic.config import LocalTeacherConfig, OpenAITeacherConfig  # noqa: E402
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
    torch.set_num_threads(1)
    srv = make_server(model_dir, port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def client(srv, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url, api_key=key, max_retries=0, timeout=60)


def post(srv, path: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(srv.url + path, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_binds_loopback_and_lists_the_model(server) -> None:
    assert server.server_address[0] == "127.0.0.1"
    c = client(server)
    assert [m.id for m in c.models.list()] == ["tiny-story-model"]
    assert c.models.retrieve("tiny-story-model").id == "tiny-story-model"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("gpt-17")


def test_greedy_text_equals_generate_and_transformers(server, model_dir: Path, tmp_path: Path) -> None:
    """Same ids (no BOS added by our tokenizer) and the same decoder: identical greedy text across the three."""
    transformers = pytest.importorskip("transformers")
    from launch.generation import generate_text
    from models import load_model
    from models.export.hf import export_hf

    model, tok_file = load_model(model_dir)
    export_hf(model, tok_file, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for prompt in ["Once upon a time", "Tom and Sue went to the"]:
        r = client(server).completions.create(model="tiny-story-model", prompt=prompt, max_tokens=20, temperature=0)
        ours = generate_text(model_dir, prompt, max_new_tokens=20, temperature=0)
        ids = hf_tok(prompt, return_tensors="pt").input_ids
        out = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=server.eos_id,
                          pad_token_id=server.eos_id)
        theirs = hf_tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert r.choices[0].text == ours == theirs
        assert r.usage.prompt_tokens == len(ids[0]) == len(server.tokenizer.encode(prompt).ids)
        assert r.usage.completion_tokens == 20 or r.choices[0].finish_reason == "stop"


def _forward_logprobs(server, ids: list[int]) -> torch.Tensor:
    model = server.engine.model
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().log_softmax(-1)


def test_logprobs_and_echo_equal_a_forward_pass(server) -> None:
    c = client(server)
    prompt = "Once upon a time there was"
    r = c.completions.create(model="tiny-story-model", prompt=prompt, max_tokens=6, temperature=0, logprobs=3,
                             echo=True)
    ch = r.choices[0]
    ids = server.tokenizer.encode(prompt).ids
    lp = ch.logprobs
    n_p = len(ids)
    assert ch.text.startswith(prompt) and lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert len(lp.tokens) == n_p + r.usage.completion_tokens == len(lp.token_logprobs) == len(lp.text_offset)
    from models.generate import generate

    gen_ids = generate(server.engine.model, [ids], max_new_tokens=6, temperature=0, eos_id=server.eos_id)[0]
    assert ch.text == prompt + server.tokenizer.decode(gen_ids)
    full = ids + gen_ids
    ref = _forward_logprobs(server, full)
    want = [ref[i - 1, full[i]].item() for i in range(1, len(full))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=1e-4)
    for i in range(1, len(full)):  # top-3 alternatives, best first, the same values
        top = sorted(lp.top_logprobs[i].values(), reverse=True)
        assert top == pytest.approx(ref[i - 1].topk(3).values.tolist(), abs=1e-4)
    # token-id prompts (lm-evaluation-harness local-completions) with max_tokens=1: the prompt's log-probs
    status, body = post(server, "/completions", {"model": "tiny-story-model", "prompt": [full, full[:5]],
                                                 "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0})
    assert status == 200 and len(body["choices"]) == 2
    got = body["choices"][0]["logprobs"]["token_logprobs"]
    assert got[1:len(full)] == pytest.approx(want, abs=1e-4)
    assert body["choices"][1]["logprobs"]["token_logprobs"][1:5] == pytest.approx(want[:4], abs=1e-4)
    # chat logprobs: the chosen tokens' values, in the chat shape
    rc = c.chat.completions.create(model="tiny-story-model", messages=[{"role": "user", "content": "Hi"}],
                                   max_tokens=4, temperature=0, logprobs=True, top_logprobs=2)
    content = rc.choices[0].logprobs.content
    assert len(content) == rc.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    assert all(t.logprob == pytest.approx(t.top_logprobs[0].logprob) for t in content)  # greedy: the best


def test_streaming_sends_tokens_as_they_are_made(server) -> None:
    c = client(server)
    kw = dict(model="tiny-story-model", prompt="Once upon a time", max_tokens=200, temperature=0)
    whole = c.completions.create(**kw)
    assert whole.choices[0].finish_reason == "length"  # precondition: the answer is long
    t0 = time.perf_counter()
    arrivals, pieces = [], []
    for ch in c.completions.create(**kw, stream=True, stream_options={"include_usage": True}):
        if ch.choices and ch.choices[0].text:
            arrivals.append(time.perf_counter() - t0)
            pieces.append(ch.choices[0].text)
        if ch.usage:
            assert ch.usage.completion_tokens == whole.usage.completion_tokens == 200
    assert "".join(pieces) == whole.choices[0].text
    # token by token while the client keeps up; a few tokens join when one ends mid-character or when this (shared,
    # loaded) CPU lets the handler fall behind the decoder, which then sends what is queued as one chunk
    assert len(pieces) >= 20, len(pieces)
    assert arrivals[0] < 0.5 * arrivals[-1], (arrivals[0], arrivals[-1])
    # chat streams too, with the role first and the same text as the non-streamed answer
    msgs = [{"role": "user", "content": "Write a story about a red ball."}]
    text = c.chat.completions.create(model="tiny-story-model", messages=msgs, max_tokens=16,
                                     temperature=0).choices[0].message.content
    stream = list(c.chat.completions.create(model="tiny-story-model", messages=msgs, max_tokens=16, temperature=0,
                                            stream=True))
    assert stream[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == text


def test_utf8_split_across_tokens_streams_whole_characters(server) -> None:
    from launch.batching import TokenLogprob
    from launch.serve import _Choice

    tok = server.tokenizer
    ids = tok.encode("Tom saw a 🐶 and é").ids  # byte-level: the emoji is several byte tokens
    ch = _Choice(tok, [], [])
    sent = []
    for t in ids:
        ch.add(TokenLogprob(t, None, None))
        sent.append(ch.pending(final=False))
    sent.append(ch.pending(final=True))
    assert "".join(sent) == "Tom saw a 🐶 and é" and not any("\ufffd" in s for s in sent)


def test_stop_n_seed_and_usage(server) -> None:
    c = client(server)
    base = c.completions.create(model="tiny-story-model", prompt="Tom", max_tokens=30, temperature=0)
    text = base.choices[0].text
    assert len(text) > 6
    stop = text[4:7]
    r = c.completions.create(model="tiny-story-model", prompt="Tom", max_tokens=30, temperature=0, stop=[stop])
    cut = text[: text.find(stop)]
    assert r.choices[0].text == cut and r.choices[0].finish_reason == "stop"
    # completion_tokens counts the tokens of the text returned, not the ones cut by `stop`
    assert r.usage.completion_tokens < base.usage.completion_tokens
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny-story-model", prompt="Tom", max_tokens=30, temperature=0, stop=[stop], stream=True)
        if ch.choices)
    assert streamed == cut
    # n and a list of prompts; a seed makes sampling reproducible, whatever else is decoded
    r2 = c.completions.create(model="tiny-story-model", prompt=["a", "b"], max_tokens=8, n=2, temperature=1.0,
                              seed=1)
    assert [ch.index for ch in r2.choices] == [0, 1, 2, 3]
    r3 = c.completions.create(model="tiny-story-model", prompt=["a", "b"], max_tokens=8, n=2, temperature=1.0,
                              seed=1)
    assert [ch.text for ch in r2.choices] == [ch.text for ch in r3.choices]
    assert r2.usage.prompt_tokens == 2 and r2.usage.completion_tokens <= 32


def test_chat_uses_the_model_chat_template(server, model_dir: Path, tmp_path: Path) -> None:
    from launch.chat import CHATML, ChatTemplate, load_chat_template

    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Tell a story."}]
    assert load_chat_template(model_dir, model_dir / "tokenizer.json").source == CHATML  # ours has none
    rendered = ChatTemplate().render(msgs)
    assert rendered == ("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nTell a story.<|im_end|>\n"
                        "<|im_start|>assistant\n")
    r = client(server).chat.completions.create(model="tiny-story-model", messages=msgs, max_tokens=10,
                                               temperature=0)
    direct = client(server).completions.create(model="tiny-story-model", prompt=rendered, max_tokens=10,
                                               temperature=0)
    assert r.choices[0].message.content == direct.choices[0].text
    assert r.usage.prompt_tokens == len(server.tokenizer.encode(rendered).ids)
    # a tokenizer_config.json with a template wins (transformers' variables: bos_token, add_generation_prompt)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<s>", "chat_template": "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
        "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"}))
    t = load_chat_template(tmp_path, tmp_path / "tokenizer.json")
    assert t.render(msgs) == "<s>[system] Be kind.\n[user] Tell a story.\n[assistant] "


@pytest.mark.parametrize(("path", "body", "param"), [
    ("/completions", {"prompt": 123}, "prompt"),
    ("/completions", {"prompt": []}, "prompt"),
    ("/completions", {"prompt": [1, "a"]}, "prompt"),
    ("/completions", {"prompt": [10**9]}, "prompt"),
    ("/completions", {}, "prompt"),
    ("/completions", {"prompt": "hi", "max_tokens": "5"}, "max_tokens"),
    ("/completions", {"prompt": "hi", "max_tokens": -1}, "max_tokens"),
    ("/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/completions", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("/completions", {"prompt": "hi", "temperature": 9}, "temperature"),
    ("/completions", {"prompt": "hi", "top_p": 3}, "top_p"),
    ("/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/completions", {"prompt": "hi", "n": 0}, "n"),
    ("/completions", {"prompt": "hi", "n": 1000}, "n"),
    ("/completions", {"prompt": "hi", "n": True}, "n"),
    ("/completions", {"prompt": "hi", "seed": 1.5}, "seed"),
    ("/completions", {"prompt": "hi", "stop": 5}, "stop"),
    ("/completions", {"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("/completions", {"prompt": "hi", "stream": "yes"}, "stream"),
    ("/completions", {"prompt": "hi", "logprobs": 99}, "logprobs"),
    ("/completions", {"prompt": "hi", "echo": 1}, "echo"),
    ("/completions", {"prompt": "hi", "model": 7}, "model"),
    ("/completions", {"prompt": "hi", "stream_options": 3}, "stream_options"),
    ("/completions", {"prompt": [list(range(5))] * 1 + [[1] * 300], "echo": True, "max_tokens": 1}, "prompt"),
    ("/chat/completions", {"messages": "hi"}, "messages"),
    ("/chat/completions", {"messages": []}, "messages"),
    ("/chat/completions", {"messages": [{"content": "hi"}]}, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": 5}]}, "messages"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}, "top_logprobs"),
    ("/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": 2}, "logprobs"),
])
def test_malformed_requests_get_400_with_openai_error_shape(server, path: str, body: dict, param: str) -> None:
    status, out = post(server, path, body)
    assert status == 400, out
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"]


def test_other_errors(server) -> None:
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="gpt-17", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        c.completions.create(model="tiny-story-model", prompt="hi", max_tokens=2, top_p=3)
    for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
        status, out = post(server, "/completions", raw)
        assert status == 400 and out["error"]["type"] == "invalid_request_error"
    status, out = post(server, "/nope", {})
    assert status == 404 and out["error"]["code"] == "not_found"
    # a body over the limit is refused from its Content-Length, before it is read
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Length", str(server.max_body_bytes + 1))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "limit" in json.loads(resp.read())["error"]["message"]
    conn.close()


def test_api_key_required_when_set(model_dir: Path) -> None:
    srv = make_server(model_dir, port=0, api_key="sk-local-123", model_name="named")
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(openai.AuthenticationError):
            client(srv, "wrong").completions.create(model="named", prompt="hi", max_tokens=2)
        status, out = post(srv, "/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 401 and out["error"]["type"] == "authentication_error"
        assert "sk-local-123" not in json.dumps(out)
        r = client(srv, "sk-local-123").completions.create(model="named", prompt="hi", max_tokens=2)
        assert r.model == "named" and [m.id for m in client(srv, "sk-local-123").models.list()] == ["named"]
        with urllib.request.urlopen(srv.url.removesuffix("/v1") + "/health", timeout=10) as h:
            assert h.status == 200  # liveness needs no key
    finally:
        srv.shutdown()
        srv.server_close()


def test_concurrent_clients_are_batched_and_match_single_answers(model_dir: Path) -> None:
    """Many clients at once: rows share decode steps, every answer equals the answer alone (greedy), and a
    client that disconnects mid-stream frees its row while the others finish."""
    srv = make_server(model_dir, port=0, max_batch=8)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        prompts = ["Once upon a time", "Tom and Sue went to the", "The big red ball", "Lily", "One day, a cat",
                   "The dog", "Mia had a", "A kite"] * 2
        alone = {p: client(srv).completions.create(model="tiny-story-model", prompt=p, max_tokens=40,
                                                   temperature=0).choices[0].text for p in set(prompts)}
        got: list[str | None] = [None] * len(prompts)
        errors: list[BaseException] = []

        def ask(i: int) -> None:
            try:
                stream = client(srv).completions.create(model="tiny-story-model", prompt=prompts[i], max_tokens=40,
                                                        temperature=0, stream=True)
                got[i] = "".join(ch.choices[0].text for ch in stream if ch.choices)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def quitter() -> None:  # reads one chunk of a long answer, then hangs up
            stream = client(srv).completions.create(model="tiny-story-model", prompt="Tom", max_tokens=240,
                                                    temperature=0, stream=True)
            next(iter(stream))
            stream.close()

        steps_before = srv.engine.num_steps
        threads = [threading.Thread(target=quitter)] + [threading.Thread(target=ask, args=(i,))
                                                       for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors and got == [alone[p] for p in prompts]
        assert srv.engine.max_rows_seen > 1  # requests shared decode steps
        assert srv.engine.num_steps - steps_before < len(prompts) * 40  # fewer steps than one by one
        deadline = time.time() + 10
        while srv.engine._rows and time.time() < deadline:  # the quitter's row is freed, not decoded to the end
            time.sleep(0.05)
        assert not srv.engine._rows
        assert srv.engine.num_row_steps < len(prompts) * 40 + len(alone) * 40 + 200
    finally:
        srv.shutdown()
        srv.server_close()


def test_run_synth_through_the_server_resumes_from_the_journal(server, tmp_path: Path) -> None:
    cfg = SynthConfig(teacher="openai", num_stories=5, max_attempts_factor=1.0, gates=OPEN_GATES,
                      openai=OpenAITeacherConfig(base_url=server.url, num_concurrent=2, max_tokens=24, api="completions"))
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


def test_an_opening_is_prefilled_through_the_models_chat_template(server, model_dir: Path, tmp_path: Path) -> None:
    """openai.opening: the chat rendered by the served model's template plus the opening goes to /v1/completions;
    the story is the opening and its continuation. Without a template to find, the error names the key."""
    from data_pipelines.synthetic.prompts import PromptBuilder, opening_for
    from data_pipelines.synthetic.vocab import Vocabulary

    openings = ["Once upon a time, there was a little {kid} named {name}. {He} had {a_adjective} {noun}"]
    cfg = SynthConfig(teacher="openai", num_stories=3, max_attempts_factor=1.0, gates=OPEN_GATES, num_examples=1,
                      openai=OpenAITeacherConfig(base_url=server.url, num_concurrent=2, max_tokens=12,
                                                 opening=openings, chat_template=str(model_dir), candidates=2))
    stats = run_synth(cfg, tmp_path / "a", seed=3)
    assert stats["num_prompts"] == 3 and "teacher_error" not in stats["rejected"]
    builder = PromptBuilder(cfg, Vocabulary.load(), seed=3)
    want = {builder.build(i).id: opening_for(builder.build(i), openings) for i in range(3)}
    rows = [json.loads(x) for x in (tmp_path / "a" / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        opening = want[row["id"]]
        assert " named " in opening and "{" not in opening
        for c in row["candidates"]:  # both candidates continue the same opening, each scored by its log-probs
            assert c["raw"].startswith(opening) and len(c["raw"]) > len(opening)
            assert isinstance(c["score"], float)
    cfg.openai.chat_template = ""  # the server names its model "tiny-story-model": no file to read a template from
    with pytest.raises(TeacherConfigError, match="openai.chat_template"):
        run_synth(cfg, tmp_path / "b", seed=3)
    cfg.openai.api = "completions"  # a base model: the plain prompt, then the opening; no template needed
    run_synth(cfg, tmp_path / "c", seed=3)
    rows = [json.loads(x) for x in (tmp_path / "c" / "journal.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["raw"].startswith(want[r["id"]]) for r in rows)


def test_tinyfoundry_teacher_self_generates(model_dir: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(teacher="tinyfoundry", num_stories=3, max_attempts_factor=1.0, gates=OPEN_GATES,
                      local=LocalTeacherConfig(model_path=str(model_dir), max_new_tokens=16, batch_size=2,
                                               prefix="instruct"))
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
                      openai=OpenAITeacherConfig(base_url=url, num_concurrent=1, backoff_s=0.01, max_retries=3,
                                                 api_key_env="TF_TEST_KEY"))
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
                      openai=OpenAITeacherConfig(base_url=url, model="m", backoff_s=0.01))
    stats = run_synth(cfg, tmp_path, seed=0)
    assert stats["rejected"] == {"teacher_error": 3} and _Flaky.calls == 3  # 400 is not retried
    assert not (tmp_path / "journal.jsonl").read_text()  # failures are not journaled: a rerun asks again


def test_openai_teacher_fails_fast_on_auth_errors(flaky, tmp_path: Path) -> None:
    _Flaky.status = 401
    url = f"http://127.0.0.1:{flaky.server_address[1]}/v1"
    cfg = SynthConfig(teacher="openai", num_stories=6,
                      openai=OpenAITeacherConfig(base_url=url, model="m", backoff_s=0.01, num_concurrent=1))
    with pytest.raises(TeacherConfigError, match="401"):
        run_synth(cfg, tmp_path, seed=0)
    assert _Flaky.calls <= 2  # no retries, queued requests cancelled (one in flight per worker at most)
    assert not list(tmp_path.glob("synth-*.parquet"))
