"""launch/harness.py: lm-evaluation-harness on a tiny local task, through the HF export (`hf`) and through our
server (`local-completions`); the two routes give the same log-likelihood per request."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="lm-evaluation-harness (the eval extra)")
pytest.importorskip("transformers", reason="the hf route loads the export with transformers")
torch = pytest.importorskip("torch")

from launch.config import ConfigError  # noqa: E402
from launch.harness import local_task, run_harness  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from models import ModelConfig, Transformer, save_model_dir
    from train.eval import read_documents

    root = tmp_path_factory.mktemp("harness")
    docs = read_documents(shared_data / "tinystories" / "tinystories_2000.txt")[:200]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|pad|>", "<|bos|>", "<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), dim=32, num_layers=2, num_heads=2, num_kv_heads=1,
                      max_seq_len=128)
    save_model_dir(root / "model", Transformer(cfg), tokenizer_file=root / "tokenizer.json")
    rng = random.Random(0)
    with (root / "cloze.jsonl").open("w") as f:
        for d in docs[:5]:
            cut = rng.randrange(30, 60)
            f.write(json.dumps({"context": d[:cut], "continuation": d[cut : cut + 25]}) + "\n")
    return root


@pytest.mark.slow
def test_serve_route_equals_hf_route_per_request(tiny: Path) -> None:
    out = {}
    for route in ("hf", "serve"):
        out[route] = run_harness(tiny / "model", ["local"], route, tiny / f"harness-{route}.json",
                                 data=tiny / "cloze.jsonl")
        assert json.loads((tiny / f"harness-{route}.json").read_text())["route"] == route
    hf, srv = out["hf"]["loglikelihoods"]["local"], out["serve"]["loglikelihoods"]["local"]
    assert len(hf) == len(srv) == 5
    for a, b in zip(hf, srv):
        assert len(a) == len(b) == 1 and a[0] < 0
        assert abs(a[0] - b[0]) <= 1e-3, (a, b)
    assert out["hf"]["results"]["local"]["acc,none"] == out["serve"]["results"]["local"]["acc,none"]


def test_local_task_shapes_and_bad_files(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("One story.\n<|endoftext|>\nAnother one.\n")
    assert local_task(tmp_path / "t.txt", tmp_path / "a")["output_type"] == "loglikelihood_rolling"
    (tmp_path / "mc.jsonl").write_text(json.dumps({"query": "q", "choices": ["a", "b"], "gold": 1}) + "\n")
    assert local_task(tmp_path / "mc.jsonl", tmp_path / "b")["output_type"] == "multiple_choice"
    (tmp_path / "bad.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ConfigError, match="rows need 'text'"):
        local_task(tmp_path / "bad.jsonl", tmp_path / "c")
    (tmp_path / "broken.jsonl").write_text('{"text": "a"}\n{oops\n')
    with pytest.raises(ConfigError, match=r"broken.jsonl:2: not JSON"):
        local_task(tmp_path / "broken.jsonl", tmp_path / "d")
    with pytest.raises(ConfigError, match="--data"):
        run_harness(tmp_path, ["local"], "hf", tmp_path / "x.json")
