"""Rules between keys of a schema-valid config, checked once before anything loads.

Each rule that the library also enforces calls the library's own check
(``check_schedule``, ``check_identity_batch``), so config and constructors agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..utils.options import (
    CE_WEIGHT,
    check_identity_batch,
    check_run_ranks,
    check_schedule,
    implied_kl_schedule,
)
from .loading import ConfigError
from .schema import DEFAULTS, task_only_keys

TASK_NAMES = {"reid": "re-ID", "classification": "classification"}


def _get(cfg: Mapping, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def _fail(key: str, message: str, origin: Mapping[str, str]) -> None:
    """Raise the rule's message, prefixed by the layer that set ``key`` when known."""
    source = origin.get(key)
    raise ConfigError(f"{source}: {message}" if source else message)


def complete(cfg: dict, origin: Mapping[str, str]) -> None:
    """Fill keys whose null means "implied by other keys" (in place), checking them.

    ``loss.kl_schedule``: null reads as ``warmup`` when ``loss.kl_warmup_epochs > 0``
    (configs and checkpoints written before the key existed), else the default.
    """
    loss = cfg["loss"]
    try:
        loss["kl_schedule"] = implied_kl_schedule(
            loss["kl_schedule"],
            loss["kl_warmup_epochs"],
            names=("loss.kl_schedule", "loss.kl_warmup_epochs"),
        )
    except ValueError as err:
        key = "loss.kl_schedule" if "loss.kl_schedule" in origin else "loss.kl_warmup_epochs"
        _fail(key, str(err), origin)


def check_values(
    cfg: Mapping, training: bool, origin: Mapping[str, str], from_checkpoint: bool = False
) -> None:
    """The cross-key rules of a schema-valid config; a ConfigError names the key.

    Everything a run would otherwise find out only after its data has loaded is
    checked here: the model can be built with ``model.branches`` / ``model.kwargs``,
    ``loss.ce_weights`` names its branches, ``model.pretrained`` is a file.

    Args:
        training: the run trains, so ``train.max_epoch`` must be at least 1 (an
            evaluation-only run may leave it at 0) and the schedule must be usable.
        origin: dotted key -> the layer that set it (file, override, checkpoint).
        from_checkpoint: the weights come from a checkpoint, so ``model.pretrained``
            is never read (its file may be gone since the run trained).
    """
    least = 1 if training else 0
    epochs = cfg["train"]["max_epoch"]
    if epochs < least:
        why = " when training (--eval-only evaluates without it)" if training else ""
        _fail("train.max_epoch", f"'train.max_epoch' must be >= {least}{why}, got {epochs}", origin)
    _check_task_keys(cfg, origin)
    _check_model(cfg, origin)
    _check_timm(cfg, origin, from_checkpoint)
    _check_build(cfg, origin)
    if not from_checkpoint:
        _check_pretrained(cfg["model"]["pretrained"], origin)
        _check_timm_pretrained(cfg["model"], origin)
    _check_batches(cfg, origin)
    if cfg["task"] == "reid":
        try:
            check_run_ranks(cfg["test"]["ranks"])
        except ValueError as err:
            _fail("test.ranks", str(err), origin)
    if training:
        try:
            check_schedule(max_epoch=epochs, **cfg["scheduler"])
        except ValueError as err:
            _fail("scheduler.name", str(err), origin)


def _check_task_keys(cfg: Mapping, origin: Mapping[str, str]) -> None:
    """A key only the other task reads, set away from its default, would be ignored."""
    task = cfg["task"]
    for owner, keys in task_only_keys().items():
        if owner == task:
            continue
        for key in keys:
            value, default = _get(cfg, key), _get(DEFAULTS, key)
            if value != default:
                _fail(
                    key,
                    f"'{key}' is only read by {TASK_NAMES[owner]} runs; this "
                    f"{TASK_NAMES[task]} run ({cfg['data']['dataset']!r}) would ignore "
                    f"{key}={value!r}: remove it (default {default!r})",
                    origin,
                )


def _check_model(cfg: Mapping, origin: Mapping[str, str]) -> None:
    """The model name against the registry, its options, and the image size."""
    from ..models.dhm import check_input_size
    from ..models.registry import get_entry, list_models, models_with_option, prefix_of

    model = cfg["model"]
    name = model["name"]
    if name not in list_models() and prefix_of(name) is None:
        _fail("model.name", f"'model.name' must be one of {list_models()}, got {name!r}", origin)
    try:
        entry = get_entry(name)  # a prefix rule's model (timm/<name>) is made here
    except (ValueError, ImportError) as err:
        _fail("model.name", f"'model.name' {name!r}: {err}", origin)
    for key, default in (("neck", "none"), ("last_stride", 2)):
        if model[key] != default and key not in entry.options:
            owners = ", ".join(models_with_option(key))
            _fail(
                f"model.{key}",
                f"'model.{key}' is {model[key]!r}, but {name} has no {key} option "
                f"(models with it: {owners})",
                origin,
            )
    if cfg["test"]["feature"] != "pre_bn" and model["neck"] != "bnneck":
        _fail(
            "test.feature",
            f"'test.feature' is {cfg['test']['feature']!r}, which needs model.neck=bnneck",
            origin,
        )
    keys = ("data.height", "data.width")
    try:
        check_input_size(
            cfg["data"]["height"], cfg["data"]["width"], entry.input_stride, name, keys
        )
    except ValueError as err:
        _fail(next(k for k in keys if f"'{k}'" in str(err)), str(err), origin)


def _check_timm(cfg: Mapping, origin: Mapping[str, str], from_checkpoint: bool) -> None:
    """``model.forks`` (timm models only, in the model's range); no ``paper`` branch style
    set for a ``timm/<name>`` model (a checkpoint's config holds the default, not a choice)."""
    from ..models.backbones.timm_models import check_forks, is_timm_name

    model = cfg["model"]
    name = model["name"]
    if not is_timm_name(name):
        if model["forks"] is not None:
            _fail(
                "model.forks",
                f"'model.forks' is only read by timm/<name> models, not {name}",
                origin,
            )
        return
    chosen = "model.branch_style" in origin and not from_checkpoint
    if model["branch_style"] == "paper" and chosen:
        _fail(
            "model.branch_style",
            f"'model.branch_style' is 'paper', but {name} builds mirror branches only: "
            "set model.branch_style=mirror",
            origin,
        )
    if model["forks"] is not None:
        try:
            check_forks(model["forks"], name.split("/", 1)[1])
        except ValueError as err:
            _fail("model.forks", f"'model.forks' is {model['forks']!r}: {err}", origin)


def _check_build(cfg: Mapping, origin: Mapping[str, str]) -> None:
    """``model.branches`` / ``model.kwargs`` build the model; ``loss.ce_weights`` fit it.

    The model is built on the ``meta`` device (no memory, no weights), and only when one
    of these keys is set: the defaults always build.
    """
    model, ce_weights = cfg["model"], cfg["loss"]["ce_weights"]
    if model["branches"] is None and not model["kwargs"] and ce_weights is None:
        return
    try:
        branches = meta_model(cfg).branch_names
    except (ValueError, TypeError) as err:
        # Blame the key the builder complained about (branches, else the kwargs).
        about_branches = model["branches"] is not None and (
            "branch" in str(err) or not model["kwargs"]
        )
        key = "model.branches" if about_branches else "model.kwargs"
        _fail(
            key,
            f"'{key}' is {_get(cfg, key)!r}, which {model['name']} cannot be built with: "
            f"{str(err).splitlines()[0]}",
            origin,
        )
    if ce_weights is not None:
        _check_ce_weights(ce_weights, branches, origin)


def meta_model(cfg: Mapping):
    """The config's model on the ``meta`` device: no weights, no memory, only its
    structure (branch names, state-dict keys), to check keys before any data loads."""
    import torch

    from ..models import build_model
    from ..runs.build import model_kwargs

    with torch.device("meta"):
        return build_model(cfg["model"]["name"], 1, pretrained=False, **model_kwargs(cfg))


def _check_ce_weights(weights: Any, branches: tuple[str, ...], origin) -> None:
    """A mapping from the model's branches to weights in :data:`CE_WEIGHT`."""
    key = "loss.ce_weights"
    if not isinstance(weights, Mapping):
        _fail(key, f"'{key}' must be a mapping branch -> weight, got {weights!r}", origin)
    for branch, weight in weights.items():
        if branch not in branches:
            _fail(
                key,
                f"'{key}' names branch {branch!r}, which this model does not have; its "
                f"branches are {list(branches)}",
                origin,
            )
        try:
            CE_WEIGHT.check(weight, f"'{key}.{branch}'")
        except ValueError as err:
            _fail(key, str(err), origin)


def _check_pretrained(value: Any, origin: Mapping[str, str]) -> None:
    """``model.pretrained``: true, false, null, or the path of a weight file that exists."""
    key = "model.pretrained"
    if value is None or isinstance(value, bool):
        return
    if not isinstance(value, str):
        _fail(key, f"'{key}' must be true, false or a weight file's path, got {value!r}", origin)
    path = Path(value)
    if path.is_file():
        return
    what = "is a directory, not a weight file" if path.is_dir() else "file not found"
    _fail(
        key,
        f"'{key}' {value!r}: {what}; give a torchvision-format weight file, or "
        "model.pretrained=false to train from scratch",
        origin,
    )


def _check_timm_pretrained(model: Mapping, origin: Mapping[str, str]) -> None:
    """A timm model's weights come only from a file: nothing is downloaded or looked up."""
    from ..models.backbones.timm_models import is_timm_name

    if is_timm_name(model["name"]) and model["pretrained"] is True:
        _fail(
            "model.pretrained",
            f"'model.pretrained' is true, but {model['name']} loads weights only from a "
            "local file (never downloaded): set model.pretrained=<path of a timm/torchvision "
            "state dict> or model.pretrained=false",
            origin,
        )


def _check_batches(cfg: Mapping, origin: Mapping[str, str]) -> None:
    """A triplet needs P x K batches; P x K batches need a batch size divisible by K."""
    data, loss = cfg["data"], cfg["loss"]
    if loss["triplet_weight"] > 0 and data["sampler"] != "identity":
        _fail(
            "loss.triplet_weight",
            f"'loss.triplet_weight' is {loss['triplet_weight']}, but a triplet needs "
            "batches of P identities x K images: set data.sampler=identity (and "
            "data.num_instances=K)",
            origin,
        )
    if data["sampler"] == "identity":
        try:
            check_identity_batch(data["batch_size"], data["num_instances"])
        except ValueError as err:
            _fail("data.batch_size", str(err), origin)
