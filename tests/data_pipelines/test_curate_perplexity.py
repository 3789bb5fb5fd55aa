"""The optional model-based filter: bits per byte under a tinyfoundry model dir, drop above a threshold."""

from __future__ import annotations

import pytest

from data_pipelines.curate.config import PerplexityConfig
from data_pipelines.curate.documents import Document

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, shared_data):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from models import ModelConfig, Transformer, save_model_dir

    root = tmp_path_factory.mktemp("ppl")
    stories = (
        (shared_data / "tinystories" / "tinystories_2000.txt")
        .read_text(encoding="utf-8")
        .split("<|endoftext|>")
    )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(
        stories[:300],
        trainers.BpeTrainer(
            vocab_size=400, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(
            vocab_size=tok.get_vocab_size(),
            dim=32,
            num_layers=1,
            num_heads=2,
            num_kv_heads=1,
            max_seq_len=128,
        )
    )
    return save_model_dir(root / "model", model, tokenizer_file=root / "tokenizer.json")


def test_perplexity_filter_scores_and_drops(model_dir):
    from data_pipelines.curate.filters import PerplexityFilter

    f = PerplexityFilter(PerplexityConfig(model_dir=str(model_dir), max_bits_per_byte=100.0, max_tokens=64))
    story = (
        "Once upon a time, there was a little girl named Lily. She liked to play in the park with her dog."
    )
    noise = "qzx vbn wqp zzk jjq xvq pqz kkj qqv zxw vvq jqx " * 3
    bpb_story, bpb_noise = f.bits_per_byte([story, noise])
    # an untrained model spreads probability evenly over tokens, so text the tokenizer compresses well
    # (the reference domain) costs fewer bits per byte than text it has to spell out
    assert 0 < bpb_story < bpb_noise
    f.cfg.max_bits_per_byte = (bpb_story + bpb_noise) / 2
    d = Document(text=story, id="s")
    assert f(d) is None and d.metadata["bits_per_byte"] == pytest.approx(bpb_story, abs=1e-3)
    assert f(Document(text=noise, id="n")) == "perplexity"


def test_batched_scores_match_one_document_per_forward(model_dir, shared_data):
    from data_pipelines.curate.filters import PerplexityFilter

    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    texts = [t.strip() for t in text.split("<|endoftext|>")[:11]] + ["", "a", "x" * 300]
    one = PerplexityFilter(PerplexityConfig(model_dir=str(model_dir), max_tokens=64, batch_size=1))
    many = PerplexityFilter(PerplexityConfig(model_dir=str(model_dir), max_tokens=64, batch_size=5))
    calls: list[int] = []
    forward = many.model.forward
    many.model.forward = lambda x, *a, **k: calls.append(x.shape[0]) or forward(x, *a, **k)
    single = one.bits_per_byte(texts)
    batched = many.bits_per_byte(texts)
    assert batched == pytest.approx(single, rel=1e-5, abs=1e-6)
    assert single[-3] == 0.0 and max(calls) == 5 and len(calls) < len(texts)  # batch_size is real
    # the runner hands whole batches to the filter: decisions match one-by-one ones
    docs = [Document(text=t, id=str(i)) for i, t in enumerate(texts)]
    many.cfg.max_bits_per_byte = sorted(single)[len(single) // 2]
    assert many.filter_batch(docs) == [many(Document(text=t, id="x")) for t in texts]
