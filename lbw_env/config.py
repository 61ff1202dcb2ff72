"""Typed configuration: dataclasses with a docstring per field, YAML loading and ``key=value`` overrides.

Every config in lbw-env is a plain dataclass. Fields carry their documentation as an attribute docstring
(the string literal right below the field, as in CleanRL), which :func:`field_docs` reads back for
``--help`` output and the docs. Loading is strict: an unknown key, or a value of the wrong type, fails with
the key's dotted path and the type that was expected, before anything runs. PyYAML follows YAML 1.1 and
reads ``1e-3`` (no dot) as a string: a float field takes such a string as the float it spells, so YAML files
and ``key=value`` overrides go straight to :func:`from_dict`.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import os
import textwrap
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard, TypeVar, get_args, get_origin

import yaml

from .errors import ConfigError

if TYPE_CHECKING:  # typeshed's protocol for "a dataclass"; it exists only in stubs
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


ENV_CONFIG_DIR = "LBW_CONFIG_DIR"


def config_dir() -> Path:
    """The ``configs/`` folder: ``$LBW_CONFIG_DIR`` or the one beside the package in the repository."""
    return Path(os.environ.get(ENV_CONFIG_DIR) or Path(__file__).resolve().parents[1] / "configs")


def config_names(kind: str) -> list[str]:
    """Names (file stems) of the YAML files in ``configs/<kind>/``: model presets, scenario families."""
    return sorted(p.stem for p in (config_dir() / kind).glob("*.yaml"))


# ----------------------------------------------------------------------------------------------------------
# Documentation of fields
# ----------------------------------------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: ``{field name: the string literal below the field}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - classes built at run time
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(dotted key, type, default, doc)`` for every leaf field of a config class, recursively."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # config classes give every field a default: `Config()` is the documented default config
            raise TypeError(f"{key}: config field has no default")
        rows.append((key, _type_name(tp), repr(default), docs.get(f.name, "")))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Strict conversion from plain data (YAML) to dataclasses
# ----------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, Sequence):
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin in (dict, Mapping):
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_MISMATCH = object()
"""What a scalar converter returns for a value of the wrong type (``None`` is a valid value of ``null``)."""


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool (``True`` is an int to Python, not a count to a config)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> TypeGuard[int | float]:
    """An int or a float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _to_null(value: Any) -> Any:
    return None if value is None else _MISMATCH


def _to_bool(value: Any) -> Any:
    return value if isinstance(value, bool) else _MISMATCH


def _to_int(value: Any) -> Any:
    return value if is_int(value) else _MISMATCH


def _to_float(value: Any) -> Any:
    # PyYAML follows YAML 1.1, which reads ``1e-3`` (no dot) as a string; a float field takes it as meant.
    if isinstance(value, str):
        return float(value) if _looks_like_float(value) else _MISMATCH
    if not is_real(value):
        return _MISMATCH
    try:
        return float(value)
    except OverflowError:  # an int beyond any float (1 followed by 400 zeros): not a number a field can hold
        return _MISMATCH


def _untyped_floats(data: Any) -> Any:
    """An untyped (``Any``) value as YAML 1.2 would read it: strings such as ``1e-3`` become floats, recursively.

    Typed float fields take such strings in :func:`_convert`; an ``Any`` field (e.g. a dict of SB3
    hyperparameters) has no type to go by, so a string counts as a float only when it also has a dot or an
    exponent (``"12"`` quoted stays a string).
    """
    if isinstance(data, dict):
        return {k: _untyped_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_untyped_floats(v) for v in data]
    if isinstance(data, str) and _looks_like_float(data) and any(c in data for c in "eE."):
        return float(data)
    return data


def _to_str(value: Any) -> Any:
    return value if isinstance(value, str) else _MISMATCH


_SCALARS: dict[Any, Callable[[Any], Any]] = {
    type(None): _to_null,
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
    Any: _untyped_floats,
}


def _mismatch(tp: Any, value: Any, path: str) -> ConfigError:
    return ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")


def _convert_union(value: Any, tp: Any, path: str) -> Any:
    for arg in get_args(tp):
        try:
            return _convert(value, arg, path)
        except ConfigError:
            continue
    raise _mismatch(tp, value, path)


def _convert_list(value: Any, tp: Any, path: str) -> list[Any]:
    if not isinstance(value, (list, tuple)):
        raise _mismatch(tp, value, path)
    (item,) = get_args(tp)
    return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]


def _convert_dict(value: Any, tp: Any, path: str) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(tp, value, path)
    kt, vt = get_args(tp)
    return {_convert(k, kt, f"{path}.<key>"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against ``tp`` and convert it (ints and float strings to floats, mappings to dataclasses)."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path or '<root>'}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, tp, path)
    if origin in (list, Sequence):
        return _convert_list(value, tp, path)
    if origin in (dict, Mapping):
        return _convert_dict(value, tp, path)
    scalar = _SCALARS.get(tp)
    if scalar is None:  # pragma: no cover - a config class declared a type this loader does not know
        raise ConfigError(f"{path}: unsupported config type {tp!r}")
    out = scalar(value)
    if out is _MISMATCH:
        raise _mismatch(tp, value, path)
    return out


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping. Unknown keys and mistyped values raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key for {cls.__name__}; expected one of {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{path}.{e}" if path else str(e)) from None
    return obj


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raise ``ConfigError("key: expected ..., got value")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """A dataclass as plain data (for YAML/JSON records of resolved configs)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


# ----------------------------------------------------------------------------------------------------------
# YAML files and key=value overrides
# ----------------------------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or non-mapping file fails with its path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found (expected a YAML file)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: not valid YAML ({' '.join(str(e).split())})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.seq_len=64"]`` -> nested dict. Values are parsed as YAML scalars.

    As in a YAML file, ``1e-3`` stays the string PyYAML reads; :func:`from_dict` turns it into the float that a
    float field (or an untyped value) means, so neither source needs post-processing.
    """
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            problem = " ".join(str(getattr(e, "problem", "") or e).split())
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML ({problem}); quote it or fix the brackets, "
                "e.g. key=[a,b] or key='text'"
            ) from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return out


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, everything else in ``update`` replaces ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load(cls: type[T], data: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from defaults <- ``data`` <- ``key=value`` overrides, strictly."""
    return from_dict(cls, deep_merge(dict(data or {}), parse_overrides(overrides)))


def load_yaml(cls: type[T], path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file plus overrides; errors name the file and the key."""
    try:
        return load(cls, read_yaml(path), overrides)
    except ConfigError as e:
        if str(e).startswith("config file"):
            raise
        raise ConfigError(f"{path}: {e}") from e
