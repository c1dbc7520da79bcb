"""Reading configs: YAML files with ``_base_`` inheritance, dotted overrides, dumping.

A recipe file may name one base or a list of bases, relative to itself::

    _base_: _base_/resnet32.yaml            # or [a.yaml, b.yaml]; later bases win
    loss: {mode: dsl}

Bases are read first (recursively) and the file's own keys are deep-merged on top:
mappings merge key by key, any other value (lists included) replaces the base's.
Nothing here knows the schema; :mod:`reid_dhm.config.resolve` checks the keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..utils.io import yaml_text

BASE_KEY = "_base_"


class ConfigError(ValueError):
    """A configuration problem; the message names the key and file at fault."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping (the second would silently win)."""

    def __init__(self, key: Any, first_line: int, line: int):
        super().__init__(problem=f"duplicate key {key!r}")
        self.key, self.first_line, self.line = key, first_line, line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key repeated in one mapping, at any depth.

    PyYAML keeps the last of two equal keys, so a second ``optim:`` section would
    silently drop every key set only in the first. Keys brought in by a ``<<:`` merge
    may still be overridden: that is what merging is for.
    """

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in seen:
                        raise DuplicateKeyError(key, seen[key], line)
                    seen[key] = line
                except TypeError:  # an unhashable key: SafeLoader's own error follows
                    continue
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused (:class:`DuplicateKeyError`)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a config file, or None when it is a file."""
    if path.is_dir():
        return "is a directory, not a config file: pass a YAML file in it"
    if not path.is_file():
        return "not found"
    return None


def read_yaml(path: str | os.PathLike) -> dict:
    """One YAML file's top-level mapping as written (``_base_`` not followed).

    Raises:
        ConfigError: one line naming the file: missing, a directory, unreadable, not
            UTF-8, not valid YAML, a duplicate key (with both lines), not a mapping.
    """
    path = Path(path)
    problem = _file_problem(path)
    if problem == "not found":
        raise ConfigError(f"config file not found: {path}")
    if problem:
        raise ConfigError(f"{path} {problem}")
    try:
        data = load_yaml_text(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}): save the file as UTF-8"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    except DuplicateKeyError as err:
        raise ConfigError(
            f"{path}, line {err.line}: duplicate key {err.key!r} (first at line "
            f"{err.first_line}); the second would replace the first: merge them into one"
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return dict(data)


def recipe_layers(path: str | os.PathLike) -> list[tuple[str, dict]]:
    """``(file, its own keys)`` for ``path`` and all its bases, the deepest base first.

    Each layer is kept apart so that an error names the file that wrote the bad key.
    A cycle or a missing base is a one-line ConfigError naming the file at fault.
    """
    return _layers(Path(path), ())


def _layers(path: Path, chain: tuple[Path, ...]) -> list[tuple[str, dict]]:
    data = read_yaml(path)
    here = path.resolve()
    bases = data.pop(BASE_KEY, None)
    if bases is None:
        return [(str(path), data)]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of them")
    layers = []
    for base in bases:
        target = path.parent / base
        if target.resolve() in (*chain, here):
            loop = " -> ".join(p.name for p in (*chain, here, target.resolve()))
            raise ConfigError(f"{path}: {BASE_KEY} {base!r} makes a cycle ({loop})")
        problem = _file_problem(target)
        if problem == "not found":
            raise ConfigError(f"{path}: {BASE_KEY} {base!r} not found (looked for {target})")
        if problem:
            raise ConfigError(f"{path}: {BASE_KEY} {base!r} ({target}) {problem}")
        layers += _layers(target, (*chain, here))
    return [*layers, (str(path), data)]


def deep_merge(base: Mapping, update: Mapping) -> dict:
    """A new dict: ``update`` over ``base``, mappings merged key by key (child wins)."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        both = isinstance(old, Mapping) and isinstance(value, Mapping)
        merged[key] = deep_merge(old, value) if both else value
    return merged


def read_recipe(path: str | os.PathLike) -> dict:
    """A recipe file with its bases merged in: what the file means as one mapping."""
    merged: dict = {}
    for _, layer in recipe_layers(path):
        merged = deep_merge(merged, layer)
    return merged


def parse_override(text: str) -> dict:
    """``'optim.lr=0.001'`` -> ``{'optim': {'lr': 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = load_yaml_text(raw) if raw.strip() else ""
    except DuplicateKeyError as err:
        raise ConfigError(f"override {text!r}: duplicate key {err.key!r}") from None
    except yaml.YAMLError:
        value = raw  # not YAML: the schema decides whether a plain string is fine
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def config_changes(before: Mapping, after: Mapping, prefix: str = "") -> list[str]:
    """``'key: old -> new'`` for every dotted key whose value differs (``output_dir`` aside)."""
    lines = []
    for key in after:
        dotted = f"{prefix}{key}"
        old, new = before.get(key), after[key]
        if dotted == "output_dir":
            continue
        # model.kwargs is one value: its inner keys belong to the model builder.
        if isinstance(old, Mapping) and isinstance(new, Mapping) and dotted != "model.kwargs":
            lines += config_changes(old, new, dotted + ".")
        elif old != new:
            lines.append(f"{dotted}: {old!r} -> {new!r}")
    return lines


def dump_config(cfg: Mapping) -> str:
    """The resolved config as YAML (the ``config.yaml`` saved beside a run's outputs)."""
    return yaml_text(cfg)
