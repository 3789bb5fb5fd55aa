"""The config loader on its own: coercion, unknown keys with suggestions, range errors naming `section.key`, field docs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from launch.config import (
    ConfigError,
    build_dataclass,
    describe_dataclass,
    field_docs,
    load_config,
    parse_overrides,
)


@dataclass
class Inner:
    width: int = 4
    """How wide."""


@dataclass
class Toy:
    lr: float = 3e-4
    """Peak learning rate."""
    max_tokens: int = 1000
    """Tokens to train on."""
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    """Learning-rate schedule."""
    inputs: list[str] = field(default_factory=list)
    """Input paths."""
    out: Path = Path("x")
    """Output folder."""
    inner: Inner = field(default_factory=Inner)
    """Nested options."""
    compile: bool = False
    """Use torch.compile."""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")


def test_coercion_from_yaml_strings():
    cfg = build_dataclass(Toy, {"lr": "1e-3", "max_tokens": "2e6", "inputs": "a.txt", "out": "o",
                                "inner": {"width": 8}}, "train")
    assert cfg.lr == 1e-3 and cfg.max_tokens == 2_000_000 and isinstance(cfg.max_tokens, int)
    assert cfg.inputs == ["a.txt"] and cfg.out == Path("o") and cfg.inner.width == 8


@pytest.mark.parametrize(
    "data, message",
    [
        ({"lrr": 1}, "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ({"max_tokens": "lots"}, "train.max_tokens: expected an integer, got 'lots'"),
        ({"max_tokens": 1.5}, "train.max_tokens: expected an integer, got 1.5"),
        ({"schedule": "cosin"}, "train.schedule: must be one of 'cosine', 'wsd', 'constant', got 'cosin' (did you mean 'cosine'?)"),
        ({"lr": -1}, "train.lr: must be > 0, got -1.0"),
        ({"compile": "yes"}, "train.compile: expected true or false, got 'yes'"),
        ({"inner": {"widht": 2}}, "unknown key 'train.inner.widht' (did you mean 'train.inner.width'?)"),
    ],
)
def test_errors_name_the_key(data, message):
    with pytest.raises(ConfigError) as e:
        build_dataclass(Toy, data, "train")
    assert str(e.value) == message


def test_overrides_parse_dotted_keys_and_yaml_scalars():
    ov = parse_overrides(["--train.lr=1e-3", "--train.max_tokens", "2000", "--model.preset=1m", "--x.flag=true"])
    assert ov == {"train": {"lr": "1e-3", "max_tokens": 2000}, "model": {"preset": "1m"}, "x": {"flag": True}}
    with pytest.raises(ConfigError, match="has no value"):
        parse_overrides(["--train.lr"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["train.lr=3"])


def test_field_docs_are_read_from_source():
    docs = field_docs(Toy)
    assert docs["lr"] == "Peak learning rate." and docs["inner"] == "Nested options."
    text = describe_dataclass(Toy, "train")
    assert "--train.lr float  [default: 0.0003]" in text and "Peak learning rate." in text
    assert "--train.inner.width int" in text


def test_train_takes_the_plan_lr_unless_set() -> None:
    from launch.stages import PLAN_LR_CAP, train_config_for

    plan = {"lr_hint": 7.4e-3}
    cfg = load_config(None, {"train": {"batch_size": 8}})
    assert train_config_for(cfg, plan).lr == pytest.approx(7.4e-3)
    assert train_config_for(cfg, {"lr_hint": 0.3}).lr == PLAN_LR_CAP  # tiny budgets: capped
    assert train_config_for(cfg, None).lr == cfg.train.lr  # no plan: the section's default
    explicit = load_config(None, {"train": {"lr": 1e-3}})
    assert train_config_for(explicit, plan).lr == pytest.approx(1e-3)  # an explicit lr wins


@pytest.mark.parametrize(
    "override, message",
    [
        ("--curate.profile=webb", "curate.profile: must be one of 'web', 'stories', got 'webb' (did you mean 'web'?)"),
        ("--synth.teacher=gpt", "synth.teacher: unknown teacher 'gpt'; known: grammar, openai, hf, tinyfoundry"),
        ("--synth.openai.scorer=best", "synth.openai.scorer: must be one of 'logprob', 'first', got 'best'"),
        ("--tokenize.shard_dtype=uint8", "tokenize.shard_dtype: must be one of 'auto', 'uint16', 'uint32', got 'uint8'"),
        ("--model.moe_impl=fast", "model.moe_impl: must be one of 'grouped', 'loop', got 'fast'"),
        ("--train.optimizer=sgd", "train.optimizer: must be one of 'auto', 'muon', 'adamw', got 'sgd'"),
        ("--finetune.lora.quantize=int3", "finetune.lora.quantize: must be one of 'none', 'int8', 'int4', 'q4_0', 'q4_1', 'q8_0', got 'int3'"),
        ("--compress.passes=[{method: gptq, gguf_type: q9_0}]", "compress.passes[0].gguf_type: must be one of"),
    ],
)
def test_literal_options_are_checked_by_the_loader_in_every_section(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message)


@pytest.mark.parametrize(
    "override, message",
    [
        ("--curate.gopher_quality.min_stop_words=many",
         "curate.gopher_quality.min_stop_words: expected an integer, got 'many'"),
        ("--curate.length.max_words=1", "curate.length.max_words: must be > min_words, got 1"),
        ("--synth.gates.max_unknown_share=2", "synth.gates.max_unknown_share: must be in [0, 1], got 2.0"),
        ("--synth.openai.bogus=1", "unknown key 'synth.openai.bogus'"),
        ("--finetune.lora.rank=0", "finetune.lora.rank: must be a positive integer, got 0"),
        ("--compress.passes=[{method: rtn, group_size: 32}]",
         "compress.passes[0].group_size: not an option of method 'rtn'"),
        ("--compress.passes=[{method: wanda, sparsity: 1.5}]", "compress.passes[0].sparsity:"),
    ],
)
def test_nested_sections_name_the_full_dotted_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert str(e.value).startswith(message), str(e.value)


def test_compress_passes_keep_their_flat_mapping_shape() -> None:
    cfg = load_config(None, ["--compress.passes=[{method: int8}, {method: gptq, name: g4, group_size: '64'}]"])
    p = cfg.compress.passes[1]
    assert (p.method, p.name, p.options.group_size) == ("gptq", "g4", 64)  # the option coerced by the loader
    assert load_config(None, {"compress": cfg.to_dict()["compress"]}).compress == cfg.compress  # round trip
