"""Typed configuration: YAML files validated into dataclasses, plus ``key.sub=value`` overrides.

Every key has a type and a default (the dataclass field). Loading (:func:`load`) fails with a
:class:`ConfigError` that names the offending key and file for unknown keys, wrong types and
missing files, and for any value a section's ``validate()`` rejects (:func:`validate`: names
looked up in tables, ranges); nothing is written before the config is valid. The resolved
config (defaults + file + overrides) is what stages hash and what MLflow logs.

This module is the generic loader: it knows the root keys (:class:`Config`), not the
sections; the application's root type subclasses :class:`Config` with one field per section
(``pipelines/graph.py`` builds the pipeline's from its stage table).

Accepted field types: ``bool``, ``int``, ``float`` (ints accepted; YAML 1.1's ``1e-4``
strings accepted), ``str``, ``list[T]``, ``tuple[T, ...]``, ``dict[str, T]``, ``T | None`` and
nested dataclasses.

A file may start from another: ``base: cc12m.yaml`` (a path relative to the file) loads that
file first and merges this one over it, mappings key by key, everything else (lists included)
replaced whole; bases may chain. ``${workdir}`` inside any string value is replaced, after
overrides, by the resolved absolute workdir, so a config can place data next to its outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml


class ConfigError(ValueError):
    """A config file or override that does not match the schema."""


@dataclass
class Config:
    """The root of a config tree: the keys outside any section.

    An application subclasses it with one field per section; ``pipelines/graph.py`` assembles
    the pipeline's root from its stage table. Library code takes sections, never the root;
    :mod:`ovs.stage` needs only these keys. ``workdir`` empty means ``./runs/<experiment>``.
    """

    experiment: str = "default"
    workdir: str = ""
    seed: int = 0

    @property
    def workdir_path(self) -> Path:
        """Absolute: stage code runs in Ray workers whose working directory is not the driver's."""
        path = Path(self.workdir).expanduser() if self.workdir else Path("runs") / self.experiment
        return path.absolute()


RootT = TypeVar("RootT", bound=Config)
T = TypeVar("T")


# ----------------------------------------------------------------------------- validation


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against type ``tp`` and return it converted (lists→tuples etc.)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}: expected a mapping for section {tp.__name__}, got {value!r}"
            )
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            if origin is tuple and args and args[-1] is not Ellipsis:
                if len(value) != len(args):
                    raise ConfigError(f"{where}: expected {len(args)} items, got {value!r}")
                return tuple(
                    _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args))
                )
            item = args[0] if args else Any
            out = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(out) if origin is tuple else out
    elif origin is dict:
        if isinstance(value, dict):
            kt, vt = args if args else (str, Any)
            return {
                _coerce(k, kt, f"{where}.<key>"): _coerce(v, vt, f"{where}.{k}")
                for k, v in value.items()
            }
    elif tp is Any:
        return value
    else:
        raise ConfigError(f"{where}: unsupported field type {_type_name(tp)}")
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls: type, data: dict, where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where and not where.endswith(":") else where
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key (valid keys of {cls.__name__}: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where and not where.endswith(":") else f"{where}{name}"
        kwargs[name] = _coerce(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a section's own validation (__post_init__)
        raise ConfigError(f"{where.split(':')[0]}: {e}") from None


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """``cls`` built from a plain dict (the inverse of ``dataclasses.asdict``) with the loader's
    typed coercion: nested sections, lists to tuples, unknown keys refused with their name."""
    return _build(cls, data, where or f"{cls.__name__}:")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    node[parts[-1]] = value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_overrides(overrides: list[str]) -> dict:
    """``["train.lr=1e-3", "workdir=/x"]`` → nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. train.steps=10)")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return tree


WORKDIR_VAR = "${workdir}"


def read_tree(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """One config file as a dict, its ``base:`` chain merged under it (see the module doc)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    if p.resolve() in _seen:
        raise ConfigError(f"{p}: base cycle: {' -> '.join(str(s) for s in (*_seen, p))}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base: expected a config file path, got {base!r}")
    return _merge(read_tree(p.parent / base, (*_seen, p.resolve())), data)


def _substitute(tree: Any, workdir: str) -> Any:
    if isinstance(tree, dict):
        return {k: _substitute(v, workdir) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_substitute(v, workdir) for v in tree]
    if isinstance(tree, str):
        return tree.replace(WORKDIR_VAR, workdir)
    return tree


def validate(obj: Any) -> None:
    """Call ``validate()`` on ``obj`` and on every dataclass below it that defines one.

    A section's ``validate()`` checks what types cannot (names looked up in tables, ranges,
    settings that go together) and raises ``ValueError`` whose message starts with the full
    key (``pairs.scorer: ...``), so a bad value fails at load, before any stage runs.
    Parents are checked before their subsections, fields in declaration order.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        return
    check = getattr(obj, "validate", None)
    if callable(check):
        check()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            validate(item)


def load(
    root: type[RootT], path: str | Path | None = None, overrides: list[str] | None = None
) -> RootT:
    """Load ``path`` (YAML; may be None for pure defaults) into ``root``, apply overrides,
    substitute ``${workdir}``, then :func:`validate` every section."""
    data: dict = {}
    where = "defaults:"
    if path is not None:
        data = read_tree(path)
        where = f"{Path(path)}:"
    cfg = _build(root, data, where)
    if overrides:
        merged = _merge(to_dict(cfg), parse_overrides(overrides))
        cfg = _build(root, merged, "override:")
    tree = to_dict(cfg)
    if WORKDIR_VAR in json.dumps(tree):
        if WORKDIR_VAR in cfg.workdir:
            raise ConfigError(f"{where} workdir: cannot refer to {WORKDIR_VAR}")
        cfg = _build(root, _substitute(tree, str(cfg.workdir_path)), where)
    try:
        validate(cfg)
    except ValueError as e:
        source = f"{where[:-1]} + overrides:" if overrides else where
        raise ConfigError(f"{source} {e}") from None
    return cfg


def to_dict(obj: Any) -> dict:
    """A dataclass config as plain JSON-able dicts/lists."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def to_yaml(cfg: Any) -> str:
    """A config as YAML, keys in declaration order (what MLflow logs as ``config.yaml``)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists kept as JSON strings), for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def hash_view(obj: Any) -> Any:
    """A config value as it enters stage hashes (``ovs.stage.resolve``).

    Dataclasses become dicts without the fields their class names in ``UNHASHED``: settings of
    how a stage runs (parallelism, devices, runtimes, logging cadence), not of what it
    computes. Rerunning or resuming a stage with other resources then finds its output.
    Fields a section's ``unselected()`` names are left out too: alternatives it does not use
    (``train``'s sections of the methods other than ``train.method``).
    """
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        skip = set(getattr(type(obj), "UNHASHED", ()))
        if hasattr(obj, "unselected"):
            skip.update(obj.unselected())
        return {
            f.name: hash_view(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name not in skip
        }
    if isinstance(obj, dict):
        return {str(k): hash_view(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [hash_view(v) for v in obj]
    return obj if obj is None or isinstance(obj, (str, int, float, bool)) else str(obj)


def digest(obj: Any, length: int = 12) -> str:
    """Stable short hash of a JSON-able object."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def check_choice(key: str, value: object, choices: Collection[object]) -> None:
    """The check a section's ``validate()`` makes of a name: ``ValueError`` (``"<key> must be
    one of [...], got <value>"``) unless ``value`` is one of ``choices``."""
    if value not in choices:
        shown = sorted(choices) if isinstance(choices, dict) else list(choices)
        raise ValueError(f"{key} must be one of {shown}, got {value!r}")
