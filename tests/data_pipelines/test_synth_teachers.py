"""The local transformers teacher: a tiny random Llama saved with save_pretrained, loaded from its folder."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from data_pipelines.synthetic import GateConfig, SynthConfig, run_synth
from data_pipelines.synthetic.config import LocalTeacherConfig
from data_pipelines.synthetic.grammar import write_story
from data_pipelines.synthetic.vocab import Word

OPEN_GATES = GateConfig(require_words=False, max_unknown_share=1.0, min_words=0, max_words=100_000,
                        max_repeated_share=1.0, dedup="none")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    transformers = pytest.importorskip("transformers", reason="the hf teacher needs transformers")
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("hf")
    rng = random.Random(0)
    corpus = [write_story(Word("ball", "thing"), Word("jump", "alone"), Word("red", "look"), (), rng).text
              for _ in range(10)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                                bos_token="<|bos|>", pad_token="<|pad|>")
    fast.save_pretrained(root)
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                   max_position_embeddings=256, eos_token_id=2, bos_token_id=1, pad_token_id=0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(root)
    return root


def test_hf_teacher_generates_and_journals(hf_dir: Path, tmp_path: Path) -> None:
    cfg = SynthConfig(teacher="hf", num_stories=3, max_attempts_factor=1.0, gates=OPEN_GATES,
                      local=LocalTeacherConfig(model_path=str(hf_dir), max_new_tokens=12, batch_size=2, prefix="once"))
    stats = run_synth(cfg, tmp_path, seed=0)
    assert stats["teacher"] == "hf" and stats["num_prompts"] == 3
    assert stats["num_accepted"] + stats["num_rejected"] == 3 and "teacher_error" not in stats["rejected"]
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all('"Once upon a time' in line for line in lines)
    again = run_synth(cfg, tmp_path, seed=0)
    assert again["num_replayed_from_journal"] == 3


def test_model_teacher_needs_a_path() -> None:
    with pytest.raises(ValueError, match=r"^local\.model_path:"):
        SynthConfig(teacher="hf")
