"""Frozen dataclass configs: YAML file, then `key=value` overrides, checked against the dataclass.

Each job defines one frozen dataclass (nested dataclasses for sections). `load_config` reads the YAML, applies
dotted overrides (`stage2.lr=0.05`; values are parsed as YAML, so `none`/`null`, lists and numbers work), and
builds the dataclass, raising ConfigError that names the file, the line and the key for an unknown key, a wrong
type or a missing required key, before any work or cluster time is spent.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from . import storage
from .errors import UserError

T = TypeVar("T")
_NUMERIC_SCALARS = (int, float)


class ConfigError(UserError):
    """A config problem, with where it comes from (file:line or the command line) and the dotted key."""


class _Source:
    """Where each dotted key was set: 'file.yaml:12' or 'command line override'."""

    def __init__(self, path: str | None) -> None:
        self.path = path or "<defaults>"
        self.lines: dict[str, int] = {}
        self.overrides: set[str] = set()

    def where(self, key: str) -> str:
        if key in self.overrides:
            return f"command line '{key}'"
        parts = key.split(".")
        while parts:
            dotted = ".".join(parts)
            if dotted in self.lines:
                return f"{self.path}:{self.lines[dotted]}"
            parts.pop()
        return self.path


def _node_lines(node: yaml.Node, prefix: str, lines: dict[str, int]) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            dotted = f"{prefix}{key_node.value}"
            lines[dotted] = key_node.start_mark.line + 1
            _node_lines(value_node, dotted + ".", lines)


def _read_yaml(path: Path, source: _Source) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    if node is not None:
        _node_lines(node, "", source.lines)
    return data


def _apply_override(data: dict[str, Any], override: str, source: _Source) -> None:
    key, sep, raw = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"command line override {override!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"command line override {override!r}: value is not valid YAML: {exc}") from exc
    _set_dotted(data, key, value, f"command line override {override!r}")
    source.overrides.add(key)


def _set_dotted(data: dict[str, Any], key: str, value: Any, origin: str) -> None:
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{origin}: '{'.'.join(parts[: i + 1])}' is not a section")
        node = child
    node[parts[-1]] = value


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _convert(value: Any, tp: Any, key: str, source: _Source) -> Any:
    origin, args = get_origin(tp), get_args(tp)

    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{source.where(key)}: key '{key}': expected {expected}, got {value!r}")

    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                continue
        raise fail(" or ".join(_type_name(a) for a in args))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            hint = getattr(tp, "SCALAR_HINT", None)  # a key that was a scalar once says what replaced it
            if hint:
                raise ConfigError(f"{source.where(key)}: key '{key}' is a section now, got {value!r}: {hint}")
            raise fail(f"a section (mapping) for {tp.__name__}")
        return _build(tp, value, f"{key}.", source)
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            raise fail("one of " + ", ".join(repr(a) for a in args))
        return value
    if origin in (tuple, list):
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise fail("a list")
        item_type = args[0] if args else Any
        return tuple(_convert(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail("a mapping")
        return {str(k): _convert(v, args[1], f"{key}.{k}", source) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, _NUMERIC_SCALARS):
            raise fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail("a string")
        return value
    raise ConfigError(f"key '{key}': unsupported field type {tp!r} in the config schema")


def _build(cls: type[T], data: Mapping[str, Any], prefix: str, source: _Source) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    renamed = getattr(cls, "RENAMED_KEYS", {})  # old key -> what replaces it (a refused key says where to go)
    old = next((name for name in unknown if name in renamed), None)
    if old is not None:
        key = f"{prefix}{old}"
        raise ConfigError(f"{source.where(key)}: key '{key}' was replaced: use {renamed[old]}")
    if unknown:
        key = f"{prefix}{unknown[0]}"
        raise ConfigError(
            f"{source.where(key)}: unknown key '{key}' (valid keys here: {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source.where(prefix.rstrip('.'))}: missing required key '{key}' (set it in the "
                              f"config file, or give {key}=... or its flag on the command line)")  # fmt: skip
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{_section_source(source, prefix)}: {prefix.rstrip('.') or 'config'}: {exc}"
        ) from exc


def _section_source(source: _Source, prefix: str) -> str:
    """Where a section's values came from: its line in the file, and the command-line overrides inside it (a
    check across the section's keys may fail because of either)."""
    where = source.where(prefix.rstrip("."))
    overridden = sorted(key for key in source.overrides if key.startswith(prefix))
    if not overridden:
        return where
    listed = ", ".join(f"'{key}'" for key in overridden)
    return f"command line {listed}" if where == source.path else f"{where} with command line {listed}"


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    flags: Mapping[str, Any] | None = None,
) -> T:
    """Build `cls` from an optional YAML file, then command-line flags, then `key=value` overrides.

    Args:
        cls: the job's frozen dataclass.
        path: YAML file; None for defaults only.
        overrides: `dotted.key=value` strings; values are parsed as YAML.
        flags: dotted key -> already-parsed value from named command-line options (None values are skipped).

    Raises:
        ConfigError naming the file and line, or the override, and the key.
    """
    source = _Source(str(path) if path is not None else None)
    data = _read_yaml(Path(path), source) if path is not None else {}
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(data, key, value, f"--{key.replace('_', '-')}")
            source.overrides.add(key)
    for override in overrides:
        _apply_override(data, override, source)
    return _build(cls, data, "", source)


def load_section(cls: type[T], path: str | Path, section: str, overrides: Sequence[str] = ()) -> T:
    """Build `cls` from one top-level section of a job's YAML (e.g. `data`), ignoring the other sections.

    Overrides follow the one rule of every job: dotted from the top of the YAML (`data.root=/x`), and a key
    the command does not read is an unknown key. Only `section` is read here, so `root=/x` (no prefix) or
    `model.arch=x` is refused, not silently dropped. Errors name the file, line and `section.key`.
    """
    source = _Source(str(path))
    data = _read_yaml(Path(path), source)
    for override in overrides:
        _apply_override(data, override, source)
        key = override.partition("=")[0].strip()
        if key.split(".")[0] != section:
            hint = "" if "." in key else f": did you mean {section}.{key}?"
            raise ConfigError(
                f"{source.where(key)}: unknown key '{key}' (valid keys here: {section}; this command reads "
                f"only the '{section}' section{hint})"
            )
    if section not in data:
        raise ConfigError(f"{path}: missing required section '{section}'")
    value = data[section]
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{source.where(section)}: key '{section}': expected a section (mapping), got {value!r}"
        )
    return _build(cls, value, f"{section}.", source)


def from_dict(cls: type[T], data: Mapping[str, Any], origin: str = "<dict>") -> T:
    """Rebuild a config from `to_dict` output (e.g. inside a Ray worker), with the same checks."""
    return _build(cls, data, "", _Source(origin))


def to_dict(config: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML/JSON."""

    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def to_yaml(config: Any) -> str:
    """The config as YAML with its sections and keys in field order (tuples as lists): `load_config` of the
    text gives the same config."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_resolved(config: Any, folder: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to the job's outputs (atomically); loading it back gives the same config."""
    path = Path(folder) / name
    storage.write_text(path, to_yaml(config))
    return path
