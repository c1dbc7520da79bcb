"""A resolved config's sections -> the library's objects (explicit arguments from here on)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from .errors import UsageError, error_line


def model_kwargs(cfg: Mapping) -> dict:
    """``model`` (and ``test.feature``) -> the registry builder's keyword arguments."""
    m = cfg["model"]
    kwargs = dict(m["kwargs"])
    if m["branches"] is not None:
        kwargs["branches"] = m["branches"]
    # Only non-default options are passed: models without them (CIFAR DenseNet, WRN)
    # keep building from configs that leave them alone.
    if m["branch_style"] != "paper":
        kwargs["branch_style"] = m["branch_style"]
    if m["neck"] != "none":
        kwargs["neck"] = m["neck"]
    if m["last_stride"] != 2:
        kwargs["last_stride"] = m["last_stride"]
    if cfg["test"]["feature"] != "pre_bn":
        kwargs["eval_feature"] = cfg["test"]["feature"]
    if m.get("forks") is not None:
        kwargs["forks"] = m["forks"]
    from ..models.backbones.timm_models import is_timm_name

    if is_timm_name(m["name"]):
        # ViT / Swin build their position embeddings and windows for the input size.
        kwargs.setdefault("img_size", (cfg["data"]["height"], cfg["data"]["width"]))
    return kwargs


def build_model_for(cfg: Mapping, num_classes: int):
    """``model`` section -> a registry model, with a hint when ImageNet weights are missing."""
    from ..models import build_model

    m = cfg["model"]
    try:
        return build_model(m["name"], num_classes, pretrained=m["pretrained"], **model_kwargs(cfg))
    except FileNotFoundError as err:
        if m["pretrained"] is not True:
            raise
        raise UsageError(
            f"{err}. The recipe starts from ImageNet weights; to train from scratch "
            "instead, pass --no-pretrained (or model.pretrained=false)."
        ) from None
    except TypeError as err:
        raise UsageError(f"model {m['name']!r}: {err}") from None


def is_foreign_checkpoint(ckpt: Mapping) -> bool:
    """A checkpoint written by another tool (torchreid's, a bare state dict): weights only."""
    return ckpt.get("model_name") is None


def model_for_run(cfg: Mapping, ckpt: Mapping | None, num_classes: int, what: str):
    """The checkpoint's model when resuming (its class count must fit), else a new one.

    A reid_dhm checkpoint names its model; another tool's (torchreid's
    ``save_checkpoint``, a bare state dict) does not, so the config's ``model``
    section (``--model``) says which model its weights belong to.

    Returns:
        (model, registry name).
    """
    from ..models.checkpoint import DeployedWeightsError, model_from_checkpoint

    if ckpt is None:
        return build_model_for(cfg, num_classes), cfg["model"]["name"]
    name, where = cfg["model"]["name"], ckpt.get("path", "the checkpoint")
    if is_foreign_checkpoint(ckpt):
        try:
            model = model_from_checkpoint(
                ckpt, model_name=name, num_classes=num_classes, **model_kwargs(cfg)
            )
        except DeployedWeightsError:
            raise  # its own message says what to pass instead
        except (ValueError, TypeError) as err:
            raise UsageError(
                f"{where} is not a reid_dhm checkpoint and does not say which model it holds; "
                f"its weights do not fit model.name={name!r} ({error_line(err)}): pass "
                "--model NAME (and the model.* keys it was built with)"
            ) from None
        return model, name
    if ckpt.get("config") is not None and name != ckpt["model_name"]:
        # The config came from the checkpoint, so only the command line changed the name.
        raise UsageError(
            f"{where} holds a {ckpt['model_name']!r} model, but model.name is {name!r}: "
            "a resumed or evaluated run keeps the checkpoint's model (drop --model)"
        )
    model = model_from_checkpoint(ckpt)
    if model.num_classes != num_classes:
        raise UsageError(
            f"{where} was trained on {model.num_classes} {what} but "
            f"{cfg['data']['dataset']} has {num_classes}"
        )
    return model, ckpt["model_name"]


def build_criterion(cfg: Mapping):
    """``loss`` section -> ``DHMLoss``."""
    from ..losses import DHMLoss

    return DHMLoss(**cfg["loss"])


def build_branch_sampler(cfg: Mapping, branch_names):
    """``branch_sampling`` section -> ``BranchSampler`` over the model's branches."""
    from ..losses import BranchSampler

    bs = cfg["branch_sampling"]
    return BranchSampler(branch_names, bs["policy"], bs["p"], bs["seed"])


def build_optimization(cfg: Mapping, model, start_epoch: int, foreign: bool):
    """``optim`` and ``scheduler`` sections -> (optimizer, scheduler).

    A foreign checkpoint's schedule state does not fit ours: its schedule starts at
    ``start_epoch`` instead.
    """
    from ..engines.optim import build_optimizer, build_scheduler

    optimizer = build_optimizer(model, **cfg["optim"])
    scheduler = build_scheduler(
        optimizer,
        max_epoch=cfg["train"]["max_epoch"],
        start_epoch=start_epoch if foreign else 0,
        **cfg["scheduler"],
    )
    return optimizer, scheduler


def resumable_optimizer_state(cfg: Mapping, ckpt: Mapping, say: Callable = print):
    """The checkpoint's optimizer state, unless the run now uses another optimizer.

    An SGD run cannot take Adam's moments (and would fail with a bare KeyError); the
    optimizer then starts afresh, which is said.
    """
    state = ckpt.get("optimizer")
    old = ((ckpt.get("config") or {}).get("optim") or {}).get("name")
    new = cfg["optim"]["name"]
    if state and old is not None and old != new:
        say(f"=> optim.name changed from {old!r} to {new!r}: the optimizer state starts afresh")
        return None
    return state


def needs_unused_parameter_search(cfg: Mapping, criterion, branch_names, start_epoch: int = 0):
    """Whether DDP must look for parameters without gradients in an iteration.

    Frozen stages and branches inactive in an epoch leave parameters unused (baseline
    mode computes ``main`` alone, so its aux branches are never in the graph); the
    search costs a graph traversal per step, so it is only switched on when needed.
    """
    has_aux = len(branch_names) > 1
    return (
        cfg["train"]["fixbase_epoch"] > start_epoch
        or (has_aux and cfg["branch_sampling"]["policy"] != "fixed")
        or (has_aux and criterion.mode == "baseline")
    )


def set_deterministic() -> None:
    """Deterministic kernels (train.deterministic): reruns and resumes repeat bit for bit."""
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it (CUDA)
    torch.use_deterministic_algorithms(True)


def is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


__all__ = [
    "build_branch_sampler",
    "build_criterion",
    "build_model_for",
    "build_optimization",
    "is_foreign_checkpoint",
    "is_main_process",
    "model_for_run",
    "model_kwargs",
    "needs_unused_parameter_search",
    "resumable_optimizer_state",
    "set_deterministic",
]
