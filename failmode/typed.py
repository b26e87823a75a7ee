"""Typed settings from JSON: a frozen dataclass per section, unknown keys and wrong types refused in one line.

A number setting may carry a sane range (`bounded`: field metadata), checked wherever the value comes from: a preset
file (`from_mapping`), a command-line flag (`arg_type`, an argparse `type`) or code (`check_ranges`); NaN and
infinities are never in range. The ranges are listed in docs/settings.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from failmode.errors import FailmodeError, ValidationError

T = TypeVar("T")


@dataclass(frozen=True)
class Range:
    """The sane range of a number setting: lo..hi, both included unless `lo_open` (then lo itself is refused)."""

    lo: float
    hi: float
    lo_open: bool = False

    def describe(self) -> str:
        """"1..1000", "> 0 and <= 1e+06"."""
        return f"> {self.lo:g} and <= {self.hi:g}" if self.lo_open else f"{self.lo:g}..{self.hi:g}"

    def contains(self, value: float) -> bool:
        """Whether `value` is in range (NaN and infinities never are)."""
        return math.isfinite(value) and (self.lo < value if self.lo_open else self.lo <= value) and value <= self.hi

    def check(self, value: Any, name: str) -> None:
        """Raise ValidationError "NAME: VALUE is out of range (LO..HI)" unless `value` is None or in range."""
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not self.contains(value):
            raise ValidationError(f"{name}: {value!r} is out of range ({self.describe()})")


def bounded(default: Any, lo: float, hi: float, *, lo_open: bool = False) -> Any:
    """A dataclass field with a default and a sane range (`Range`), checked by `from_mapping`, `arg_type` and
    `check_ranges`."""
    return dataclasses.field(default=default, metadata={"range": Range(lo, hi, lo_open)})


def field_range(cls: type, name: str) -> Range | None:
    """The range of field `name` of dataclass `cls`, if it has one."""
    return next((f.metadata.get("range") for f in dataclasses.fields(cls) if f.name == name), None)


def check_ranges(obj: Any, where: str) -> None:
    """Every bounded field of dataclass instance `obj` in its range; ValidationError "WHERE.FIELD: ..." otherwise."""
    for f in dataclasses.fields(obj):
        rng = f.metadata.get("range")
        if rng is not None:
            rng.check(getattr(obj, f.name), f"{where}.{f.name}" if where else f.name)


def arg_type(cls: type | str, name: str, kind: type = int) -> Any:
    """An argparse `type` for a flag that sets field `name` of `cls` (a class, or "module:Class", imported only when
    a value is parsed, so commands stay light): parses `kind` and checks the field's range, so a flag and a preset
    key share one range (a usage error of one line otherwise)."""

    def parse(text: str) -> Any:
        import importlib

        owner = cls
        if isinstance(owner, str):
            module, _, attr = owner.partition(":")
            owner = getattr(importlib.import_module(module), attr)
        rng = field_range(owner, name)
        if rng is None:
            raise TypeError(f"{owner.__name__}.{name} has no range")
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not rng.contains(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range ({rng.describe()})")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def type_name(tp: Any) -> str:
    """A readable name of a type annotation ("int or null", "list of str")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is Any:
        return "anything"
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"object of {type_name(args[1])}" if args else "object"
    if dataclasses.is_dataclass(tp):
        return "object"
    return {float: "number", int: "integer", str: "string", bool: "true/false"}.get(tp, getattr(tp, "__name__", str(tp)))


def matches(value: Any, tp: Any) -> bool:
    """Whether a JSON value fits the annotation `tp` (an int is a float; a bool is neither)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and (not args or all(matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value) and (
            not args or all(matches(v, args[1]) for v in value.values()))
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (dict, tp))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def from_mapping(cls: type[T], data: Any, where: str, *, exclude: tuple[str, ...] = ()) -> T:
    """`cls(**data)` after checking `data`: an object, known keys only (not in `exclude`), each of its field's type.

    Nested dataclass fields (and lists of them) are built from their objects the same way, with `where.key`.
    Errors are one line: "WHERE: unknown key 'x' (known: ...)", "WHERE.key must be an integer, got 'three'".
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ValidationError(f"{where} must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name not in exclude}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValidationError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(fields))})")
    missing = [n for n, f in fields.items() if n not in data and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValidationError(f"{where}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints[key]
        if not matches(value, tp):
            raise ValidationError(f"{where}.{key} must be {type_name(tp)}, got {value!r}")
        rng = fields[key].metadata.get("range")
        if rng is not None:
            rng.check(value, f"{where}.{key}")
        kwargs[key] = _nested(value, tp, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, FailmodeError) as e:
        raise ValidationError(f"{where}: {e}") from None


def _nested(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return from_mapping(tp, value, where)
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        items = [from_mapping(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is tuple:
        return tuple(value)
    return value


def to_json(obj: Any) -> Any:
    """A dataclass (nested ones, lists and tuples included) as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_json(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    return obj


def labelled_entry(entry: Any, where: str, index_key: str, name_key: str) -> tuple[int, str]:
    """(index, name) of one class entry of a JSON file: an object whose `index_key` is an integer >= 0 and whose
    `name_key` is a non-empty string; ValidationError naming `where` otherwise."""
    if not isinstance(entry, Mapping):
        raise ValidationError(f"{where}: expected an object, got {type(entry).__name__}")
    index, name = entry.get(index_key), entry.get(name_key)
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise ValidationError(f"{where}: {index_key} must be an integer >= 0, not {index!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError(f"{where}: {name_key} must be a non-empty string, not {name!r}")
    return index, name
