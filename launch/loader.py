"""The typed loader: plain YAML values -> a component's config dataclass, nested dataclasses included.

Design:
- Every section of a run config, and every dataclass nested in one, is built here: keys are checked against the
  dataclass's fields, each value is coerced from the field's type hint (``--train.max_tokens=2e6``, a string to YAML,
  becomes the int 2000000), ``Literal`` options are checked against their choices (components do not re-check them),
  and then the dataclass is constructed so its ``__post_init__`` checks ranges.
- Errors are one line naming the full dotted key: ``curate.gopher_quality.min_stop_words: expected an integer``.
  A component's ``ValueError("<field>: <message>")`` is prefixed with the dotted path of the dataclass that raised it.
- A dataclass whose YAML shape is not its fields (a compression pass: one flat mapping of method, name and the
  method's options) defines ``from_config(raw, build, key)``; the loader calls it with ``build`` (this module's
  `build_fields`), so the parts it builds go through the same typed path and name the same dotted keys.
- Field documentation lives in a docstring under each field; ``field_docs`` reads those with ``ast`` so that
  ``--help`` shows every option with its doc and the docs never drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import json
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

_NONE = type(None)


class ConfigError(Exception):
    """Bad user input in a config file or override: the message is one line that names the key or file."""


def suggest(word: str, options: Iterable[str], prefix: str = "") -> str:
    """' (did you mean 'train.lr'?)' for the closest option, named with its full dotted `prefix`."""
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


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
# Building dataclasses


def coerce_fields(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Check keys against the dataclass's fields and coerce each value to its field's type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown key '{prefix}.{key}'{suggest(str(key), fields, f'{prefix}.')}")
        kwargs[key] = coerce(value, hints.get(key, Any), f"{prefix}.{key}")
    return kwargs


def build_dataclass(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a plain dict, naming `prefix.key` in every error."""
    hook = getattr(cls, "from_config", None)
    if hook is not None:
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix}: expected a mapping, got {data!r}")
        return construct(lambda: hook(data, build_fields, prefix), None, prefix)
    return build_fields(cls, data, prefix)


def build_fields(cls: type, data: dict[str, Any], prefix: str) -> Any:
    """`build_dataclass` without the `from_config` hook: the builder a hook is handed for its own parts."""
    kwargs = coerce_fields(cls, data, prefix)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}: required key is missing")
    return construct(lambda: cls(**kwargs), cls, prefix)


def construct(make: Callable[[], Any], cls: type | None, prefix: str) -> Any:
    """Run a constructor; a ValueError("<field>: ...") from its validation becomes ConfigError("<prefix>.<field>: ...").
    With `cls` None (a `from_config` hook) the message's head is always taken as a key below `prefix`."""
    fields = {f.name for f in dataclasses.fields(cls)} if cls is not None else None
    try:
        return make()
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        head = msg.split(":", 1)[0].strip()
        is_key = head.replace(".", "").replace("_", "").isalnum() and ":" in msg
        if (fields is None and is_key) or (fields is not None and head.split(".")[0] in fields):
            raise ConfigError(f"{prefix}.{msg}") from None
        raise ConfigError(f"{prefix}: {msg}") from None


# ----------------------------------------------------------------------------------------------------------------
# Coercion: one function per kind of type hint


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Turn a YAML value into type `tp`, or raise ConfigError naming `key`."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, tp, key)
    if origin is Literal:
        return _coerce_literal(value, tp, key)
    if tp in _SCALARS:
        return _SCALARS[tp](value, key)
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        return _coerce_sequence(value, tp, key)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return value if dataclasses.is_dataclass(value) else build_dataclass(tp, value, key)
    return value


def _coerce_union(value: Any, tp: Any, key: str) -> Any:
    args = typing.get_args(tp)
    if value is None and _NONE in args:
        return None
    errors = []
    for arg in (a for a in args if a is not _NONE):
        try:
            return coerce(value, arg, key)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} is none of {type_name(tp)}")


def _coerce_literal(value: Any, tp: Any, key: str) -> Any:
    """The one place that checks a `Literal` option (components rely on it and do not re-check)."""
    args = typing.get_args(tp)
    if value in args:
        return value
    opts = ", ".join(repr(a) for a in args)
    hint = suggest(str(value), [str(a) for a in args])
    raise ConfigError(f"{key}: must be one of {opts}, got {value!r}{hint}")


def _coerce_bool(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key}: expected true or false, got {value!r}")


def _coerce_int(value: Any, key: str) -> int:
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


def _coerce_float(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.replace("_", ""))
        except ValueError:
            pass
    raise ConfigError(f"{key}: expected a number, got {value!r}")


def _coerce_str(value: Any, key: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key}: expected a string, got {value!r}")


def _coerce_path(value: Any, key: str) -> Path:
    if isinstance(value, (str, Path)):
        return Path(value)
    raise ConfigError(f"{key}: expected a path, got {value!r}")


_SCALARS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str, Path: _coerce_path,
}


def _coerce_sequence(value: Any, tp: Any, key: str) -> list[Any] | tuple[Any, ...]:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
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


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        inner = ", ".join(type_name(a) for a in typing.get_args(tp))
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


def describe_dataclass(cls: type, prefix: str) -> str:
    """Every option of a dataclass with its type, default and doc: what `--help` prints."""
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
        lines.append(f"  --{prefix}.{f.name} {type_name(tp)}  [default: {default_s}]")
        if f.name in docs:
            for wrapped in textwrap.wrap(docs[f.name], 100):
                lines.append(f"        {wrapped}")
    return "\n".join(lines)
