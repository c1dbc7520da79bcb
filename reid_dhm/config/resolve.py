"""Resolution: defaults < data-set preset < ``--config`` recipe < ``KEY=VALUE`` overrides.

Every layer is merged with its name (``preset 'synthreid'``, a file, ``override
'optim.lr=x'``, a checkpoint) and the schema validates the result after each layer,
so an error names the dotted key and the layer at fault. Rules between keys
(:mod:`reid_dhm.config.rules`) run once at the end.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from . import rules
from .loading import ConfigError, deep_merge, parse_override, recipe_layers
from .presets import PRESETS
from .schema import DEFAULTS, Config, section_of

# pydantic error types -> the type a value must have, in today's words.
_TYPE_WORDS = {
    "finite_number": "a finite number",
    "float": "float",
    "int": "int",
    "bool": "bool",
    "string": "str",
    "list": "list",
}


def merge(base: dict, update: Mapping, source: str, origin: dict | None = None) -> dict:
    """Deep-merge ``update`` into ``base`` (in place), refusing keys the schema lacks.

    ``origin`` (dotted key -> source) records which layer set each key, so a later
    error can name it. Types and ranges are checked by :func:`validate`.
    """
    _merge(base, update, source, Config, "", {} if origin is None else origin)
    return base


def _merge(base: dict, update: Any, source: str, schema, prefix: str, origin: dict) -> None:
    if not isinstance(update, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in schema.model_fields:
            valid = ", ".join(sorted(f"{prefix}{k}" for k in schema.model_fields))
            raise ConfigError(f"{source}: unknown config key {dotted!r}; valid keys here: {valid}")
        sub = section_of(schema, key)
        if sub is not None:
            _merge(base.setdefault(key, {}), value, source, sub, dotted + ".", origin)
        else:
            base[key] = list(value) if isinstance(value, tuple) else value
            origin[dotted] = source


def validate(cfg: Mapping, origin: Mapping[str, str]) -> dict:
    """``cfg`` checked against the schema and normalised (number spellings, int -> float).

    Raises:
        ConfigError: one line, ``<source>: '<dotted key>' must be ..., got <value>``.
    """
    try:
        return Config.model_validate(cfg).model_dump()
    except ValidationError as err:
        raise ConfigError(_describe(err.errors()[0], origin)) from None


def _describe(error: Mapping, origin: Mapping[str, str]) -> str:
    # List indices and union branches (e.g. 'float') are not config keys.
    names = [part for part in error["loc"] if isinstance(part, str)]
    key = ".".join(_config_path(names))
    kind = error["type"]
    if kind == "value_error":
        what = error["msg"].removeprefix("Value error, ").removeprefix("must be ")
    else:
        what = next((w for t, w in _TYPE_WORDS.items() if kind.startswith(t)), error["msg"])
    source = origin.get(key) or next(
        (s for k, s in origin.items() if k.startswith(key + ".")), "the config"
    )
    return f"{source}: {key!r} must be {what}, got {error['input']!r}"


def _config_path(names: list[str]) -> list[str]:
    """The longest prefix of ``names`` that is a config key (drops union tags)."""
    path, schema = [], Config
    for name in names:
        if schema is None or name not in schema.model_fields:
            break
        path.append(name)
        schema = section_of(schema, name)
    return path


def _starting_config(name: str | None, resumed: Mapping | None, resumed_from: str, origin):
    """Defaults plus the data set's preset, or defaults plus a checkpoint's stored config."""
    cfg = _copy(DEFAULTS)
    if resumed is None:
        if name is None:
            raise ConfigError(
                "no dataset given: pass --dataset NAME or set data.dataset in --config"
            )
        merge(cfg, _copy(PRESETS[name]), f"preset {name!r}", origin)
        cfg["data"]["dataset"] = name
        return cfg
    merge(cfg, _copy(resumed), f"{resumed_from}'s config", origin)
    # Where a run writes is not part of its recipe.
    cfg["output_dir"] = None
    return cfg


def _copy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _copy(v) for k, v in tree.items()}
    return [_copy(v) for v in tree] if isinstance(tree, (list, tuple)) else tree


def _chosen_dataset(dataset, file_dataset, config_file, override_dicts) -> str | None:
    """The one data set named by ``--dataset``, a ``data.dataset`` override or the file."""
    cli = next(
        (o["data"]["dataset"] for o in override_dicts if "dataset" in (o.get("data") or {})),
        None,
    )
    chosen = [d for d in (dataset, cli) if d is not None]
    if len(set(chosen)) > 1:
        raise ConfigError(f"--dataset {dataset!r} conflicts with data.dataset={cli!r}")
    # --dataset against the file is a mistake worth stopping; an explicit data.dataset=...
    # override is the documented way to run a recipe file on another data set.
    if dataset is not None and file_dataset and file_dataset != dataset:
        raise ConfigError(
            f"--dataset {dataset!r} conflicts with data.dataset: {file_dataset!r} "
            f"in {config_file} (to run that file on {dataset!r}, add data.dataset={dataset})"
        )
    name = chosen[0] if chosen else file_dataset
    if name is not None and name not in PRESETS:
        raise ConfigError(f"unknown dataset {name!r}; valid datasets are {sorted(PRESETS)}")
    return name


def _switch_dataset(cfg: dict, name: str | None, resumed_from: str, training: bool) -> None:
    """Evaluate a checkpoint on another data set of its task (never train on one)."""
    own = cfg["data"]["dataset"]
    if name is None or name == own:
        return
    if training:
        raise ConfigError(
            f"{resumed_from} was trained on {own!r}; resuming continues on {own!r}, "
            f"not {name!r} (to evaluate it on {name!r}, add --eval-only)"
        )
    task = PRESETS[name].get("task", DEFAULTS["task"])
    if task != cfg["task"]:
        raise ConfigError(
            f"{resumed_from} is a {rules.TASK_NAMES[cfg['task']]} model ({own!r}); it cannot "
            f"be evaluated on the {rules.TASK_NAMES.get(task, task)} dataset {name!r}"
        )
    cfg["data"]["dataset"] = name


def resolve_config(
    dataset: str | None = None,
    config_file: str | os.PathLike | None = None,
    overrides: Iterable[str] = (),
    *,
    resumed: Mapping | None = None,
    resumed_from: str = "the checkpoint",
    training: bool = True,
) -> dict:
    """The fully resolved configuration.

    Args:
        dataset: ``--dataset`` (may be omitted when the recipe sets ``data.dataset``,
            or when resuming).
        config_file: optional YAML recipe with any subset of the sections (and
            ``_base_`` files it inherits from).
        overrides: ``KEY=VALUE`` strings with dotted keys.
        resumed: the resolved config stored in a checkpoint that is resumed or
            evaluated. It replaces defaults and preset (``output_dir`` excepted); the
            file and overrides apply on top. A data set other than the checkpoint's is
            only accepted when not ``training`` (evaluation on another data set of the
            same task).
        resumed_from: how error messages name the checkpoint.
        training: the run trains (``train.max_epoch`` >= 1, the schedule is checked).

    Returns:
        A plain nested dict (YAML-serialisable).
    """
    overrides = list(overrides)
    layers = recipe_layers(config_file) if config_file else []
    from_file: dict = {}
    for _, layer in layers:
        from_file = deep_merge(from_file, layer)
    override_dicts = [parse_override(o) for o in overrides]
    file_dataset = (from_file.get("data") or {}).get("dataset")
    name = _chosen_dataset(dataset, file_dataset, config_file, override_dicts)
    origin: dict[str, str] = {}
    cfg = _starting_config(name, resumed, resumed_from, origin)
    cfg = validate(cfg, origin)
    if resumed is not None:
        _switch_dataset(cfg, name, resumed_from, training)
    steps = [*layers, *((f"override {t!r}", d) for t, d in zip(overrides, override_dicts))]
    for source, update in steps:
        cfg = validate(merge(cfg, update, source, origin), origin)
    rules.complete(cfg, origin)
    rules.check_values(cfg, training, origin, from_checkpoint=resumed is not None)
    return cfg


def check_values(cfg: Mapping, training: bool = True) -> None:
    """Schema and cross-key checks of a merged config; a ConfigError names the key."""
    cfg = validate(cfg, {})
    rules.complete(cfg, {})
    rules.check_values(cfg, training, {})


__all__ = ["check_values", "merge", "resolve_config", "validate"]
