"""Typed JSON documents: dataclasses read from JSON with every key and value checked.

Plans and trained configurations are files a person can read and edit, so a typo or a wrong value must give a
one-line error that names the key (``plan.json: configurations.3d.patch_size[1]: expected an integer, got 'x'``),
not a ``KeyError`` deep inside training. :func:`from_json` walks a dataclass's type hints and converts each value;
:func:`to_json` is its inverse (tuples become lists, integer dictionary keys strings).

Supported field types: ``int``, ``float``, ``str``, ``bool``, ``Any`` (taken as it is), ``X | None``,
``tuple[T, ...]``, ``list[T]``, ``dict[str | int, T]``, ``Literal[...]`` and nested dataclasses. Written by hand:
the JSON-schema and pydantic routes would add a dependency for what fits in this module.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from vesalius.errors import VesaliusError

__all__ = ["SchemaError", "from_json", "to_json"]

T = TypeVar("T")


class SchemaError(VesaliusError):
    """A value that does not fit its field: ``key`` is the dotted path, ``detail`` what is wrong (the message
    reads ``key: detail``; :func:`load_document` adds the file)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}" if key else detail)
        self.key = key
        self.detail = detail


def from_json(cls: type[T], data: Any, key: str = "") -> T:
    """An instance of dataclass ``cls`` from parsed JSON ``data``; raises :class:`SchemaError` naming the key.

    Unknown keys are refused; fields with a default may be absent.
    """
    return _convert(cls, data, key)


def to_json(value: Any) -> Any:
    """JSON-ready data of a dataclass instance (or of any value :func:`from_json` reads)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # fields left at a default of None are left out: the file shows what is set
        return {
            f.name: to_json(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not (getattr(value, f.name) is None and f.default is None)
        }
    if isinstance(value, tuple | list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def load_document(cls: type[T], path: Path, remedy: str) -> T:
    """Read ``path`` as a ``cls`` document; a missing, unreadable or malformed file is a one-line
    :class:`~vesalius.errors.VesaliusError` naming the file and the key."""
    import json

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VesaliusError("file not found", path, remedy) from None
    except (OSError, ValueError) as e:
        raise VesaliusError(f"unreadable JSON ({e})", path, remedy) from None
    try:
        return from_json(cls, data)
    except SchemaError as e:
        raise VesaliusError(f"{e.key or 'the document'}: {e.detail}", path, "correct the value or " + remedy) from None


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _join(key: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{key}[{name}]"
    return f"{key}.{name}" if key else name


def _convert(tp: Any, value: Any, key: str) -> Any:
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, key)
            except SchemaError as e:
                problems.append(e.detail)
        raise SchemaError(key, problems[0] if len(problems) == 1 else f"no allowed type fits {_describe(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise SchemaError(key, f"expected one of {list(get_args(tp))}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, key)
    if origin is tuple or origin is list:
        if not isinstance(value, list | tuple):
            raise SchemaError(key, f"expected a list, got {_describe(value)}")
        args = get_args(tp)
        items = [_convert(args[0], v, _join(key, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(key, f"expected an object, got {_describe(value)}")
        key_type, value_type = get_args(tp)
        out = {}
        for k, v in value.items():
            converted = k
            if key_type is int:
                try:
                    converted = int(k)
                except ValueError:
                    raise SchemaError(_join(key, str(k)), "expected an integer key") from None
            out[converted] = _convert(value_type, v, _join(key, str(k)))
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise SchemaError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(key, f"expected text, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {key}")


@typing.no_type_check
def _dataclass(cls: type, value: Any, key: str) -> Any:
    if not isinstance(value, dict):
        raise SchemaError(key, f"expected an object, got {_describe(value)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise SchemaError(_join(key, unknown[0]), f"unknown key (known: {', '.join(fields)})")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        if name not in value:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise SchemaError(_join(key, name), "missing")
            continue
        kwargs[name] = _convert(hints[name], value[name], _join(key, name))
    try:
        return cls(**kwargs)
    except SchemaError as e:
        raise SchemaError(_join(key, e.key), e.detail) from None
    except VesaliusError as e:
        raise SchemaError(key or cls.__name__, e.problem) from None
    except ValueError as e:
        raise SchemaError(key or cls.__name__, str(e)) from None
