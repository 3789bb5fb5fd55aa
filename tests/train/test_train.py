"""Training stage: config validation, schedules, data order, an end-to-end run (plan, MoE, bf16, accumulation,
TensorBoard, checkpoints, final model dir), refusals before training and the NaN guard."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models import ModelConfig, load_model
from train import TrainConfig, run_train
from train.data import TokenStream, TrainWindows, global_batch_windows
from train.schedules import lr_multiplier_fn
from train.system import NonFiniteLossError, param_groups

TINY = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64)
FAST = dict(batch_size=4, seq_len=32, num_val_tokens=256, progress_bar=False, num_threads=1,
            num_sample_tokens=0)


def tb_scalars(run_dir: Path) -> tuple[dict[str, dict[int, float]], list[str]]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    scalars: dict[str, dict[int, float]] = {}
    texts: list[str] = []
    for f in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        for ev in EventFileLoader(str(f)).Load():
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    scalars.setdefault(v.tag, {})[ev.step] = v.simple_value
                elif v.metadata.plugin_data.plugin_name == "text":
                    texts.append(tensor_util.make_ndarray(v.tensor).item().decode())
                elif v.HasField("tensor"):
                    scalars.setdefault(v.tag, {})[ev.step] = float(tensor_util.make_ndarray(v.tensor))
    return scalars, texts


# ------------------------------------------------------------------------------------------------ config
@pytest.mark.parametrize(("field", "value"), [("lr", 0.0), ("precision", "fp8"), ("strategy", "horovod"),
                                              ("num_accum_steps", 0), ("warmup_frac", 1.5),
                                              ("schedule", "linear"), ("max_tokens", -1)])
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    """Ranges are checked by the dataclass; Literal choices by the one typed loader (launch/loader.py)."""
    from launch.loader import build_dataclass

    if isinstance(value, str):
        with pytest.raises(Exception, match=rf"^train\.{field}: must be one of"):
            build_dataclass(TrainConfig, {field: value}, "train")
    else:
        with pytest.raises(ValueError, match=rf"^{field}: "):
            TrainConfig(**{field: value})


def test_config_round_trips() -> None:
    cfg = TrainConfig(max_tokens=1000, schedule="wsd", precision="bf16-mixed")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="^nope: unknown"):
        TrainConfig.from_dict({"nope": 1})


# ------------------------------------------------------------------------------------------------ schedules
def test_schedules_shapes() -> None:
    cos = lr_multiplier_fn("cosine", 100, 0.1, 0.1)
    assert cos(0) == pytest.approx(1 / 11) and cos(9) == pytest.approx(10 / 11)
    assert cos(10) == pytest.approx(1.0) and cos(99) == pytest.approx(0.1)
    assert all(cos(s) >= cos(s + 1) for s in range(10, 99))
    wsd = lr_multiplier_fn("wsd", 100, 0.1, 0.0, decay_frac=0.2)
    assert wsd(10) == wsd(79) == 1.0 and wsd(80) < 1.0 and wsd(99) == pytest.approx(0.0)
    const = lr_multiplier_fn("constant", 100, 0.0, 0.1)
    assert {const(s) for s in range(100)} == {1.0}


def test_weight_decay_only_on_matrices() -> None:
    from models import Transformer

    groups = param_groups(Transformer(TINY), 0.1)
    assert all(p.dim() >= 2 for p in groups[0]["params"]) and groups[0]["weight_decay"] == 0.1
    assert all(p.dim() < 2 for p in groups[1]["params"]) and groups[1]["weight_decay"] == 0.0
    assert groups[1]["params"], "norm weights must be in the no-decay group"


# ------------------------------------------------------------------------------------------------ data
def test_data_order_is_a_function_of_seed_and_index() -> None:
    stream = TokenStream([np.arange(0, 500, dtype=np.uint16), np.arange(500, 1000, dtype=np.uint16)])
    assert stream.read(495, 10).tolist() == list(range(495, 505))  # crosses the shard boundary
    a = global_batch_windows(stream, 3, 8, 32, seed=1, order="random")
    assert (a == global_batch_windows(stream, 3, 8, 32, seed=1, order="random")).all()
    assert not (a == global_batch_windows(stream, 3, 8, 32, seed=2, order="random")).all()
    seq = global_batch_windows(stream, 1, 4, 32, seed=0, order="sequential")
    assert seq.tolist() == [128, 160, 192, 224]
    # two ranks of a world of 2 see exactly the rows of the single-process global batch, and a loader
    # restarted at index 5 yields what the uninterrupted one yields at index 5
    full = TrainWindows(stream, 8, 32, seed=1, order="random")
    r0 = TrainWindows(stream, 4, 32, seed=1, order="random", rank=0, world_size=2)
    r1 = TrainWindows(stream, 4, 32, seed=1, order="random", rank=1, world_size=2)
    x, y, i = full.batch(5)
    assert torch.equal(torch.cat([r0.batch(5)[0], r1.batch(5)[0]]), x) and i == 5
    assert torch.equal(y[:, :-1], x[:, 1:])
    it = iter(TrainWindows(stream, 8, 32, seed=1, order="random", start=5))
    assert torch.equal(next(it)[0], x)


# ------------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_run_from_plan_moe_bf16_accumulation(tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, tok = tiny_shards
    moe = ModelConfig(vocab_size=512, dim=32, num_layers=2, num_heads=2, max_seq_len=64, num_experts=4,
                      num_experts_per_tok=2, moe_hidden_dim=32)
    plan = {"num_tokens": 4 * 32 * 2 * 8, "model": moe.to_dict(), "batch_size": 4, "seq_len": 32}
    cfg = TrainConfig(num_accum_steps=2, precision="bf16-mixed", schedule="wsd", log_every_steps=2,
                      num_val_tokens=256, sample_every_steps=4, num_sample_tokens=8, progress_bar=True,
                      num_threads=1)
    run = tmp_path / "run"
    s = run_train(cfg, None, shards, run, plan=plan, tokenizer_file=tok)
    assert s["status"] == "completed" and s["steps"] == 8 and s["tokens"] == 8 * 4 * 32 * 2
    for key in ("final_train_loss", "final_val_loss", "val_bpb", "tokens", "tokens_per_s", "mfu", "wall_s"):
        assert key in s and s[key] is not None, key
    assert math.isfinite(s["final_val_loss"]) and s["val_bpb"] > 0 and s["tokens_per_s"] > 0 and s["mfu"] > 0
    assert s["model_config"]["num_experts"] == 4  # the plan's model was used
    assert json.loads((run / "train" / "summary.json").read_text())["tokens"] == s["tokens"]

    scalars, texts = tb_scalars(run)
    for tag in ("train/loss", "train/lr", "train/grad_norm", "perf/tokens_per_s", "perf/mfu", "val/loss",
                "val/bpb", "train/moe_aux_loss", "moe/layer_0/expert0", "moe/layer_1/max_over_mean"):
        assert tag in scalars, f"{tag} not logged; have {sorted(scalars)}"
    assert texts and texts[0].startswith("Once upon a time")
    lrs = scalars["train/lr"]
    assert lrs[max(lrs)] < lrs[min(lrs)]  # WSD decays at the end

    # checkpoints: weights_only-loadable, model config in hyper_parameters, final dir loads with tokenizer
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["model_config"] == moe.to_dict()
    model, tok_path = load_model(run / "checkpoints" / "final")
    assert tok_path is not None and tok_path.read_bytes() == tok.read_bytes()
    from_ckpt, _ = load_model(run / "checkpoints" / "best.ckpt")
    assert from_ckpt.cfg.num_experts == 4


# ------------------------------------------------------------------------------------------------ refusals
def test_refuses_mismatched_vocab_and_tokenizer_before_training(tiny_shards: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    shards, tok = tiny_shards
    small = ModelConfig(vocab_size=256, dim=32, num_layers=1, num_heads=2, max_seq_len=64)
    with pytest.raises(ValueError, match="^vocab_size: the model has vocab_size=256"):
        run_train(TrainConfig(max_tokens=1000, **FAST), small, shards, tmp_path / "a")
    big = ModelConfig(vocab_size=4096, dim=32, num_layers=1, num_heads=2, max_seq_len=64)
    with pytest.raises(ValueError, match="^vocab_size"):
        run_train(TrainConfig(max_tokens=1000, **FAST), big, shards, tmp_path / "a")
    other = tmp_path / "other_tokenizer.json"
    other.write_text(tok.read_text().replace('"<|endoftext|>"', '"<|end|>"'))
    with pytest.raises(ValueError, match="^tokenizer: .* is not the tokenizer that wrote the shards"):
        run_train(TrainConfig(max_tokens=1000, **FAST), TINY, shards, tmp_path / "a", tokenizer_file=other)
    with pytest.raises(ValueError, match="^max_tokens"):
        run_train(TrainConfig(**FAST), TINY, shards, tmp_path / "a")
    assert not (tmp_path / "a").exists()


def test_memory_estimate_warns() -> None:
    from train.runner import warn_memory

    with pytest.warns(UserWarning, match="^memory: estimated training memory"):
        warn_memory(TINY, TrainConfig(), batch_size=10**7, seq_len=64, accel="cpu")


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
        tiny_shards: tuple[Path, Path], tmp_path: Path) -> None:
    shards, _ = tiny_shards
    run = tmp_path / "run"
    cfg = dict(FAST, ckpt_every_tokens=10**9, ckpt_every_minutes=1e-6)  # time-based: a checkpoint every step
    run_train(TrainConfig(max_tokens=4 * 32 * 3, **cfg), TINY, shards, run)
    last = run / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.glob("step-*.ckpt")) == [f"step-0000000{i}.ckpt" for i in (1, 2, 3)]
    # the weights go bad (as after a divergence): every logit becomes NaN from the next step on
    ckpt = torch.load(last, weights_only=True)
    ckpt["state_dict"]["model.tok_emb.weight"][7] = float("nan")
    torch.save(ckpt, last)
    before = last.read_bytes()
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss .* at optimizer step 3 .*last\.ckpt"):
        run_train(TrainConfig(max_tokens=4 * 32 * 6, **cfg), TINY, shards, run)
    assert last.read_bytes() == before
    assert not (run / "checkpoints" / "step-00000004.ckpt").exists()


def test_tn_linear_matches_stock_bf16_linear_bitwise() -> None:
    from train.cpu_bf16 import use_tn_linears

    torch.manual_seed(0)
    x = torch.randn(2, 7, 32, requires_grad=True)
    lin = torch.nn.Linear(32, 48)
    results = []
    for patch in (False, True):
        if patch:
            use_tn_linears(lin)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = lin(x)
        y.float().square().sum().backward()
        results.append((y.detach().clone(), x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()))
        x.grad, lin.weight.grad, lin.bias.grad = None, None, None
    assert results[0][0].dtype == results[1][0].dtype == torch.bfloat16
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert lin(x).dtype == torch.float32  # outside autocast the stock fp32 path runs
