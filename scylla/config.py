"""One base for every YAML schema (train job, sweep grid, eval, tts bench, Scylla configuration).

A schema is a dataclass that subclasses `Config`: its fields are the keys, their type hints are checked, a field
whose type is another Config is a nested section, and `validate()` holds the rules between fields. Every problem is
one `ConfigError` line naming the file, the key and what is allowed:

    experiments/x.yaml: optim: lr: must be a number, got 'fast'
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scylla.errors import ConfigError

C = TypeVar("C", bound="Config")


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file ({} for an empty file); a ConfigError if it is missing, invalid or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of settings, got {type(raw).__name__}")
    return raw


def with_overrides(raw: dict, overrides: dict[str, Any]) -> dict:
    """A deep copy of ``raw`` with dotted keys set: {"optim.lr": 1e-3} sets raw["optim"]["lr"]."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        node = out
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: {key!r} is not a section")
        node[leaf] = value
    return out


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural.get(args[0], _describe(args[0]))}" if args else "a list"
    if origin is dict or hint is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(hint, getattr(hint, "__name__", str(hint)))


def _coerce(value, hint):
    """``value`` as type ``hint`` (an int is a float, a list is a tuple); raises TypeError if it is not one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg)
            except TypeError:
                pass
        raise TypeError
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        items = [_coerce(v, args[0]) for v in value] if args else list(value)
        return tuple(items) if origin is tuple else items
    if (origin is dict or hint is dict) and isinstance(value, dict):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool, type(None)) and type(value) is hint:
        return value
    raise TypeError


def _section(hint) -> type[Config] | None:
    """The Config class of a nested section's type hint (``Section`` or ``Section | None``), else None."""
    for arg in (hint, *typing.get_args(hint)):
        if isinstance(arg, type) and issubclass(arg, Config):
            return arg
    return None


@dataclasses.dataclass
class Config:
    """Base of the YAML schemas: typed fields, nested sections, ``validate()`` for the rules between fields.

    Constructing one (from Python or from YAML) validates it.
    """

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Subclasses check their rules here with ``require``."""

    @staticmethod
    def require(ok: bool, key: str, message: str) -> None:
        """A ConfigError for ``key`` unless ``ok``; ``message`` says what is allowed (and what was given)."""
        if not ok:
            raise ConfigError(f"{key}: {message}")

    @classmethod
    def from_dict(cls: type[C], raw: dict, where: str = "config", prefix: str = "") -> C:
        """Build from a mapping: unknown keys, wrong types and broken rules are one ConfigError line, which names
        ``where`` (the file) and the key (``prefix`` + key for a nested section)."""
        if not isinstance(raw, dict):
            raise ConfigError(f"{where}: {prefix}must be a mapping, got {raw!r}")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        for key in raw:
            if key not in known:
                raise ConfigError(f"{where}: {prefix}unknown key {key!r}; known keys: {', '.join(known)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in raw
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ConfigError(f"{where}: {prefix}missing key {missing[0]!r}")
        kwargs = {}
        for key, value in raw.items():
            hint = hints[key]
            section = _section(hint)
            if section is not None:
                optional = type(None) in typing.get_args(hint)
                kwargs[key] = None if value is None and optional else section.from_dict(value or {}, where,
                                                                                       f"{prefix}{key}: ")
                continue
            try:
                kwargs[key] = _coerce(value, hint)
            except TypeError:
                raise ConfigError(f"{where}: {prefix}{key}: must be {_describe(hint)}, got {value!r}") from None
        try:
            return cls(**kwargs)
        except ConfigError as err:
            raise ConfigError(f"{where}: {prefix}{err}") from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: dict[str, Any] | None = None) -> C:
        """Read ``path``, apply dotted ``overrides`` (e.g. {"optim.lr": 1e-3}), build and validate."""
        return cls.from_dict(with_overrides(read_yaml(path), overrides or {}), str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
