"""The run config: one YAML file, one section per stage, each section a typed dataclass owned by its component.

Design:
- Components own their configs (``SynthConfig`` in data_pipelines/synthetic, ``TrainConfig`` in train/, ...). This module
  only knows which class serves which section, turns plain YAML values into those classes, and reports bad input as a
  single line that names the key (``train.lr: must be > 0, got -1``) or the file.
- Values are coerced from the field's type hint before the dataclass is built, so ``--train.max_tokens=2e6`` (a string
  to YAML) becomes the int 2000000; the dataclass's own ``__post_init__`` then checks ranges and raises
  ``ValueError("<field>: <message>")``, which we prefix with the section.
- The ``model`` section may name a ``preset``; the other keys override the preset's fields.
- Field documentation lives in a docstring under each field. ``field_docs`` reads those with ``ast`` so that ``--help``
  shows every option with its doc and the docs never drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import importlib
import inspect
import json
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

StageName = Literal["synth", "curate", "tokenize", "plan", "train", "finetune", "compress", "export"]
ALL_STAGES: tuple[str, ...] = typing.get_args(StageName)
DEFAULT_STAGES: tuple[str, ...] = tuple(s for s in ALL_STAGES if s != "finetune")  # fine-tuning is opt-in

# section -> (module, class). Imported lazily so `tinyfoundry --help` stays fast.
SECTION_CLASSES: dict[str, tuple[str, str]] = {
    "synth": ("data_pipelines.synthetic", "SynthConfig"),
    "curate": ("data_pipelines.curate", "CurateConfig"),
    "tokenize": ("data_pipelines.tokenize", "TokenizeConfig"),
    "plan": ("train.planner", "PlanConfig"),
    "sweep": ("train.planner.sweep", "SweepConfig"),
    "model": ("models", "ModelConfig"),
    "train": ("train", "TrainConfig"),
    "finetune": ("train.finetune_config", "FinetuneConfig"),
    "compress": ("models.compress", "CompressConfig"),
    "export": ("models.export", "ExportConfig"),
}

TOP_LEVEL_KEYS = ("name", "seed", "stages")


class ConfigError(Exception):
    """Bad user input in a config file or override: the message is one line that names the key or file."""


def section_class(name: str) -> type:
    module, cls = SECTION_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


@dataclass
class RunConfig:
    """A whole run: top-level settings plus one typed config per section."""

    name: str
    """Name of the run; the default run directory is runs/<name>/."""
    seed: int = 1337
    """Seed for every stage that draws random numbers (story sampling, data split, init, data order)."""
    stages: list[str] = field(default_factory=lambda: list(DEFAULT_STAGES))
    """Stages that `tinyfoundry run` executes, in pipeline order."""
    sections: dict[str, Any] = field(default_factory=dict)
    """The typed section configs by name (synth, curate, tokenize, plan, model, train, compress, export)."""
    explicit: dict[str, list[str]] = field(default_factory=dict)
    """Keys the user set in each section (file or override), as opposed to defaults and preset values."""

    def __getattr__(self, item: str) -> Any:
        sections = self.__dict__.get("sections", {})
        if item in sections:
            return sections[item]
        raise AttributeError(item)

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


def to_plain(value: Any) -> Any:
    """Dataclasses, Paths and tuples to JSON/YAML-safe builtins."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return to_plain(value.to_dict())
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ----------------------------------------------------------------------------------------------------------------
# Loading


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
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


def load_config(path: str | Path | None, overrides: list[str] | dict[str, Any] | None = None,
                default_name: str = "run") -> RunConfig:
    """Read a YAML run config, apply dotted overrides, and build every section's typed config."""
    data: dict[str, Any] = load_yaml(path) if path is not None else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    data = deep_merge(data, overrides or {})
    name = data.get("name") or (Path(path).stem if path is not None else default_name)
    return build_run_config(data, name=str(name), source=str(path) if path else "<overrides>")


def build_run_config(data: dict[str, Any], name: str, source: str = "<config>") -> RunConfig:
    known = set(TOP_LEVEL_KEYS) | set(SECTION_CLASSES)
    for key in data:
        if key not in known:
            raise ConfigError(f"{source}: unknown section '{key}'{suggest(key, known)}")
    seed = coerce(data.get("seed", 1337), int, "seed")
    stages = coerce(data.get("stages", list(DEFAULT_STAGES)), list[StageName], "stages")
    stages = [s for s in ALL_STAGES if s in stages]  # always pipeline order
    sections: dict[str, Any] = {}
    for sec in SECTION_CLASSES:
        raw = data.get(sec) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{sec}: expected a mapping of keys, got {type(raw).__name__}")
        if sec == "model":
            sections[sec] = build_model_config(raw)
        else:
            sections[sec] = build_dataclass(section_class(sec), raw, sec)
    explicit = {sec: sorted((data.get(sec) or {}).keys()) for sec in SECTION_CLASSES}
    return RunConfig(name=name, seed=seed, stages=stages, sections=sections, explicit=explicit)


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
    return _construct(lambda: models.get_preset(preset, **kwargs), cls, "model")


def suggest(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def coerce_fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Check keys against the dataclass's fields and coerce each value to its field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}.{key}'{suggest(str(key), fields)}")
        kwargs[key] = coerce(value, hints.get(key, Any), f"{prefix}.{key}")
    return kwargs


def build_dataclass(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a plain dict, naming `prefix.key` in every error."""
    kwargs = coerce_fields(cls, data, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}: required key is missing")
    return _construct(lambda: cls(**kwargs), cls, prefix)


def _construct(make: typing.Callable[[], Any], cls: type, prefix: str) -> Any:
    """Run a constructor; a ValueError("<field>: ...") from its validation becomes ConfigError("<prefix>.<field>: ...")."""
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
        return make()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        head = msg.split(":", 1)[0].strip()
        if head in fields or head.split(".")[0] in fields:
            raise ConfigError(f"{prefix}.{msg}") from None
        raise ConfigError(f"{prefix}: {msg}") from None


_NONE = type(None)


def coerce(value: Any, tp: Any, key: str) -> Any:  # noqa: C901 - one branch per kind of type hint
    """Turn a YAML value into type `tp`, or raise ConfigError naming `key`."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and _NONE in args:
            return None
        errors = []
        for arg in (a for a in args if a is not _NONE):
            try:
                return coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is none of {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        opts = ", ".join(repr(a) for a in args)
        hint = suggest(str(value), [str(a) for a in args])
        raise ConfigError(f"{key}: must be one of {opts}, got {value!r}{hint}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                value = float(value.replace("_", ""))
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    if origin in (list, typing.List, tuple, typing.Sequence) or tp in (list, tuple):  # noqa: UP006
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]  # a single item where a list is expected
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            return tuple(coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item_tp = args[0] if args else Any
        items = [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, typing.Dict) or tp is dict:  # noqa: UP006
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return build_dataclass(tp, value, key)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    return value


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        inner = ", ".join(_type_name(a) for a in typing.get_args(tp))
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]"
    return getattr(tp, "__name__", str(tp))


# ----------------------------------------------------------------------------------------------------------------
# Documentation


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (torchtitan/jsonargparse style), read from the source with ast."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        tree = ast.parse(source)
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                        and isinstance(nxt.value.value, str):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe_section(section: str, prefix: str | None = None) -> str:
    """Every option of a section with its type, default and doc: what `--help` prints."""
    cls = section_class(section)
    prefix = prefix or section
    return describe_dataclass(cls, prefix)


def describe_dataclass(cls: type, prefix: str) -> str:
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    lines = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, Any)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = "(required)"
        if dataclasses.is_dataclass(tp):
            lines.append(describe_dataclass(tp, f"{prefix}.{f.name}"))
            continue
        default_s = json.dumps(to_plain(default), default=str) if default != "(required)" else default
        lines.append(f"  --{prefix}.{f.name} {_type_name(tp)}  [default: {default_s}]")
        if f.name in docs:
            for wrapped in textwrap.wrap(docs[f.name], 100):
                lines.append(f"        {wrapped}")
    return "\n".join(lines)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)
