"""The one place that reads configuration: defaults, dataset presets, YAML, dotted overrides.

Resolution order (later wins): built-in defaults < the dataset's preset < ``--config``
YAML < ``KEY=VALUE`` overrides. When a checkpoint is resumed (or evaluated), its stored
config takes the place of the defaults and preset, so the recipe it was trained with
carries on unless ``--config`` / overrides change it. Every key must already exist in
the defaults; an unknown key, a value of the wrong type, an out-of-range value or a
non-default value of a key the run's task does not read is an error that names the key.
The library never reads configuration: tools turn sections into explicit arguments.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD

# Keys whose value may be None or of any type (their default gives no type to check).
FREE_KEYS = {
    "model.branches",
    "model.pretrained",
    "loss.ce_weights",
    "output_dir",
    "data.root",
    "scheduler.warmup_start",
}
# Mappings whose inner keys are free-form (checked by the function that receives them).
FREE_MAPPINGS = {"model.kwargs"}

DEFAULTS: dict[str, Any] = {
    "task": "reid",
    "output_dir": None,
    "model": {
        "name": "dhm_resnet50",
        "branches": None,  # None: the model's default (aux1 + aux2)
        "pretrained": True,  # True: torchvision weights from the torch hub cache; or a path
        # paper: the paper's branch recipes; mirror: each aux branch a fresh copy of the
        # main path's stages after its fork (ResNets, MobileNetV2, CIFAR ResNets)
        "branch_style": "paper",
        "neck": "none",  # none | bnneck (BatchNorm on each branch's embedding, BoT)
        "last_stride": 2,  # ResNets: 1 keeps layer4 at /16 (BoT)
        "kwargs": {},
    },
    "data": {
        "dataset": "market1501",
        "root": "reid-data",
        "height": 256,
        "width": 128,
        "transforms": ["random_flip", "random_crop"],
        "norm_mean": list(IMAGENET_MEAN),
        "norm_std": list(IMAGENET_STD),
        "batch_size": 32,
        "test_batch_size": 100,
        "workers": 4,
        "sampler": "random",
        "num_instances": 4,
        "combineall": False,
        "skip_bad_images": False,  # leave unreadable / truncated images out, with a warning
        "limit": 0,  # classification: use only N training images, evenly spaced (0 = all)
        "test_limit": 0,  # classification: evaluate on only N test images, evenly spaced (0 = all)
    },
    "loss": {
        "mode": "dhm",
        "direction": "bidirectional",
        "label_smooth": 0.1,
        "temperature": 1.0,
        "kl_weight": 1.0,
        "kl_warmup_epochs": 0,  # KL weight ramps linearly from 0 over the first E epochs
        "kl_teachers": "all",  # all | deeper (all but the shallowest branch) | main
        "triplet_weight": 0.0,  # batch-hard triplet on every branch's embedding (0 = off)
        "triplet_margin": 0.3,
        "triplet_soft": False,
        "ce_weights": None,
    },
    "branch_sampling": {"policy": "fixed", "p": 0.5, "seed": 0},
    "optim": {
        "name": "amsgrad",
        "lr": 0.0003,
        "weight_decay": 0.0005,
        "betas": [0.9, 0.999],
        "momentum": 0.9,
        "nesterov": False,
    },
    "scheduler": {
        "name": "multi_step",
        "milestones": [20, 40],
        "gamma": 0.1,
        "step_size": 30,
        "warmup_epochs": 0,
        # lr factor of the first warm-up epoch, rising linearly to 1 (BoT: 0.01); null:
        # 1 / (warmup_epochs + 1)
        "warmup_start": None,
    },
    "train": {
        "max_epoch": 60,
        "fixbase_epoch": 10,
        "seed": 1,
        "print_freq": 20,
        "eval_freq": -1,
        "device": "auto",
        "amp": "none",
        "sync_bn": False,  # classification under torchrun on CUDA: SyncBatchNorm over all GPUs
        # every N iterations: cosine of the branches' gradients on the shared stem (0 = off)
        "grad_monitor_every": 0,
        # a NaN / inf loss: stop at once, or skip the batch (stop after max_skips in a row)
        "nonfinite": "stop",
        "nonfinite_max_skips": 10,
        # torch.use_deterministic_algorithms(True): bit-exact reruns and resumes on CPU
        "deterministic": False,
    },
    "test": {
        "metric": "euclidean",
        "normalize_feature": False,
        "rerank": False,
        "ranks": [1, 5, 10, 20],
        "per_branch": False,
        "vis_queries": 6,
        "vis_topk": 8,
        "report": False,  # write the HTML evaluation report into <output_dir>/report
        "feature": "pre_bn",  # with model.neck=bnneck: pre_bn | post_bn (BoT) is evaluated
    },
}

# Dataset presets: the paper's recipes (DESIGN 3) for real data, a fast one for synthreid.
PRESETS: dict[str, dict[str, Any]] = {
    "market1501": {},
    "dukemtmcreid": {},
    "folder": {},
    "synthreid": {
        "model": {"name": "dhm_mobilenetv2", "pretrained": False},
        "data": {
            "root": "reid-data",
            "height": 128,
            "width": 64,
            "batch_size": 32,
            "test_batch_size": 128,
            "workers": 2,
        },
        # About 3 minutes on 2 CPU cores (12 s an epoch), well inside the 5-minute budget.
        "optim": {"lr": 0.003},
        "scheduler": {"milestones": [10]},
        "train": {"max_epoch": 12, "fixbase_epoch": 0, "print_freq": 10},
    },
}

# Classification recipes (DESIGN 3). Batch sizes are global: under torchrun each of N
# processes takes batch_size / N. The dataset's own normalisation is used (norm_mean /
# norm_std are re-ID keys); data.transforms: [] turns the paper's augmentation off.
_CLASSIFICATION = {
    "task": "classification",
    "model": {"pretrained": False},  # the paper trains its classifiers from scratch
    "loss": {"label_smooth": 0.0},
    "optim": {"name": "sgd", "lr": 0.1, "weight_decay": 0.0001, "momentum": 0.9},
    "train": {"fixbase_epoch": 0, "eval_freq": 1, "print_freq": 0},
}
_CIFAR_PRESET = {
    **_CLASSIFICATION,
    # ResNet-32 with He et al.'s CIFAR schedule: 164 epochs, /10 at 81 and 122.
    "model": {"name": "dhm_cifar_resnet32", "pretrained": False},
    "data": {
        "root": "data",  # holds cifar-10-batches-py/ or cifar-100-python/
        "height": 32,
        "width": 32,
        "batch_size": 128,
        "test_batch_size": 500,
        "workers": 2,
    },
    "scheduler": {"name": "multi_step", "milestones": [81, 122], "gamma": 0.1},
    "train": {**_CLASSIFICATION["train"], "max_epoch": 164},
}
PRESETS["cifar100"] = _CIFAR_PRESET
PRESETS["cifar10"] = copy.deepcopy(_CIFAR_PRESET)
PRESETS["imagenet"] = {
    **_CLASSIFICATION,
    "model": {"name": "dhm_resnet50", "pretrained": False},
    "data": {
        "root": "data/imagenet",  # holds train/<wnid>/ and val/<wnid>/
        "height": 224,
        "width": 224,
        "batch_size": 256,
        "test_batch_size": 250,
        "workers": 8,
    },
    "scheduler": {"name": "step", "step_size": 30, "gamma": 0.1},
    "train": {**_CLASSIFICATION["train"], "max_epoch": 90, "print_freq": 100},
}
PRESETS["fashion-mnist"] = {
    **_CLASSIFICATION,
    # A small, fast recipe for CPUs (Debian's dataset-fashion-mnist files), not a paper's.
    "model": {"name": "dhm_cifar_resnet20", "pretrained": False},
    "data": {
        "root": "/usr/share/datasets/fashion-mnist",
        "height": 28,
        "width": 28,
        "batch_size": 128,
        "test_batch_size": 500,
        "workers": 2,
    },
    "optim": {**_CLASSIFICATION["optim"], "lr": 0.05, "weight_decay": 0.0005},
    "scheduler": {"name": "cosine", "warmup_epochs": 1},
    "train": {**_CLASSIFICATION["train"], "max_epoch": 10},
}
REID_DATASETS = ("market1501", "dukemtmcreid", "synthreid", "folder")
CLASSIFICATION_DATASETS = ("cifar10", "cifar100", "imagenet", "fashion-mnist")

# Keys only one task reads (tools/train.py and tools/train_classification.py). A value
# other than the default in a run of the other task would be silently ignored, so it
# is an error instead.
TASK_ONLY_KEYS: dict[str, tuple[str, ...]] = {
    "reid": (
        "data.norm_mean",
        "data.norm_std",
        "data.sampler",
        "data.num_instances",
        "data.combineall",
        "data.skip_bad_images",
        "test.metric",
        "test.normalize_feature",
        "test.rerank",
        "test.ranks",
        "test.vis_queries",
        "test.vis_topk",
        "test.report",
        "test.feature",
        "loss.triplet_weight",
        "loss.triplet_margin",
        "loss.triplet_soft",
    ),
    "classification": ("data.limit", "data.test_limit", "train.sync_bn"),
}
TASK_NAMES = {"reid": "re-ID", "classification": "classification"}

# Integer keys and their smallest valid value (max_epoch: see check_values).
MINIMUMS = {
    "train.fixbase_epoch": 0,
    "data.height": 1,
    "data.width": 1,
    "data.batch_size": 1,
    "data.test_batch_size": 1,
    "data.workers": 0,
    "data.num_instances": 1,
    "data.limit": 0,
    "data.test_limit": 0,
    "test.vis_queries": 0,
    "test.vis_topk": 1,
    "loss.kl_warmup_epochs": 0,
    "train.grad_monitor_every": 0,
    "train.nonfinite_max_skips": 1,
}


class ConfigError(ValueError):
    """A configuration problem; the message names the key and file at fault."""


def register_preset(dataset: str, preset: Mapping[str, Any]) -> None:
    """Add a dataset preset (used by the classification task); names must be new."""
    if dataset in PRESETS:
        raise ConfigError(f"dataset preset {dataset!r} already exists")
    PRESETS[dataset] = dict(preset)


# A number as people write it: 3e-4, 1E-3, 1e+6, .5, 10. (PyYAML 1.1 reads the
# exponent forms without a dot, such as 3e-4, as strings.)
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _coerce(default: Any, value: Any) -> Any:
    """``value`` as the default's number type when it is a number in any spelling.

    Float keys take ints and number strings (``'3e-4'``); int keys take number strings
    and floats with an integral value (``'1e3'``, ``1000.0``). Lists coerce item by
    item after the default's first item. Anything else is returned unchanged (and the
    type check then refuses it).
    """
    if isinstance(default, bool) or isinstance(value, bool):
        return value
    if isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)) and default:
        return [_coerce(default[0], v) for v in value]
    if isinstance(default, (int, float)) and isinstance(value, str):
        if not _NUMBER.match(value.strip()):
            return value
        number = float(value)
        if isinstance(default, float):
            return number
        return int(number) if number.is_integer() else value
    if isinstance(default, int) and not isinstance(default, float) and isinstance(value, float):
        return int(value) if value.is_integer() else value
    return value


def _type_ok(default: Any, value: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        return isinstance(value, (list, tuple))
    if isinstance(default, dict):
        return isinstance(value, Mapping)
    return True


def merge(base: dict, update: Mapping, source: str, prefix: str = "") -> dict:
    """Deep-merge ``update`` into ``base`` (in place), refusing unknown keys and wrong types."""
    if not isinstance(update, Mapping):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'the config'} must be a mapping")
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            valid = ", ".join(sorted(f"{prefix}{k}" for k in base))
            raise ConfigError(f"{source}: unknown config key {dotted!r}; valid keys here: {valid}")
        current = base[key]
        if dotted in FREE_MAPPINGS:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: {dotted!r} must be a mapping, got {value!r}")
            base[key] = dict(value)
        elif isinstance(current, dict) and dotted not in FREE_KEYS:
            merge(current, value, source, dotted + ".")
        elif dotted in FREE_KEYS or current is None:
            base[key] = value
        elif not _type_ok(current, value := _coerce(current, value)):
            raise ConfigError(
                f"{source}: {dotted!r} must be {type(current).__name__}, got {value!r}"
            )
        else:
            base[key] = float(value) if isinstance(current, float) else value
            if isinstance(value, tuple):
                base[key] = list(value)
    return base


def parse_override(text: str) -> dict:
    """``'optim.lr=0.001'`` -> ``{'optim': {'lr': 0.001}}`` (the value is parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. optim.lr=0.001")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return dict(data)


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
        dataset: ``--dataset`` (may be omitted when the YAML file sets ``data.dataset``,
            or when resuming).
        config_file: optional YAML file with any subset of the sections.
        overrides: ``KEY=VALUE`` strings with dotted keys.
        resumed: the resolved config stored in a checkpoint that is resumed or
            evaluated. It replaces defaults and preset (``output_dir`` excepted: where
            a run writes is not part of its recipe); the file and overrides apply on
            top. A data set other than the checkpoint's is only accepted when not
            ``training`` (evaluation on another data set of the same task).
        resumed_from: how error messages name the checkpoint.
        training: the run trains (``train.max_epoch`` must then be >= 1).

    Returns:
        A plain nested dict (YAML-serialisable).
    """
    from_file = read_yaml(config_file) if config_file else {}
    file_dataset = (from_file.get("data") or {}).get("dataset")
    override_dicts = [parse_override(o) for o in overrides]
    cli_dataset = next(
        (o["data"]["dataset"] for o in override_dicts if "dataset" in o.get("data", {})), None
    )
    chosen = [d for d in (dataset, cli_dataset) if d is not None]
    if len(set(chosen)) > 1:
        raise ConfigError(f"--dataset {dataset!r} conflicts with data.dataset={cli_dataset!r}")
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
    if resumed is None:
        if name is None:
            raise ConfigError(
                "no dataset given: pass --dataset NAME or set data.dataset in --config"
            )
        cfg = copy.deepcopy(DEFAULTS)
        merge(cfg, copy.deepcopy(PRESETS[name]), f"preset {name!r}")
        cfg["data"]["dataset"] = name
    else:
        cfg = copy.deepcopy(DEFAULTS)
        merge(cfg, copy.deepcopy(dict(resumed)), f"{resumed_from}'s config")
        cfg["output_dir"] = None
        own = cfg["data"]["dataset"]
        if name is not None and name != own:
            if training:
                raise ConfigError(
                    f"{resumed_from} was trained on {own!r}; resuming continues on {own!r}, "
                    f"not {name!r} (to evaluate it on {name!r}, add --eval-only)"
                )
            task = PRESETS[name].get("task", DEFAULTS["task"])
            if task != cfg["task"]:
                raise ConfigError(
                    f"{resumed_from} is a {TASK_NAMES[cfg['task']]} model ({own!r}); it cannot "
                    f"be evaluated on the {TASK_NAMES.get(task, task)} dataset {name!r}"
                )
            cfg["data"]["dataset"] = name
    if from_file:
        merge(cfg, from_file, str(config_file))
    for text, nested in zip(overrides, override_dicts):
        merge(cfg, nested, f"override {text!r}")
    check_values(cfg, training)
    return cfg


def _get(cfg: Mapping, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def check_values(cfg: Mapping, training: bool = True) -> None:
    """Range checks and task checks of a merged config; a ConfigError names the key.

    Args:
        training: the run trains, so ``train.max_epoch`` must be at least 1 (an
            evaluation-only run may leave it at 0).
    """
    least = 1 if training else 0
    if cfg["train"]["max_epoch"] < least:
        why = " when training (--eval-only evaluates without it)" if training else ""
        raise ConfigError(
            f"'train.max_epoch' must be >= {least}{why}, got {cfg['train']['max_epoch']}"
        )
    for key, minimum in MINIMUMS.items():
        if _get(cfg, key) < minimum:
            raise ConfigError(f"'{key}' must be >= {minimum}, got {_get(cfg, key)!r}")
    ranks = cfg["test"]["ranks"]
    if not ranks or any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in ranks):
        raise ConfigError(f"'test.ranks' must be a non-empty list of integers >= 1, got {ranks!r}")
    task = cfg["task"]
    if task not in TASK_NAMES:
        raise ConfigError(f"'task' must be one of {sorted(TASK_NAMES)}, got {task!r}")
    check_choices_and_ranges(cfg)
    for owner, keys in TASK_ONLY_KEYS.items():
        if owner == task:
            continue
        for key in keys:
            value, default = _get(cfg, key), _get(DEFAULTS, key)
            if value != default:
                raise ConfigError(
                    f"'{key}' is only read by {TASK_NAMES[owner]} runs; this "
                    f"{TASK_NAMES[task]} run ({cfg['data']['dataset']!r}) would ignore "
                    f"{key}={value!r}: remove it (default {default!r})"
                )


def _choices() -> dict[str, tuple]:
    """Every key with a fixed set of values, from the library's own constants."""
    # Imported here: these modules import torch; reading a YAML file must not.
    from .engines.classification import AMP_MODES
    from .engines.optim import OPTIMIZERS, SCHEDULERS
    from .losses import DIRECTIONS, MODES, POLICIES, TEACHERS
    from .models import BRANCH_STYLES
    from .models.dhm import EVAL_FEATURES, NECKS
    from .retrieval import METRICS

    return {
        "model.branch_style": BRANCH_STYLES,
        "data.sampler": ("random", "identity"),
        "loss.mode": MODES,
        "loss.direction": DIRECTIONS,
        "loss.kl_teachers": TEACHERS,
        "branch_sampling.policy": POLICIES,
        "optim.name": OPTIMIZERS,
        "scheduler.name": SCHEDULERS,
        "train.amp": AMP_MODES,
        "train.nonfinite": ("stop", "skip"),
        "test.metric": METRICS,
        "model.neck": NECKS,
        "test.feature": EVAL_FEATURES,
    }


# key -> (test, what the value must be)
_RANGES = {
    "optim.lr": (lambda v: v > 0, "> 0"),
    "optim.weight_decay": (lambda v: v >= 0, ">= 0"),
    "optim.momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "optim.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
    "loss.label_smooth": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "loss.temperature": (lambda v: v > 0, "> 0"),
    "loss.kl_weight": (lambda v: v >= 0, ">= 0"),
    "data.norm_std": (lambda v: len(v) == 3 and all(x > 0 for x in v), "three numbers > 0"),
    "data.norm_mean": (lambda v: len(v) == 3, "three numbers"),
    "loss.triplet_weight": (lambda v: v >= 0, ">= 0"),
    "loss.triplet_margin": (lambda v: v >= 0, ">= 0"),
    "scheduler.warmup_start": (lambda v: v is None or 0 < v <= 1, "null or in (0, 1]"),
}


def check_choices_and_ranges(cfg: Mapping) -> None:
    """One pass over the resolved config before anything loads: every choice key
    against its valid values, numeric ranges, the model name against the registry and
    the image size against the model's down-sampling. Errors name the dotted key."""
    for key, valid in _choices().items():
        value = _get(cfg, key)
        if value not in valid:
            raise ConfigError(f"'{key}' must be one of {list(valid)}, got {value!r}")
    for key, (ok, what) in _RANGES.items():
        value = _get(cfg, key)
        try:
            good = bool(ok(value))
        except TypeError:
            good = False
        if not good:
            raise ConfigError(f"'{key}' must be {what}, got {value!r}")
    p = cfg["branch_sampling"]["p"]
    probs = p.values() if isinstance(p, Mapping) else [p]
    if any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1 for v in probs
    ):
        raise ConfigError(
            f"'branch_sampling.p' must be in [0, 1] (or a mapping of those), got {p!r}"
        )
    from .models.registry import get_entry, list_models

    name = cfg["model"]["name"]
    if name not in list_models():
        raise ConfigError(f"'model.name' must be one of {list_models()}, got {name!r}")
    builder = get_entry(name).builder
    for key, default in (("neck", "none"), ("last_stride", 2)):
        value = cfg["model"][key]
        if value != default and not _accepts(builder, key):
            owners = "ResNets, MobileNetV2 and OSNet" if key == "neck" else "ResNets"
            raise ConfigError(
                f"'model.{key}' is {value!r}, but {name} has no {key} option ({owners} do)"
            )
    if cfg["model"]["last_stride"] not in (1, 2):
        raise ConfigError(
            f"'model.last_stride' must be 1 or 2, got {cfg['model']['last_stride']!r}"
        )
    if cfg["test"]["feature"] != "pre_bn" and cfg["model"]["neck"] != "bnneck":
        raise ConfigError(
            f"'test.feature' is {cfg['test']['feature']!r}, which needs model.neck=bnneck"
        )
    data = cfg["data"]
    if cfg["loss"]["triplet_weight"] > 0 and data["sampler"] != "identity":
        raise ConfigError(
            f"'loss.triplet_weight' is {cfg['loss']['triplet_weight']}, but a triplet needs "
            "batches of P identities x K images: set data.sampler=identity (and "
            "data.num_instances=K)"
        )
    k = data["num_instances"]
    if data["sampler"] == "identity" and data["batch_size"] % k:
        near = max(k, data["batch_size"] // k * k)
        raise ConfigError(
            f"'data.batch_size' {data['batch_size']} is not P identities x K={k} images "
            f"(data.num_instances): make it a multiple of {k}, e.g. {near}"
        )
    stride = getattr(_model_class(builder), "input_stride", 1)
    for key in ("data.height", "data.width"):
        if _get(cfg, key) < stride:
            raise ConfigError(
                f"'{key}' is {_get(cfg, key)}, but {name} down-samples its input by {stride}: "
                f"give data.height and data.width >= {stride}"
            )


def _accepts(builder, keyword: str) -> bool:
    """Whether a registry builder takes ``keyword`` (a bound partial argument counts)."""
    import inspect

    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _model_class(builder):
    """The class behind a registry builder (a class, or functools.partial of one)."""
    while hasattr(builder, "func"):
        builder = builder.func
    return builder


def config_changes(before: Mapping, after: Mapping, prefix: str = "") -> list[str]:
    """``'key: old -> new'`` for every dotted key whose value differs (``output_dir`` aside)."""
    lines = []
    for key in after:
        dotted = f"{prefix}{key}"
        old, new = before.get(key), after[key]
        if dotted == "output_dir":
            continue
        if isinstance(old, Mapping) and isinstance(new, Mapping) and dotted not in FREE_MAPPINGS:
            lines += config_changes(old, new, dotted + ".")
        elif old != new:
            lines.append(f"{dotted}: {old!r} -> {new!r}")
    return lines


def dump_config(cfg: Mapping) -> str:
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
