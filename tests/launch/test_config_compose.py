"""Config composition (`base:` includes) and the proof that composing the recipes changed none of them: every config in
configs/ resolves to exactly what it resolved to before the recipes shared a base (a fixture captured then)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from launch.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
FIXTURE = Path(__file__).parent / "fixtures" / "resolved_configs.json"


def test_fixture_covers_every_config() -> None:
    assert set(json.loads(FIXTURE.read_text())) == {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_resolved_config_is_unchanged(path: Path) -> None:
    """The resolved config (RunConfig.to_dict) and the keys counted as set by the user (which decide, e.g., whether
    the plan's lr or the tokenizer's vocabulary applies) are what they were before the refactor."""
    expected = json.loads(FIXTURE.read_text())[path.name]
    cfg = load_config(path)
    got = json.loads(json.dumps(cfg.to_dict(), sort_keys=True, default=str))
    assert got == expected["resolved"]
    assert {k: v for k, v in cfg.explicit.items() if v} == expected["explicit"]


def test_the_tinystories_recipes_share_a_base() -> None:
    for path in REPO.glob("configs/tinystories-*.yaml"):
        if path.stem != "tinystories-instruct":  # a synth + fine-tuning recipe, not a pretraining one
            assert "base:" in path.read_text(), path


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_relative_to_the_including_file_and_deep_merged(tmp_path: Path) -> None:
    _write(tmp_path / "pieces" / "root.yaml", "seed: 7\ntrain:\n  lr: 0.001\n  batch_size: 4\n"
                                              "export:\n  gguf_types: [f16, q8_0]\n")
    _write(tmp_path / "pieces" / "mid.yaml", "base: root.yaml\ntrain:\n  batch_size: 8\n")
    top = _write(tmp_path / "run.yaml", "base: pieces/mid.yaml\ntrain:\n  seq_len: 64\nexport:\n  gguf_types: [q8_0]\n")
    cfg = load_config(top)
    assert cfg.name == "run" and cfg.seed == 7  # the name comes from the file asked for, not from a base
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.seq_len) == (0.001, 8, 64)  # mappings merge key by key
    assert cfg.export.gguf_types == ["q8_0"]  # lists are replaced
    assert cfg.explicit["train"] == ["batch_size", "lr", "seq_len"]
    # an override still wins over file and bases
    assert load_config(top, ["--train.batch_size=2"]).train.batch_size == 2


def test_several_bases_merge_in_order(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "train:\n  lr: 0.001\n  batch_size: 4\n")
    _write(tmp_path / "b.yaml", "train:\n  lr: 0.002\n")
    cfg = load_config(_write(tmp_path / "run.yaml", "base: [a.yaml, b.yaml]\n"))
    assert (cfg.train.lr, cfg.train.batch_size) == (0.002, 4)


def test_include_cycle_names_the_files(tmp_path: Path) -> None:
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle") as e:
        load_config(tmp_path / "a.yaml")
    assert "a.yaml" in str(e.value) and "b.yaml" in str(e.value)
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "self.yaml")


def test_missing_or_bad_base_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(_write(tmp_path / "run.yaml", "base: nope.yaml\n"))
    with pytest.raises(ConfigError, match="base: expected a file name"):
        load_config(_write(tmp_path / "run2.yaml", "base: {train: 1}\n"))
    _write(tmp_path / "broken.yaml", "train: [\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:\d+: invalid YAML"):
        load_config(_write(tmp_path / "run3.yaml", "base: broken.yaml\n"))


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "base").glob("*.yaml")), ids=lambda p: p.name)
def test_every_base_piece_validates_on_its_own(path: Path) -> None:
    assert load_config(path).name == path.stem
