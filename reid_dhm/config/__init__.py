"""The one place that reads configuration: schema, presets, YAML recipes, overrides.

Resolution order (later wins): the schema's defaults < the data set's preset <
``--config`` recipe (with its ``_base_`` files) < ``KEY=VALUE`` overrides. When a
checkpoint is resumed (or evaluated), its stored config takes the place of the defaults
and preset. Every key must exist in the schema (:mod:`.schema`); an unknown key, a value
of the wrong type, an out-of-range value or a non-default value of a key the run's task
does not read is a one-line error naming the dotted key and the layer at fault. The
library never reads configuration: tools turn sections into explicit arguments.
"""

from .loading import (
    ConfigError,
    config_changes,
    deep_merge,
    dump_config,
    parse_override,
    read_recipe,
    read_yaml,
    recipe_layers,
)
from .presets import CLASSIFICATION_DATASETS, PRESETS, REID_DATASETS
from .resolve import check_values, merge, resolve_config
from .rules import TASK_NAMES
from .schema import DEFAULTS, Config, task_only_keys

__all__ = [
    "CLASSIFICATION_DATASETS",
    "DEFAULTS",
    "PRESETS",
    "REID_DATASETS",
    "TASK_NAMES",
    "Config",
    "ConfigError",
    "check_values",
    "config_changes",
    "deep_merge",
    "dump_config",
    "merge",
    "parse_override",
    "read_recipe",
    "read_yaml",
    "recipe_layers",
    "resolve_config",
    "task_only_keys",
]
