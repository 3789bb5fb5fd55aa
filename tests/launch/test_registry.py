"""The stage registry: a stage declared once (launch/registry.py) is a CLI subcommand with its help and options, a
config section and a name `stages:` accepts, a step of `run` with a manifest, and nothing else has to be edited."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import launch.config as config
from launch import registry
from launch.cli import build_parser, main
from launch.config import ConfigError, load_config
from launch.registry import Inputs, Stage


@dataclass
class ToyConfig:
    size: int = 2
    """How many lines the toy stage writes."""
    word: str = "toy"
    """What each line says."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size: must be >= 1, got {self.size}")


CALLS: list[int] = []


def stage_toy(cfg: Any, rd: Any) -> dict[str, Any]:
    toy = cfg.sections["toy"]
    CALLS.append(toy.size)
    (rd.root / "toy").mkdir(parents=True, exist_ok=True)
    (rd.root / "toy" / "out.txt").write_text("\n".join([toy.word] * toy.size))
    return {"lines": toy.size}


@pytest.fixture
def toy_stage():
    """Register the toy stage (one place), and remove it afterwards."""
    CALLS.clear()
    registry.register(Stage("toy", stage_toy, help="write a toy file of repeated words", declares={"toy": ToyConfig},
                            outputs=("toy",)))
    yield
    registry.unregister("toy")


def test_a_registered_stage_is_part_of_the_config_schema(toy_stage) -> None:
    assert config.ALL_STAGES[-1] == "toy" and "toy" in config.DEFAULT_STAGES and "toy" in config.SECTION_CLASSES
    cfg = load_config(None, {"toy": {"size": "3"}, "stages": ["toy", "train"]})
    assert cfg.sections["toy"] == ToyConfig(size=3) and cfg.stages == ["train", "toy"]  # pipeline order
    assert "toy" in load_config(None).stages  # in the default `run`
    with pytest.raises(ConfigError, match=r"unknown key 'toy.sizee' \(did you mean 'toy.size'\?\)"):
        load_config(None, {"toy": {"sizee": 1}})
    with pytest.raises(ConfigError, match=r"^toy.size: must be >= 1, got 0$"):
        load_config(None, {"toy": {"size": 0}})


def test_without_registration_there_is_no_such_stage() -> None:
    assert "toy" not in config.ALL_STAGES
    with pytest.raises(ConfigError, match="unknown section 'toy'"):
        load_config(None, {"toy": {"size": 1}})
    with pytest.raises(ConfigError, match=r"stages\[0\]: must be one of"):
        load_config(None, {"stages": ["toy"]})


def test_a_registered_stage_is_a_cli_subcommand_with_its_options(toy_stage, capsys) -> None:
    assert "write a toy file of repeated words" in build_parser(with_epilogs=False).format_help()
    with pytest.raises(SystemExit) as e:
        main(["toy", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--toy.size int  [default: 2]" in out and "How many lines the toy stage writes." in out


def test_a_registered_stage_runs_in_run_and_alone_with_a_manifest(toy_stage, tmp_path: Path) -> None:
    cfg = tmp_path / "toy.yaml"
    cfg.write_text("name: t\nstages: [toy]\ntoy:\n  size: 3\n  word: hi\n")
    rd = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--run-dir", str(rd)]) == 0
    assert (rd / "toy" / "out.txt").read_text() == "hi\nhi\nhi" and CALLS == [3]
    manifest = json.loads((rd / ".manifests" / "toy.json").read_text())
    assert manifest["outputs"] == {"lines": 3} and manifest["paths"] == ["toy"]
    assert main(["run", "--config", str(cfg), "--run-dir", str(rd)]) == 0
    assert CALLS == [3]  # current: skipped
    assert main(["toy", "--config", str(cfg), "--run-dir", str(rd), "--toy.size=1"]) == 0
    assert CALLS == [3, 1] and (rd / "toy" / "out.txt").read_text() == "hi"  # another config: redone


def test_declared_inputs_are_required_and_order_follows_after(tmp_path: Path, capsys) -> None:
    CALLS.clear()
    registry.register(Stage("toy", stage_toy, help="toy", declares={"toy": ToyConfig},
                            inputs=lambda cfg, rd: Inputs(needs=("tokenize",))), after="tokenize")
    try:
        names = config.ALL_STAGES
        assert names.index("toy") == names.index("tokenize") + 1
        cfg = tmp_path / "toy.yaml"
        cfg.write_text("name: t\nstages: [toy]\n")
        assert main(["toy", "--config", str(cfg), "--run-dir", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert "toy needs the outputs of 'tokenize'" in err and "tinyfoundry tokenize" in err and not CALLS
    finally:
        registry.unregister("toy")


def test_a_section_is_declared_by_one_stage_only() -> None:
    with pytest.raises(ValueError, match="section 'train' is already declared by stage 'train'"):
        registry.register(Stage("toy", stage_toy, help="toy", declares={"train": ToyConfig}))
    assert "toy" not in registry.stages()
