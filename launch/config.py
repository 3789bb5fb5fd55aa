"""The run config: one YAML file, one section per stage, each section a typed dataclass owned by its component.

Design:
- Components own their configs (``SynthConfig`` in data_pipelines/synthetic, ``TrainConfig`` in train/, ...). Which
  class serves which section, and which stages a run may list, come from the stage registry (launch/registry.py);
  every section goes through the one typed loader (launch/loader.py), nested dataclasses included, and bad input is a
  single line that names the dotted key (``train.lr: must be > 0, got -1``) or the file.
- A file may start from others: ``base: tinystories.yaml`` (or a list, merged in order) is read relative to the
  including file and deep-merged under it, so recipes share one base and state only where they differ. Mappings merge
  key by key; lists and scalars are replaced. A cycle of includes is an error naming the files.
- The ``model`` section may name a ``preset``; the other keys override the preset's fields.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from launch import registry
from launch.loader import (  # noqa: F401 - the loader's names are part of this module's interface
    ConfigError,
    build_dataclass,
    coerce,
    coerce_fields,
    construct,
    describe_dataclass,
    field_docs,
    suggest,
    to_plain,
)

if TYPE_CHECKING:
    from data_pipelines.curate import CurateConfig
    from data_pipelines.synthetic import SynthConfig
    from data_pipelines.tokenize import TokenizeConfig
    from models import ModelConfig
    from models.compress import CompressConfig
    from models.export import ExportConfig
    from train import TrainConfig
    from train.finetune_config import FinetuneConfig
    from train.planner import PlanConfig
    from train.planner.sweep import SweepConfig

StageName = str
"""A registered stage's name (launch/registry.py); checked against the registry when a config is loaded."""

TOP_LEVEL_KEYS = ("name", "seed", "stages", "base")
BASE_KEY = "base"


def __getattr__(name: str) -> Any:
    """ALL_STAGES, DEFAULT_STAGES and SECTION_CLASSES are read from the registry when asked, so a stage registered
    later (a plugin, a test's toy stage) is part of the schema."""
    if name == "ALL_STAGES":
        return registry.all_stages()
    if name == "DEFAULT_STAGES":
        return registry.default_stages()
    if name == "SECTION_CLASSES":
        return registry.section_classes()
    raise AttributeError(name)


def section_class(name: str) -> type:
    target = registry.section_classes()[name]
    if isinstance(target, type):
        return target
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)


@dataclass
class RunConfig:
    """A whole run: top-level settings plus one typed config per section."""

    name: str
    """Name of the run; the default run directory is runs/<name>/."""
    seed: int = 1337
    """Seed for every stage that draws random numbers (story sampling, data split, init, data order)."""
    stages: list[str] = field(default_factory=lambda: list(registry.default_stages()))
    """Stages that `tinyfoundry run` executes, in pipeline order."""
    sections: dict[str, Any] = field(default_factory=dict)
    """The typed section configs by name; the built-in ones are also typed properties (`cfg.train`, ...)."""
    explicit: dict[str, list[str]] = field(default_factory=dict)
    """Keys the user set in each section (file or override), as opposed to defaults and preset values."""

    def section(self, name: str) -> Any:
        """A section's config by name (any registered stage's section, built-in or not)."""
        try:
            return self.sections[name]
        except KeyError:
            raise ConfigError(f"no config section '{name}'{suggest(name, self.sections)}") from None

    @property
    def synth(self) -> SynthConfig:
        return self.sections["synth"]

    @property
    def curate(self) -> CurateConfig:
        return self.sections["curate"]

    @property
    def tokenize(self) -> TokenizeConfig:
        return self.sections["tokenize"]

    @property
    def plan(self) -> PlanConfig:
        return self.sections["plan"]

    @property
    def sweep(self) -> SweepConfig:
        return self.sections["sweep"]

    @property
    def model(self) -> ModelConfig:
        return self.sections["model"]

    @property
    def train(self) -> TrainConfig:
        return self.sections["train"]

    @property
    def finetune(self) -> FinetuneConfig:
        return self.sections["finetune"]

    @property
    def compress(self) -> CompressConfig:
        return self.sections["compress"]

    @property
    def export(self) -> ExportConfig:
        return self.sections["export"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "seed": self.seed, "stages": list(self.stages)}
        for key, value in self.sections.items():
            out[key] = to_plain(value)
        return out

    def section_hash(self, *names: str, extra: Any = None) -> str:
        """A stable hash of some sections (and the seed): what decides whether a stage's outputs are current."""
        payload = {}
        for n in names:
            plain = to_plain(self.sections[n])
            skip = getattr(self.sections[n], "HASH_EXCLUDE", frozenset())  # display-only fields of that section
            payload[n] = {k: v for k, v in plain.items() if k not in skip} if isinstance(plain, dict) else plain
        payload["__seed__"] = self.seed
        payload["__extra__"] = extra
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# Reading files: YAML and `base:` includes


def read_yaml_mapping(p: Path) -> dict[str, Any]:
    """One YAML file as a mapping (no includes); errors name the file and line."""
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file with its `base:` includes resolved (relative to the including file) and deep-merged under it."""
    p = Path(path)
    key = p.resolve()
    if key in _chain:
        cycle = " -> ".join(str(c) for c in (*_chain, key))
        raise ConfigError(f"{p}: `base:` includes form a cycle: {cycle}")
    data = read_yaml_mapping(p)
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{p}: base: expected a file name or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    for b in bases:
        merged = deep_merge(merged, load_yaml(p.parent / b, (*_chain, key)))
    return deep_merge(merged, data)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`--train.lr=3e-4` / `--train.lr 3e-4` -> nested dict; values parsed as YAML scalars."""
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) < 3:
            raise ConfigError(f"unexpected argument '{arg}' (overrides look like --section.key=value)")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                raise ConfigError(f"override '{arg}' has no value (use --{key}=VALUE)")
            value = args[i + 1]
            i += 1
        i += 1
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '--{key}' conflicts with another override")
        node[parts[-1]] = parsed
    return out


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ----------------------------------------------------------------------------------------------------------------
# Building the run config


def load_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
                default_name: str = "run") -> RunConfig:
    """Read a YAML run config (with its includes), apply dotted overrides, and build every section's typed config."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data = deep_merge(data, overrides or {})
    name = data.get("name") or (Path(path).stem if path is not None else default_name)
    return build_run_config(data, name=str(name), source=str(path) if path else "<overrides>")


def build_run_config(data: dict[str, Any], name: str, source: str = "<config>") -> RunConfig:
    schema = registry.section_classes()
    known = set(TOP_LEVEL_KEYS) | set(schema)
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown section '{key}'{suggest(key, known)}")
    seed = coerce(data.get("seed", 1337), int, "seed")
    stages = _check_stages(data.get("stages", list(registry.default_stages())))
    sections: dict[str, Any] = {}
    for sec in schema:
        raw = data.get(sec) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{sec}: expected a mapping of keys, got {type(raw).__name__}")
        if sec == "model":
            sections[sec] = build_model_config(raw)
        else:
            sections[sec] = build_dataclass(section_class(sec), raw, sec)
    explicit = {sec: sorted((data.get(sec) or {}).keys()) for sec in schema}
    return RunConfig(name=name, seed=seed, stages=stages, sections=sections, explicit=explicit)


def _check_stages(value: Any) -> list[str]:
    """`stages:` as registered stage names, always in pipeline order."""
    names = registry.all_stages()
    given = coerce(value, list[str], "stages")
    for i, s in enumerate(given):
        if s not in names:
            raise ConfigError(f"stages[{i}]: must be one of {', '.join(map(repr, names))}, got {s!r}"
                              f"{suggest(s, names)}")
    return [s for s in names if s in given]


def build_model_config(raw: dict[str, Any]) -> Any:
    """`model: {preset: 1m, vocab_size: 2048}`: the named preset with the other keys applied as overrides; derived
    fields (hidden_dim, ...) are recomputed from the overridden shape, as `models.get_preset` does."""
    import models

    cls = section_class("model")
    raw = dict(raw)
    preset = raw.pop("preset", None)
    if preset is None:
        return build_dataclass(cls, raw, "model")
    names = list(models.list_presets())
    if preset not in names:
        raise ConfigError(f"model.preset: unknown preset '{preset}'{suggest(str(preset), names)}")
    kwargs = coerce_fields(cls, raw, "model")
    return construct(lambda: models.get_preset(preset, **kwargs), cls, "model")


# ----------------------------------------------------------------------------------------------------------------
# Writing


def describe_section(section: str, prefix: str | None = None) -> str:
    """Every option of a section with its type, default and doc: what `--help` prints."""
    return describe_dataclass(section_class(section), prefix or section)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)

