"""Loading weight files: ImageNet backbones into a main branch, robustly.

Handles what makes checkpoints stop loading elsewhere: ``torch.load`` with
``weights_only=True`` (the torch >= 2.6 default; files are read by
:func:`reid_dhm.utils.torch_io.read_torch_file`), wrapped dicts (``state_dict``,
``model``), ``module.`` / ``_orig_mod.`` prefixes from (Distributed)DataParallel and
``torch.compile``, and missing, damaged or mismatched files, each with a one-line
error naming the file.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import Tensor

from ..utils.torch_io import read_torch_file, strip_wrapper_prefixes
from .dhm import DHMNet

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")


def _tensor_state(obj, name: str) -> OrderedDict[str, Tensor]:
    """The tensor state dict inside ``obj``: unwrapped, without wrapper key prefixes."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{name} holds no tensor state dict")
    return strip_wrapper_prefixes(obj)


def read_state_dict(path: str | os.PathLike) -> OrderedDict[str, Tensor]:
    """Read a tensor state dict from ``path`` without executing pickled code.

    Accepts a bare state dict or a checkpoint dict that wraps one under a key of
    ``WRAPPER_KEYS`` (torchreid's checkpoints, with their numpy metrics, included);
    strips ``module.`` (DataParallel) and ``_orig_mod.`` (``torch.compile``) prefixes.

    Raises:
        FileNotFoundError: no such file.
        ValueError: one line naming the file when it is damaged, unsafe or holds no
            state dict.
    """
    return _tensor_state(read_torch_file(path, what="weight file"), str(path))


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

    Strict on the backbone: every backbone tensor must be present with the right
    shape, and the source may hold no backbone tensor the model lacks (weights of a
    deeper ResNet are refused, not partly loaded); otherwise a ``ValueError`` names
    the first offending key. The source's own classifier (``fc.*``/``classifier.*``)
    and anything outside the backbone are ignored: class counts differ.

    Args:
        model: the model to fill; aux branches and classifiers keep their init.
        source: a path to a weight file, or a state dict (wrapped or ``module.``-prefixed
            dicts are accepted exactly as in a file).
        converter: optional ``(source, target) -> state dict`` mapping for sources
            in another layout (see ``convert_torchvision_mobilenetv2``).

    Returns:
        The loaded keys.
    """
    if isinstance(source, (str, os.PathLike)):
        name, state = str(source), read_state_dict(source)
    else:
        name = "the given state dict"
        state = _tensor_state(source, name)
    backbone = model.pretrained_module_names()
    # BN's num_batches_tracked is bookkeeping, absent from many published files.
    target = OrderedDict(
        (k, v)
        for k, v in model.main_state_dict().items()
        if k.split(".")[0] in backbone and not k.endswith("num_batches_tracked")
    )
    if converter is not None and not all(k in state for k in target):
        state = converter(state, target)
    state = model.adapt_pretrained(state)
    missing = [k for k in target if k not in state]
    if missing:
        raise ValueError(
            f"{name} does not fit {type(model).__name__}: missing {missing[0]!r} "
            f"({len(missing)} of {len(target)} backbone tensors missing)"
        )
    # Tensors of backbone modules the model lacks mean another architecture, e.g. a
    # ResNet-34 file for a ResNet-18, whose first blocks would otherwise load silently.
    unexpected = [
        k
        for k in state
        if k.split(".")[0] in backbone and k not in target and not k.endswith("num_batches_tracked")
    ]
    if unexpected:
        raise ValueError(
            f"{name} does not fit {type(model).__name__}: unexpected {unexpected[0]!r} "
            f"({len(unexpected)} backbone tensors the model does not have; weights of a "
            "deeper or different network?)"
        )
    for k, v in target.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ValueError(
                f"{name} does not fit {type(model).__name__}: {k!r} has shape "
                f"{tuple(state[k].shape)}, the model expects {tuple(v.shape)}"
            )
    model.load_state_dict({k: state[k] for k in target}, strict=False)
    return list(target)
