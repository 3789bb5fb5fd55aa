"""The judge: its tolerant score parser, and real requests through the official openai client to a real
OpenAI-compatible server (launch/serve.py) on 127.0.0.1 serving real tiny models."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from eval_helpers import tiny_model, train_tokenizer

from train.eval import JudgeConfig
from train.eval.judge import build_prompt, judge_stories, parse_scores, summarize

pytest.importorskip("openai", reason="the judge uses the official openai client (extra: teacher)")

GRADES = "Grammar: 7\nCreativity: 6\nConsistency: 8\nPlot: 5\nAge group: C"


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (GRADES, {"grammar": 7.0, "creativity": 6.0, "consistency": 8.0, "plot": 5.0, "age_group": "C"}),
        ("**Grammar**: 8/10. **Creativity** - 6.5 out of 10\nConsistency with the story's beginning: 9\n"
         "Plot: 7.", {"grammar": 8.0, "creativity": 6.5, "consistency": 9.0, "plot": 7.0}),
        ('{"grammar": 4, "creativity": 3, "consistency": 2, "plot": 1}',
         {"grammar": 4.0, "creativity": 3.0, "consistency": 2.0, "plot": 1.0}),
        ("Grammar: <0-10>\nPlot: 12\nAge group: <A-F>", {}),  # an echoed template or out-of-range grade
        ("the dog ran to the park and 3 cats", {}),
        ("Grammar 6, then I would say grammar: 9", {"grammar": 9.0}),  # the last statement wins
    ],
)
def test_parse_scores(answer: str, expected: dict) -> None:
    assert parse_scores(answer) == expected


def test_summary_counts_unparseable_partial_and_failed() -> None:
    recs = [
        {"scores": parse_scores(GRADES)},
        {"scores": parse_scores("Grammar: 9")},
        {"scores": parse_scores("no numbers here")},
        {"error": "APIConnectionError: refused"},
    ]
    s = summarize(recs)
    assert (s["num_requests"], s["num_failed"], s["num_unparseable"], s["num_partial"]) == (4, 1, 1, 1)
    assert s["grammar"] == 8.0 and s["num_grammar"] == 2 and s["plot"] == 5.0 and s["num_plot"] == 1
    assert s["age_groups"] == {"C": 1}


def test_config_and_key_handling(monkeypatch) -> None:
    with pytest.raises(ValueError, match="^base_url:"):
        JudgeConfig(base_url="localhost:8000")
    monkeypatch.delenv("TF_TEST_JUDGE_KEY", raising=False)
    cfg = JudgeConfig(enabled=True, base_url="https://judge.invalid/v1", api_key_env="TF_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match="^api_key_env: environment variable TF_TEST_JUDGE_KEY is not set"):
        judge_stories(cfg, [("Once", "upon")])


@pytest.fixture(scope="module")
def judge_models(shared_data: Path, tmp_path_factory):
    """Two real model dirs: one fitted to answer the rubric with GRADES, one untrained."""
    from models import save_model_dir
    from train.eval import read_documents

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("judge")
    docs = read_documents(shared_data / "tinystories" / "tinystories_2000.txt")[:200]
    tok_file = train_tokenizer(docs + [GRADES], root / "tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tok_file))
    eos = tok.token_to_id("<|endoftext|>")
    # What the server feeds the model for a chat request: the message in its chat template (ChatML here), cropped
    # from the left to the context left after max_tokens. The grader memorises that tail followed by GRADES.
    from launch.chat import ChatTemplate
    from launch.generation import fit_to_context

    chat = ChatTemplate().render([{"role": "user", "content": build_prompt("Tom had a red ball.", "He played.")}])
    prompt_ids, _ = fit_to_context(tok.encode(chat).ids, 60, 128)
    seq = torch.tensor(prompt_ids + tok.encode(GRADES).ids + [eos])
    model = tiny_model(tok.get_vocab_size(), max_seq_len=128)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(80):
        loss = model(seq[None, :-1], targets_BT=seq[None, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    save_model_dir(root / "grader", model, tokenizer_file=tok_file)
    save_model_dir(root / "untrained", tiny_model(tok.get_vocab_size(), seed=3), tokenizer_file=tok_file)
    yield root
    torch.set_num_threads(before)


def _serve(model_dir: Path):
    serve = pytest.importorskip("launch.serve", reason="launch/serve.py (synth room) not in the tree yet")
    server = serve.make_server(model_dir, host="127.0.0.1", port=0, model_name="tiny")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.mark.parametrize("which", ["grader", "untrained"])
def test_judge_against_real_local_server(judge_models: Path, which: str, monkeypatch) -> None:
    monkeypatch.delenv("TF_TEST_JUDGE_KEY", raising=False)  # a local endpoint needs no key
    server = _serve(judge_models / which)
    try:
        cfg = JudgeConfig(enabled=True, base_url=server.url, model="tiny", api_key_env="TF_TEST_JUDGE_KEY",
                          num_stories=3, max_tokens=60, timeout_s=60)
        items = [("Once upon a time, Lily found a", " shiny stone. She smiled."),
                 ("Sam had a dog.", " The dog ran."), ("Mia and", " Ben played."), ("Extra", " not sent.")]
        res = judge_stories(cfg, items)
    finally:
        server.shutdown()
        server.server_close()
    assert res["num_requests"] == 3 and res["num_failed"] == 0, res["errors"]
    assert server.num_generations == 3
    assert all("answer" in r for r in res["records"])
    if which == "grader":  # the fitted model answers in the rubric's form: every grade parses
        assert res["num_unparseable"] == 0 and res["num_partial"] == 0, [r["answer"] for r in res["records"]]
        assert (res["grammar"], res["creativity"], res["consistency"], res["plot"]) == (7, 6, 8, 5)
    else:  # an untrained model babbles: nothing parses, and that is counted, not guessed
        assert res["num_unparseable"] == 3 and res["grammar"] is None and res["num_grammar"] == 0
