"""One strict loader for every YAML config (pretraining, fine-tuning, bench): mapping -> dataclass.

:func:`from_mapping` builds a dataclass from a mapping and refuses what would otherwise fail hours later or
silently: unknown keys (with a "did you mean"), values of the wrong type (``steps: fifty``), missing required
keys. Numbers written as YAML strings (PyYAML reads ``1e-3`` as the string ``"1e-3"``) are converted when the
field is a float. Nested dataclasses, ``Optional``, ``List``/``Tuple``/``Sequence`` and ``Dict`` fields are
checked recursively. :func:`apply_overrides` applies ``--set key=value`` pairs, where ``a.b.c`` reaches nested
keys and list items (``datasets.0.prob=0.9``).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import Any, Dict, List, Mapping, Sequence, Type, TypeVar, Union

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value or key that cannot be used; the message names the key path and the fix."""


def suggest(word: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def from_mapping(cls: Type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from ``data`` (a mapping), checking keys and types; ``where`` names the place
    (file and key path) in error messages."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = str(unknown[0])
        raise ConfigError(f"{where}: unknown key {k!r}{suggest(k, list(fields))} (allowed: {', '.join(fields)})")
    hints = typing.get_type_hints(cls)
    values: Dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[name] = coerce(data[name], hints.get(name, Any), f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {exc}") from None


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against (and, for numbers in strings, converted to) the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any or tp is object:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {options}")
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        number = _number(value, where, "an integer")
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(_number(value, where, "a number"))
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin in (list, tuple, typing.Sequence, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{k}]") for k, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, typing.Mapping, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        item = args[1] if len(args) == 2 else Any
        return {k: coerce(v, item, f"{where}.{k}") for k, v in value.items()}
    return value


def _number(value: Any, where: str, what: str) -> float:
    if isinstance(value, (int, float)):
        return value
    try:
        return float(value.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{where}: expected {what}, got {value!r}") from None


def parse_overrides(pairs: Sequence[str]) -> List[tuple]:
    """``["a.b=1", "c=x"]`` -> ``[(["a", "b"], 1), (["c"], "x")]`` (values parsed as YAML)."""
    import yaml
    out = []
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {pair!r} must look like key=value (nested: a.b=value)")
        out.append((key.split("."), yaml.safe_load(text)))
    return out


def apply_overrides(data: Dict[str, Any], pairs: Sequence[str]) -> Dict[str, Any]:
    """A copy of ``data`` with ``--set`` pairs applied; ``a.b`` walks into mappings, ``a.0`` into lists.

    A path through a missing mapping key creates it (the loader then refuses unknown keys with a suggestion);
    a list index out of range is refused."""
    import copy
    data = copy.deepcopy(data)
    for path, value in parse_overrides(pairs):
        node: Any = data
        for depth, part in enumerate(path[:-1]):
            node = _child(node, part, path[: depth + 1], create=True)
        last = path[-1]
        if isinstance(node, list):
            node[_index(node, last, path)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:-1])} is not a mapping or list")
    return data


def _child(node: Any, part: str, path: List[str], create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path)]
    if isinstance(node, dict):
        if part not in node and create:
            node[part] = {}
        return node[part]
    raise ConfigError(f"--set {'.'.join(path)}: {'.'.join(path[:-1]) or 'the config'} is not a mapping or list")


def _index(node: list, part: str, path: List[str]) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"--set {'.'.join(path)}: {part!r} is not an index of a list of {len(node)}")
    return int(part)
