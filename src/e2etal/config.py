"""The one config loader: YAML (safe_load) into typed dataclasses, with `key=value` overrides.

Every experiment config is a tree of dataclasses; its defaults live in the dataclass
definitions, a YAML file states only what differs, and `--set a.b=value` changes one leaf.
Unknown keys and values of the wrong type are errors that name the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class _Where:
    """Where a value came from, for error messages: `SOURCE: key.path` (SOURCE is the
    YAML file, or the `--set` override that set the value)."""

    source: str
    path: str = ""
    overrides: tuple[tuple[str, str], ...] = ()  # (dotted key, the override as typed)

    def key(self, name: str) -> _Where:
        return dataclasses.replace(self, path=f"{self.path}.{name}" if self.path else name)

    def item(self, i: int) -> _Where:
        return dataclasses.replace(self, path=f"{self.path}[{i}]")

    def __str__(self) -> str:
        source = self.source
        for key, typed in self.overrides:
            if self.path == key or self.path.startswith((key + ".", key + "[")):
                source = f"--set {typed}"
        return f"{source}: {self.path}" if self.path else source


def _number(value: Any) -> float | None:
    """`value` as a float when Python's float() reads it (YAML 1.1 reads 1e-4, without a
    dot, as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce(value: Any, hint: Any, where: _Where) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(hint, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_coerce(v, a, where.item(i)) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(v, item, where.item(i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is float:
        number = _number(value)
        if number is not None:
            return number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if typing.get_origin(hint) is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {hint!r}")


def _build(cls: type[T], data: dict, where: _Where) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(f"{where.key(str(key))}: unknown key; {hint}known keys here: {', '.join(names)}")
    kwargs = {k: _coerce(v, hints[k], where.key(k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        # A dataclass's own check (__post_init__) knows its fields, not the file.
        raise ConfigError(f"{where}: {e}") from None


def from_dict(cls: type[T], data: dict, where: str = "config", overrides: list[str] = ()) -> T:
    """Build dataclass `cls` from a mapping; missing keys take the dataclass defaults.

    Errors read `WHERE: key.path: problem`; a value set by one of `overrides` (the
    `KEY=VALUE` strings already applied to `data`) is named by that override instead."""
    typed = tuple((item.partition("=")[0].strip(), item) for item in overrides)
    return _build(cls, data, _Where(where, "", typed))


def to_dict(cfg: Any) -> dict:
    """Plain nested dict of a config (tuples become lists), ready for YAML or JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def config_changes(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The entries that differ between two nested config dicts, as `a.b: old -> new`
    (`<absent>` for a key one side lacks), in key order."""
    changes = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_changes(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a} -> {b}")
    return changes


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict; values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=30")
        node = data
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}: {key!r} is not a dotted key such as train.epochs")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: {p!r} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({e.problem or e})") from None
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Load a YAML config into dataclass `cls`, then apply `--set` overrides."""
    data: dict = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    data = apply_overrides(data, list(overrides))
    return from_dict(cls, data, where, list(overrides))
