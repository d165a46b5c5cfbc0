"""One strict loader for every YAML config (pretraining, fine-tuning, bench): mapping -> dataclass.

:func:`load_config` reads a YAML file, applies ``--set`` overrides and builds the config dataclass with
:func:`from_mapping`, which refuses what would otherwise fail hours later or silently: unknown keys (with a "did
you mean"), values of the wrong type (``steps: fifty``), missing required keys. Numbers written as YAML strings
(PyYAML reads ``1e-3`` as the string ``"1e-3"``) are converted when the field is a float. Nested dataclasses,
``Optional``/``Union``, ``List``/``Tuple``/``Sequence`` and ``Dict`` fields are checked recursively; a field
declared with :func:`option` ``(keys_of=Cls)`` holds some keys of dataclass ``Cls`` (e.g. the fine-tuning
settings a bench variant overrides), checked key by key. :func:`apply_overrides` applies ``--set key=value``
pairs, where ``a.b.c`` reaches nested keys and list items (``datasets.0.prob=0.9``). Every field's help text
(:func:`option`) feeds the generated reference, :func:`reference_markdown` (``docs/config.md``). A file may
start from another with ``base: OTHER.yaml`` (:func:`merge_base`: its keys on top of OTHER's, mappings merged
key by key), so a variant states only what it changes.
"""
from __future__ import annotations

import dataclasses
import difflib
from collections import abc
import typing
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Type, TypeVar, Union

T = TypeVar("T")
_NO_DEFAULT: Any = dataclasses.MISSING


def option(default: Any = _NO_DEFAULT, help: str = "", *, factory: Any = _NO_DEFAULT,
           keys_of: Optional[type] = None) -> Any:
    """A dataclass field with its help text (shown in ``docs/config.md``): ``default`` or a ``factory`` for
    mutable defaults, neither for a required key. ``keys_of=Cls``: the field is a mapping of some keys of
    dataclass ``Cls`` (unknown keys refused, values checked against ``Cls``'s field types)."""
    metadata: Dict[str, Any] = {"help": help}
    if keys_of is not None:
        metadata["keys_of"] = keys_of
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def load_config(cls: Type[T], path: str | Path, set_pairs: Sequence[str] = ()) -> T:
    """Config dataclass ``cls`` from the YAML file ``path`` with ``--set`` pairs applied (:func:`apply_overrides`)."""
    return from_mapping(cls, apply_overrides(read_yaml(path), set_pairs), str(path))


def read_yaml(path: str | Path) -> Dict[str, Any]:
    """A YAML mapping from ``path``, its ``base:`` chain resolved (:func:`merge_base`); a missing file, a parse
    error or a non-mapping names the file."""
    return _read_with_base(Path(path), ())


BASE_KEY = "base"


def merge_base(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """``base`` with ``overrides`` on top: a mapping in both is merged key by key (recursively), any other value
    (a number, a string, a list) replaces the base's whole."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_base(out[key], value)
        else:
            out[key] = value
    return out


def _read_with_base(path: Path, chain: tuple) -> Dict[str, Any]:
    """The mapping of ``path``; with a top-level ``base: OTHER.yaml`` (relative to ``path``'s folder), OTHER's
    resolved mapping with this file's keys merged on top. ``chain`` holds the files already being read (a cycle
    is refused)."""
    data = _read_mapping(path)
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be the path of another YAML config (relative to {path.parent}), "
                          f"got {base!r}")
    base_path = path.parent / base
    here = path.resolve()
    if base_path.resolve() in chain + (here,):
        names = " -> ".join(str(p) for p in chain + (here, base_path.resolve()))
        raise ConfigError(f"{path}: base configs form a cycle ({names}); remove one of the base keys")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base config {base!r} not found (looked for {base_path}; the path is relative "
                          f"to the folder of {path.name})")
    return merge_base(_read_with_base(base_path, chain + (here,)), data)


def _read_mapping(path: Path) -> Dict[str, Any]:
    import yaml
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


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
        if name in data and "keys_of" in f.metadata:
            values[name] = partial_mapping(f.metadata["keys_of"], data[name], f"{where}.{name}")
        elif name in data:
            values[name] = coerce(data[name], hints.get(name, Any), f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise ConfigError(f"{where}: missing required key {name!r}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:      # the class's own checks (__post_init__)
        raise ConfigError(f"{where}: {exc}") from None


def partial_mapping(cls: type, data: Any, where: str) -> Dict[str, Any]:
    """Some keys of dataclass ``cls`` (e.g. settings overrides), each checked against its field type; the
    dataclass itself is not built (the caller merges such mappings and builds it once)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} keys, got {data!r}")
    fields = [f.name for f in dataclasses.fields(cls) if f.init]
    hints = typing.get_type_hints(cls)
    out = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{suggest(str(key), fields)} (allowed: "
                              f"{', '.join(fields)})")
        out[key] = coerce(value, hints.get(key, Any), f"{where}.{key}")
    return out


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
        for choice in options:
            try:
                return coerce(value, choice, where)
            except ConfigError as exc:
                errors.append(str(exc))
        if isinstance(value, Mapping):       # a mapping meant for the dataclass option: its error names the key
            errors = [e for e, choice in zip(errors, options) if dataclasses.is_dataclass(choice)] or errors
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{where}: {value!r} fits none of {', '.join(type_name(o) for o in options)}")
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
    if origin in (list, tuple, abc.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        items = [coerce(v, item, f"{where}[{k}]") for k, v in enumerate(value)]
        return tuple(items) if origin is tuple or tp is tuple else items
    if origin in (dict, abc.Mapping) or tp is dict:
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


# ----------------------------------------------------------------------------------------------- the reference
def type_name(tp: Any) -> str:
    """A field annotation in words for the reference (``list of int``, ``float or null``, a dataclass link)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object:
        return "any"
    if origin is Union:
        options = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(options + (["null"] if type(None) in args else []))
    if dataclasses.is_dataclass(tp):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    if origin in (list, tuple, abc.Sequence) or tp in (list, tuple):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, abc.Mapping) or tp is dict:
        return f"mapping {type_name(args[0])} → {type_name(args[1])}" if len(args) == 2 else "mapping"
    return getattr(tp, "__name__", str(tp))


def _default_text(f: dataclasses.Field) -> str:
    import json
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return "required"
    return f"`{json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)}`"


def _nested(cls: type) -> List[type]:
    """Dataclasses named by ``cls``'s fields (types or ``keys_of``), in field order."""
    out: List[type] = []

    def walk(tp: Any) -> None:
        if dataclasses.is_dataclass(tp):
            out.append(tp)
        for arg in typing.get_args(tp):
            walk(arg)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        walk(f.metadata.get("keys_of") or hints.get(f.name, Any))
    return out


def reference_markdown(sections: Sequence[tuple], preamble: str = "") -> str:
    """The config reference: for each ``(heading, root dataclass)`` section, the root and every dataclass it
    names (once, in order of first mention) as a table of key, type, default and help. A class's first docstring
    paragraph introduces its table."""
    lines = ["# Configuration reference", "", preamble.strip(), ""] if preamble else ["# Configuration reference", ""]
    done: set = set()
    for heading, root in sections:
        lines += [f"## {heading}", ""]
        queue = [root]
        while queue:
            cls = queue.pop(0)
            if cls in done:
                continue
            done.add(cls)
            queue += _nested(cls)
            doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
            lines += [f"### {cls.__name__}", "", doc, "", "| key | type | default | meaning |", "|---|---|---|---|"]
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                if not f.init:
                    continue
                keys_of = f.metadata.get("keys_of")
                kind = (f"mapping of [{keys_of.__name__}](#{keys_of.__name__.lower()}) keys" if keys_of
                        else type_name(hints.get(f.name, Any)))
                text = " ".join(str(f.metadata.get("help", "")).split()).replace("|", "\\|")
                lines.append(f"| `{f.name}` | {kind} | {_default_text(f).replace('|', chr(92) + '|')} | {text} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"
