"""Loading weight files: ImageNet backbones into a main branch, robustly.

Handles what makes checkpoints stop loading elsewhere: ``torch.load`` with
``weights_only=True`` (the torch >= 2.6 default), wrapped dicts (``state_dict``,
``model``), ``module.`` prefixes from (Distributed)DataParallel, and missing or
damaged files, each with a one-line error naming the file.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from .dhm import DHMNet

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def read_state_dict(path: str | Path) -> OrderedDict[str, Tensor]:
    """Read a tensor state dict from ``path`` without executing pickled code.

    Accepts a bare state dict or a checkpoint dict that wraps one under a key of
    ``WRAPPER_KEYS``; strips ``module.`` prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"cannot read weight file {path}: {first}") from None
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no tensor state dict")
    return strip_prefix(obj, "module.")


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> OrderedDict[str, Tensor]:
    """Remove ``prefix`` from every key that has it (DataParallel / DDP checkpoints)."""
    n = len(prefix)
    return OrderedDict((k[n:] if n and k.startswith(prefix) else k, v) for k, v in state.items())


def hub_weight_path(filenames: tuple[str, ...]) -> Path:
    """The first of ``filenames`` present in torch hub's local checkpoint cache."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in filenames:
        if (hub / name).is_file():
            return hub / name
    wanted = ", ".join(str(hub / n) for n in filenames) or "(no known file for this model)"
    raise FileNotFoundError(
        f"pretrained=True needs torchvision ImageNet weights in the local torch hub cache; "
        f"none found (looked for {wanted}); nothing is downloaded: pass pretrained=<path> "
        f"or pretrained=False"
    )


def load_backbone_weights(
    model: DHMNet,
    source: str | Path | Mapping[str, Tensor],
    converter: Callable[[Mapping[str, Tensor], Mapping[str, Tensor]], Mapping[str, Tensor]]
    | None = None,
) -> list[str]:
    """Load ImageNet weights into the main-branch backbone of ``model`` (not its classifier).

    Every backbone tensor must be present with the right shape (strict on the
    backbone), otherwise a ``ValueError`` names the first offending key. The source's
    own classifier (``fc.*``/``classifier.*``) is ignored: class counts differ.

    Args:
        model: the model to fill; aux branches and classifiers keep their init.
        source: a path to a weight file or a state dict.
        converter: optional ``(source, target) -> state dict`` mapping for sources
            in another layout (see ``convert_torchvision_mobilenetv2``).

    Returns:
        The loaded keys.
    """
    name = str(source) if isinstance(source, (str, Path)) else "the given state dict"
    state = read_state_dict(source) if isinstance(source, (str, Path)) else strip_prefix(source, "")
    # BN's num_batches_tracked is bookkeeping, absent from many published files.
    target = OrderedDict(
        (k, v)
        for k, v in model.main_state_dict().items()
        if k.split(".")[0] in model.pretrained_module_names()
        and not k.endswith("num_batches_tracked")
    )
    if converter is not None and not all(k in state for k in target):
        state = converter(state, target)
    missing = [k for k in target if k not in state]
    if missing:
        raise ValueError(
            f"{name} does not fit {type(model).__name__}: missing {missing[0]!r} "
            f"({len(missing)} of {len(target)} backbone tensors missing)"
        )
    for k, v in target.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{name} does not fit {type(model).__name__}: {k!r} has shape "
                f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
            )
    model.load_state_dict({k: state[k] for k in target}, strict=False)
    return list(target)
