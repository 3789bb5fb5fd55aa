"""Evaluation: bits-per-byte bookkeeping, the probes' text functions, and run_eval end to end on a real tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from eval_helpers import fit, tiny_model, train_tokenizer

from train.eval import EvalConfig, ProbeConfig, probe_metrics, read_documents, run_eval
from train.eval.loss import build_stream, encode_documents, evaluate_loss
from train.eval.probes import (
    consistency_self,
    distinct_n,
    ends_sentence,
    entities,
    first_sentence_finished,
    pronoun_counts,
    recurrence,
    word_usage,
)

FAST_PROBES = dict(num_word_prompts=4, num_story_samples=1, max_new_tokens=24, num_fairness_samples=1,
                   occupations=["doctor", "nurse"], fairness_max_new_tokens=12)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: these models are tiny and the 2 cores are shared (2 threads run ~4x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def stories(shared_data: Path) -> list[str]:
    return read_documents(shared_data / "tinystories" / "tinystories_2000.txt")


@pytest.fixture(scope="module")
def tokenizer_file(stories: list[str], tmp_path_factory) -> Path:
    return train_tokenizer(stories[:300], tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def trained(stories, tokenizer_file, tmp_path_factory):
    """A 1-layer model fitted briefly on 300 stories, saved as a model dir with its tokenizer."""
    from tokenizers import Tokenizer

    from models import save_model_dir

    tok = Tokenizer.from_file(str(tokenizer_file))
    ids = build_stream(encode_documents(tok, stories[:300]), stories[:300], tok.token_to_id("<|endoftext|>"))[0]
    model = tiny_model(tok.get_vocab_size())
    fit(model, ids.tolist(), steps=40)
    model_dir = tmp_path_factory.mktemp("model") / "final"
    save_model_dir(model_dir, model, tokenizer_file=tokenizer_file)
    return model, tok, model_dir


def test_read_documents_formats(tmp_path: Path, shared_data: Path, stories: list[str]) -> None:
    assert len(stories) == 2000
    assert all("<|endoftext|>" not in s for s in stories)
    assert stories[0].startswith("One day, a little girl named Lily")
    gpt = read_documents(shared_data / "synthetic" / "gpt4o_tinystories_prompt_50.jsonl")  # field "story"
    assert len(gpt) == 50 and gpt[0].startswith("Once upon a time")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": stories[:5], "id": list("abcde")}), tmp_path / "d.parquet")
    assert read_documents([tmp_path / "d.parquet"]) == stories[:5]
    (tmp_path / "bad.csv").write_text("x")
    with pytest.raises(ValueError, match="data: unsupported"):
        read_documents(tmp_path / "bad.csv")


def test_stream_keeps_whole_documents_and_counts_bytes(tokenizer_file: Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    docs = ["Tom had a red ball.", "Sue said “hi” to him.", "The end."]
    ids = encode_documents(tok, docs)
    eos = tok.token_to_id("<|endoftext|>")
    stream, nbytes, kept = build_stream(ids, docs, eos)
    assert kept == 3 and nbytes == sum(len(d.encode("utf-8")) for d in docs)  # curly quotes are 3 bytes each
    assert stream.tolist() == [eos, *ids[0], eos, *ids[1], eos, *ids[2], eos]
    cap = len(ids[0]) + len(ids[1]) + 1  # second document does not fit whole -> dropped, not cut
    stream2, nbytes2, kept2 = build_stream(ids, docs, eos, max_tokens=cap)
    assert kept2 == 1 and nbytes2 == len(docs[0].encode()) and stream2.numel() == len(ids[0]) + 2


def test_bpb_of_uniform_model_is_exact(tokenizer_file: Path, stories: list[str]) -> None:
    """A model with constant logits scores ln(V) nats on every token: bpb = n_tokens * log2(V) / bytes."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    V = tok.get_vocab_size()

    class Uniform(torch.nn.Module):
        def forward(self, idx):
            return torch.zeros(*idx.shape, V)

    docs = stories[:20]
    res = evaluate_loss(Uniform(), tok, docs, seq_len=50, batch_size=3)  # windows cut mid-document, last one padded
    n_tok = sum(len(x) + 1 for x in encode_documents(tok, docs))
    assert res["num_tokens"] == n_tok
    assert res["loss"] == pytest.approx(math.log(V), rel=1e-6)
    assert res["bpb"] == pytest.approx(n_tok * math.log2(V) / res["num_bytes"], rel=1e-6)
    # the window length changes nothing for a context-free model
    assert evaluate_loss(Uniform(), tok, docs, seq_len=7)["bpb"] == pytest.approx(res["bpb"], rel=1e-6)


def test_text_probes_on_hand_written_stories() -> None:
    assert word_usage("She jumped over the shiny dogs.", ["jump", "dog", "shiny"]) == 1.0
    assert word_usage("He ran home and flew a kite.", ["run", "fly", "cake"]) == pytest.approx(2 / 3)
    assert word_usage("", ["ball"]) == 0.0
    assert distinct_n("the cat the cat the cat", 2) == pytest.approx(2 / 5)
    assert distinct_n("a b c d", 2) == 1.0
    assert ends_sentence('She said, "Bye!"') and not ends_sentence("and then the")
    assert first_sentence_finished(" he was tired. Then") and not first_sentence_finished(" he was " + "very " * 50)
    ents = entities("Once upon a time, there was a little girl named Lily. She had a red ball and met Tom.")
    assert {"lily", "ball", "tom", "girl"} <= ents and "time" not in ents
    assert recurrence({"lily", "ball"}, "Lily threw the balls.") == 1.0
    assert recurrence({"lily", "ball"}, "Sue slept.") == 0.0
    assert math.isnan(recurrence(set(), "x"))
    story = "Tom had a kite. He ran with the kite in the park all day long and laughed. " * 2
    assert consistency_self(story) == 1.0
    assert pronoun_counts("He said she and they saw him and her.") == {"male": 2, "female": 2, "neutral": 1}


def test_probe_config_validation() -> None:
    with pytest.raises(ValueError, match="^temperature:"):
        ProbeConfig(temperature=-1)
    with pytest.raises(ValueError, match="^word_prompt_template:"):
        ProbeConfig(word_prompt_template="no slots")
    with pytest.raises(ValueError, match="^batch_size:"):
        EvalConfig(batch_size=0)
    assert isinstance(EvalConfig(probes=ProbeConfig(num_word_prompts=2)).probes, ProbeConfig)


def test_probe_metrics_on_real_model(trained) -> None:
    model, tok, _ = trained
    cfg = ProbeConfig(**FAST_PROBES)
    m = probe_metrics(model, tok, cfg)
    for key in ("word_usage", "distinct_1", "distinct_2", "ended_rate", "first_sentence_complete",
                "consistency_prompt", "fairness_male_share", "fairness_skew"):
        assert key in m
    assert 0 < m["distinct_1"] <= 1 and 0 <= m["word_usage"] <= 1
    assert m["mean_words"] > 3  # a trained model writes words, not only spaces
    assert probe_metrics(model, tok, cfg) == m  # seeded sampling: reproducible


def test_run_eval_writes_eval_json(trained, stories, tmp_path: Path) -> None:
    model, tok, model_dir = trained
    held_out = tmp_path / "held.txt"
    held_out.write_text("\n<|endoftext|>\n".join(stories[1900:1930]) + "\n<|endoftext|>\n")
    cfg = EvalConfig(probes=ProbeConfig(**FAST_PROBES), num_saved_samples=3, device="cpu")
    res = run_eval(cfg, model_dir, held_out, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["loss"] == res["loss"] and saved["loss"]["num_docs"] == 30
    assert 0.5 < saved["loss"]["bpb"] < 8 / saved["loss"]["bytes_per_token"] * math.log2(tok.get_vocab_size())
    assert saved["tokenizer"].endswith("tokenizer.json") and len(saved["samples"]) == 3
    assert set(saved["fairness"]) == {"doctor", "nurse"} and "judge" not in saved
    assert not list((tmp_path / "out").glob("*.tmp"))
    # an untrained model of the same shape scores far worse on the same text
    from models import save_model_dir

    save_model_dir(tmp_path / "untrained", tiny_model(tok.get_vocab_size(), seed=1))
    (tmp_path / "untrained" / "tokenizer.json").write_text(Path(saved["tokenizer"]).read_text())
    cfg0 = EvalConfig(probes=ProbeConfig(enabled=False), device="cpu")
    res0 = run_eval(cfg0, tmp_path / "untrained", held_out, tmp_path / "e0.json")
    assert res0["loss"]["bpb"] > res["loss"]["bpb"] + 0.5 and "probes" not in res0


def test_run_eval_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model: no such file"):
        run_eval(EvalConfig(), tmp_path / "missing", None, tmp_path / "o")


def test_run_eval_on_lightning_ckpt_and_compressed_dir(trained, stories, tmp_path: Path) -> None:
    """The same weights score the same from a run dir's .ckpt (tokenizer in <run>/tokenizer/); int8 scores close."""
    import copy

    model, tok, model_dir = trained
    held_out = tmp_path / "held.jsonl"
    held_out.write_text("".join(json.dumps({"text": s}) + "\n" for s in stories[1950:1970]))
    cfg = EvalConfig(probes=ProbeConfig(enabled=False), device="cpu")
    ref = run_eval(cfg, model_dir, held_out, tmp_path / "ref.json")["loss"]["bpb"]

    run = tmp_path / "run"
    (run / "tokenizer").mkdir(parents=True)
    (run / "tokenizer" / "tokenizer.json").write_text((model_dir / "tokenizer.json").read_text())
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "hyper_parameters": {"model_config": model.cfg.to_dict()}}, run / "checkpoints" / "last.ckpt")
    res = run_eval(cfg, run / "checkpoints" / "last.ckpt", held_out, run / "eval")
    assert res["loss"]["bpb"] == pytest.approx(ref, rel=1e-6)
    assert res["tokenizer"] == str(run / "tokenizer" / "tokenizer.json")

    compress = pytest.importorskip("models.compress.runner", reason="compression room not in the tree")
    from models.compress.config import PassConfig
    from models.compress.storage import save_compressed

    q_model = copy.deepcopy(model)
    qt = compress.quantize_model(q_model, PassConfig(method="int8"), None, 8)
    save_compressed(tmp_path / "int8", q_model, qt, model_dir / "tokenizer.json", {"name": "int8"})
    res8 = run_eval(cfg, tmp_path / "int8", held_out, tmp_path / "int8.json")
    assert res8["loss"]["bpb"] != ref and res8["loss"]["bpb"] == pytest.approx(ref, rel=0.02)
