"""The finetune stage and train.init_from: chat rendering and loss masks, LoRA / QLoRA / full fine-tuning through the
training recipe, PEFT-format adapters, exact resume after SIGKILL, foreign tokenizers end to end, clean errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from launch.loader import build_dataclass
from models import ModelConfig, Transformer, load_model, save_model_dir
from models.lora import LoRAConfig
from train import TrainConfig, run_train
from train.finetune import FinetuneConfig, run_finetune

REPO = Path(__file__).resolve().parents[2]
TRAIN = TrainConfig(log_every_steps=1, num_val_tokens=512, num_sample_tokens=0, progress_bar=False, num_threads=1,
                    ckpt_every_tokens=4 * 32, num_keep_ckpts=2, seed=3)


def _stories(shared_data: Path, n: int) -> list[str]:
    text = (shared_data / "tinystories" / "tinystories_2000.txt").read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:n]


@pytest.fixture()
def chat_jsonl(shared_data: Path, tmp_path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Tell me story number {i}."},
                          {"role": "assistant", "content": s}]} for i, s in enumerate(_stories(shared_data, 60))]
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def base_dir(tiny_shards: tuple[Path, Path], tmp_path: Path) -> Path:
    _, tok = tiny_shards
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64))
    return save_model_dir(tmp_path / "base", model, tokenizer_file=tok)


def test_chat_rendering_matches_transformers_and_masks_only_replies(tiny_shards: tuple[Path, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    from data_pipelines.chat import CHATML, ChatEncoder

    _, tok_file = tiny_shards
    enc = ChatEncoder(tok_file)  # our tokenizer has no template: ChatML
    msgs = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! A fox ran."}, {"role": "user", "content": "More"},
            {"role": "assistant", "content": "The end."}]
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tok_file))
    hf_tok.chat_template = CHATML
    assert enc.render(msgs) == hf_tok.apply_chat_template(msgs, tokenize=False)
    e = enc.encode({"messages": msgs})
    trained = enc.tok.decode([int(i) for i, m in zip(e.ids, e.mask) if m], skip_special_tokens=False)
    assert trained == "Hello! A fox ran.<|im_end|>\nThe end.<|im_end|>\n<|endoftext|>"
    assert enc.tok.decode([int(i) for i in e.ids], skip_special_tokens=False).startswith("<|im_start|>system\nBe kind.")
    # prompt/completion and text shapes; a malformed line names file:line
    e2 = enc.encode({"prompt": "Hi there", "completion": "Hello!"})
    assert enc.tok.decode([int(i) for i, m in zip(e2.ids, e2.mask) if m]).startswith("Hello!")
    assert enc.encode({"text": "Once upon a time"}).mask.all()
    with pytest.raises(ValueError, match="f.jsonl:3"):
        enc.encode({"messages": [{"role": "user"}]}, "f.jsonl:3")


def test_chat_template_of_a_base_model_is_used(tmp_path: Path, tiny_shards: tuple[Path, Path]) -> None:
    transformers = pytest.importorskip("transformers")
    from data_pipelines.chat import ChatEncoder
    from data_pipelines.tokenize.foreign import import_tokenizer

    _, tok_file = tiny_shards
    template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[ASSISTANT] {% endif %}")
    src = tmp_path / "src"
    src.mkdir()
    (src / "tokenizer.json").write_bytes(tok_file.read_bytes())
    (src / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "bos_token": "<|bos|>",
                                                           "eos_token": "<|endoftext|>"}))
    out = import_tokenizer(src, tmp_path / "tok")
    enc = ChatEncoder(out)
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert enc.render(msgs) == hf_tok.apply_chat_template(msgs, tokenize=False) == "<|bos|>[USER] hi\n[ASSISTANT] yo\n"
    e = enc.encode({"messages": msgs})
    assert enc.tok.decode([int(i) for i, m in zip(e.ids, e.mask) if m], skip_special_tokens=False) == \
        "yo\n<|endoftext|>"


@pytest.mark.slow
def test_lora_finetune_writes_peft_adapter_and_merged_model(base_dir: Path, chat_jsonl: Path, tmp_path: Path) -> None:
    ft = FinetuneConfig(base=str(base_dir), method="lora", data=[str(chat_jsonl)], max_tokens=4 * 32 * 6,
                        batch_size=4, seq_len=32, lr=1e-2, val_fraction=0.1,
                        lora=LoRAConfig(rank=4, alpha=8, target_modules=["all-linear"]))
    s = run_finetune(ft, TRAIN, tmp_path / "ft")
    assert s["status"] == "completed" and s["steps"] == 6 and s["val_bpb"] > 0
    out = tmp_path / "ft"
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    assert (out / "tb").is_dir() and (out / "summary.json").is_file()
    trained = json.loads((out / "train" / "summary.json").read_text())["trainable_params"]
    assert 0 < trained < 0.2 * s["num_params"]
    merged, tok = load_model(out / "merged")
    assert tok is not None and tok.name == "tokenizer.json"
    base, _ = load_model(base_dir)
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), base.state_dict().values()))
    # the LoRA checkpoint loads as the same merged model
    from_ckpt, _ = load_model(out / "checkpoints" / "last.ckpt")
    ids0 = torch.randint(0, 512, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(from_ckpt(ids0).logits, merged(ids0).logits, rtol=1e-5, atol=1e-5)
    # the embeddings and norms are frozen: unchanged in the merged model
    torch.testing.assert_close(merged.tok_emb.weight, base.tok_emb.weight, rtol=0, atol=0)

    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from models.export.hf import export_hf

    export_hf(base, tok, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    pm = peft.PeftModel.from_pretrained(hf, str(out / "adapter")).eval()
    ids = torch.randint(0, 512, (2, 32))
    with torch.no_grad():
        a, b = merged(ids).logits, pm(input_ids=ids).logits
    assert ((a - b).norm() / b.norm()).item() <= 1e-4


@pytest.mark.slow
def test_qlora_and_full_finetune_run(base_dir: Path, chat_jsonl: Path, tmp_path: Path) -> None:
    common = dict(base=str(base_dir), data=[str(chat_jsonl)], max_tokens=4 * 32 * 3, batch_size=4, seq_len=32)
    q = run_finetune(FinetuneConfig(method="qlora", lora=LoRAConfig(rank=4, group_size=32), **common), TRAIN,
                     tmp_path / "q")
    assert q["lora"]["quantize"] == "int4" and (tmp_path / "q" / "adapter" / "adapter_model.safetensors").is_file()
    full = run_finetune(FinetuneConfig(method="full", lr=1e-3, **common), TRAIN, tmp_path / "full")
    assert full["adapter"] is None and not (tmp_path / "full" / "adapter").exists()
    s = json.loads((tmp_path / "full" / "train" / "summary.json").read_text())
    assert s["trainable_params"] == s["num_params"]


DRIVER = """
import json, sys
from pathlib import Path
from train import TrainConfig
from launch.loader import build_dataclass
from train.finetune import FinetuneConfig, run_finetune
ft, tr, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
s = run_finetune(build_dataclass(FinetuneConfig, ft, "finetune"), TrainConfig(**tr), Path(out))
print("STATUS", s["status"], flush=True)
"""


def _curve(run_dir: Path) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    curve: dict[int, float] = {}
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.tag == "train/loss":
                    curve[ev.step] = v.simple_value if v.HasField("simple_value") else \
                        float(tensor_util.make_ndarray(v.tensor))
    return curve


@pytest.mark.slow
def test_finetune_resume_after_sigkill_is_exact(base_dir: Path, chat_jsonl: Path, tmp_path: Path) -> None:
    import time

    ft = dict(base=str(base_dir), method="lora", data=[str(chat_jsonl)], max_tokens=4 * 32 * 16, batch_size=4,
              seq_len=32, lr=1e-2, lora={"rank": 4, "dropout": 0.1})
    tr = {k: v for k, v in TRAIN.to_dict().items()}
    ref = run_finetune(build_dataclass(FinetuneConfig, ft, "finetune"), TrainConfig(**tr), tmp_path / "ref")
    ref_curve = _curve(tmp_path / "ref")
    assert sorted(ref_curve) == list(range(1, 17))

    run = tmp_path / "killed"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(script), json.dumps(ft), json.dumps(tr), str(run)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not list((run / "checkpoints").glob("step-0000000[5-9].ckpt")):
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.time() - t0 < 120, "no checkpoint in time"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    s = run_finetune(build_dataclass(FinetuneConfig, ft, "finetune"), TrainConfig(**tr), run)
    assert s["status"] == "completed"
    curve = _curve(run)
    assert curve == ref_curve
    assert s["val_bpb"] == ref["val_bpb"]
    a = json.loads((run / "train" / "summary.json").read_text())
    assert a["resumed_from"].endswith("last.ckpt")


def test_init_from_hf_folder_continues_pretraining_and_resume_does_not_reimport(
        tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    shards, tok = tiny_shards
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                   tie_word_embeddings=True)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).save_pretrained(str(tmp_path / "hf"))
    base, _ = load_model(tmp_path / "hf")
    tcfg = TrainConfig(**{**TRAIN.to_dict(), "init_from": str(tmp_path / "hf"), "max_tokens": 4 * 32 * 2,
                          "batch_size": 4, "seq_len": 32, "optimizer": "adamw", "lr": 1e-9, "ema_decay": 0.0,
                          "warmup_frac": 0.0})
    s = run_train(tcfg, ModelConfig(vocab_size=512, dim=64), shards, tmp_path / "run", tokenizer_file=tok)
    assert s["status"] == "completed" and s["model_config"]["num_kv_heads"] == 1  # the source's shape, not ours
    final, _ = load_model(tmp_path / "run" / "checkpoints" / "final")
    for k, v in base.state_dict().items():
        torch.testing.assert_close(final.state_dict()[k], v, rtol=0, atol=1e-6)  # lr ~ 0: the imported weights
    # a rerun resumes from last.ckpt and never reads the source again (it may be gone)
    (tmp_path / "hf" / "model.safetensors").unlink()
    again = run_train(tcfg, None, shards, tmp_path / "run", tokenizer_file=tok)
    assert again["steps"] == 2 and again["resumed_from"].endswith("last.ckpt")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "launch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def _errors(r: subprocess.CompletedProcess) -> list[str]:
    """stderr lines other than the stage progress lines ("[tinyfoundry] ...")."""
    return [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("[tinyfoundry]")]


@pytest.mark.slow
def test_bad_init_from_is_one_line_exit_2(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(shards, run / "shards")
    (tmp_path / "c.yaml").write_text("name: x\nstages: [train]\ntrain: {max_tokens: 1000, seq_len: 32}\n")
    r = _cli("train", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(run),
             f"--train.init_from={tmp_path / 'nope.gguf'}", cwd=tmp_path)
    # train needs the tokenize manifest; a missing init_from is reported either way in one line
    assert r.returncode == 2 and len(_errors(r)) == 1, r.stderr
    gpt2 = tmp_path / "gpt2"
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    from train.runner import init_weights

    with pytest.raises(ValueError, match="gpt2"):
        init_weights(TrainConfig(init_from=str(gpt2)), None)
    (tmp_path / "f.yaml").write_text(f"name: f\nstages: [finetune]\nfinetune: {{base: {gpt2}, data: [x.jsonl]}}\n")
    r = _cli("finetune", "--config", str(tmp_path / "f.yaml"), "--run-dir", str(tmp_path / "frun"), cwd=tmp_path)
    assert r.returncode == 2 and len(_errors(r)) == 1 and "gpt2" in _errors(r)[0], r.stderr
    assert "Traceback" not in r.stderr


def test_instruct_dataset_from_synth(tmp_path: Path) -> None:
    """synth/*.parquet (synth's columns) -> prompt/story chat examples; the last stories' prompts are held out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_pipelines.chat import instruct_from_synth, read_jsonl

    words = [["jump", "ball", "red"], ["sing", "tree", "happy"]] * 15
    rows = {"text": [f"Once upon a time a {w[2]} {w[1]} liked to {w[0]}. The end {i}." for i, w in enumerate(words)],
            "prompt": [f'Write a story using "{w[0]}", "{w[1]}" and "{w[2]}". #{i}' for i, w in enumerate(words)],
            "words": words, "features": [["dialogue"] if i % 2 else [] for i in range(30)]}
    (tmp_path / "synth").mkdir()
    pq.write_table(pa.table(rows), tmp_path / "synth" / "stories-00000.parquet")
    info = instruct_from_synth(tmp_path / "synth", tmp_path / "instruct.jsonl", exclude_last=5, style="prompt")
    assert info["examples"] == 25 and len(info["held_out"]) == 5
    got = [obj for obj, _ in read_jsonl(tmp_path / "instruct.jsonl")]
    r = got[0]
    assert r["messages"][0] == {"role": "user", "content": rows["prompt"][0]}
    assert r["messages"][1] == {"role": "assistant", "content": rows["text"][0]} and r["words"] == words[0]
    assert not {h["prompt"] for h in info["held_out"]} & {x["messages"][0]["content"] for x in got}
    assert info["held_out"][-1]["features"] == ["dialogue"]

    # the default: TinyStories-Instruct's lines, the words spelled as in the story (after a space)
    info = instruct_from_synth(tmp_path / "synth", tmp_path / "words.jsonl", exclude_last=5)
    got = [obj for obj, _ in read_jsonl(tmp_path / "words.jsonl")]
    assert got[0]["messages"][0]["content"] == "Words: jump, ball, red"
    assert got[1]["messages"][0]["content"] == "Features: Dialogue\nWords: sing, tree, happy"
    assert info["held_out"][-1]["prompt"] == "Features: Dialogue\nWords: sing, tree, happy"
    with pytest.raises(ValueError, match="style"):
        instruct_from_synth(tmp_path / "synth", tmp_path / "x.jsonl", style="summary")


def test_windows_start_at_example_starts(base_dir: Path, chat_jsonl: Path) -> None:
    """window_start 'example': every training window begins with an example's first token (its prompt in view);
    'any' keeps train's anywhere-starts. A pure function of the batch index either way (resume stays exact)."""
    from train.finetune import MaskedDataModule, encode_files

    splits = encode_files([str(chat_jsonl)], base_dir / "tokenizer.json", 0.1)
    starts = splits["train"].starts.tolist()
    assert len(starts) == splits["train"].num_examples and starts[0] == 0
    ids = splits["train"].ids

    def rows(mode: str, index: int) -> list[torch.Tensor]:
        ds = MaskedDataModule(splits, 512, 2, 8, 64, seed=0, window_start=mode).train_dataloader().dataset
        return list(ds.batch(index)[0])

    def at_a_start(row: torch.Tensor) -> bool:
        return any(torch.equal(row, torch.from_numpy(ids[s : s + 64])) for s in starts if s + 64 <= len(ids))

    assert all(at_a_start(r) for i in range(4) for r in rows("example", i))
    assert not all(at_a_start(r) for i in range(4) for r in rows("any", i))
    assert all(torch.equal(a, b) for a, b in zip(rows("example", 3), rows("example", 3)))
    with pytest.raises(ValueError, match="window_start"):
        FinetuneConfig(window_start="middle")  # type: ignore[arg-type]


def test_word_weight_weights_first_uses_of_the_required_words(base_dir: Path, tmp_path: Path) -> None:
    """Examples with a `words` list mark the reply tokens of each word's first use (any inflection, later uses not);
    word_weight puts that weight on their loss (a 4th batch tensor), weight 1 keeps the 3-tensor batch, and the
    system's weighted loss with all weights 1 is the plain loss."""
    from data_pipelines.chat import ChatEncoder
    from train.finetune import MaskedDataModule, encode_files
    from train.system import LMSystem

    tok = base_dir / "tokenizer.json"
    story = "Tom saw a pond. He jumped into the pond. The ponds were red. Tom liked the red ball."
    row = {"messages": [{"role": "user", "content": "Words: pond, jump, red"},
                        {"role": "assistant", "content": story}], "words": ["pond", "jump", "red"]}
    enc = ChatEncoder(tok)
    e = enc.encode(row)
    marked = [int(i) for i, f in zip(e.ids, e.first_use) if f]
    assert enc.tok.decode(marked).split() == ["pond", "jumped", "red"]
    assert not (e.first_use.astype(bool) & ~e.mask.astype(bool)).any()  # only reply tokens
    assert not enc.encode({"messages": row["messages"]}).first_use.any()  # no words: nothing marked

    path = tmp_path / "w.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(40)))
    splits = encode_files([str(path)], tok, 0.1)
    assert len(splits["train"].first_use) == len(splits["train"].ids)
    b = MaskedDataModule(splits, 512, 2, 4, 48, seed=0, word_weight=5.0).train_dataloader().dataset.batch(0)
    x, y, _, w = b
    ids, first = splits["train"].ids, splits["train"].first_use
    assert set(w.unique().tolist()) == {1.0, 5.0}
    for row, wr in zip(x, w):  # each window's weights sit on its own targets' first uses
        s = next(s for s in range(len(ids) - 48) if (ids[s : s + 48] == row.numpy()).all())
        assert torch.equal(wr, 1.0 + 4.0 * torch.from_numpy(first[s + 1 : s + 49].astype("float32")))
    assert len(MaskedDataModule(splits, 512, 2, 4, 48, seed=0).train_dataloader().dataset.batch(0)) == 3
    with pytest.raises(ValueError, match="word_weight"):
        FinetuneConfig(word_weight=0.0)

    model = load_model(base_dir)[0]
    system = LMSystem(model.cfg.to_dict(), TRAIN.to_dict(), total_steps=1, init_model=model)
    plain = system.training_step((x, y, 0), 0)
    assert torch.allclose(system.training_step((x, y, 0, torch.ones_like(w)), 0), plain, atol=1e-6)
    assert not torch.allclose(system.training_step((x, y, 0, w), 0), plain, atol=1e-4)
