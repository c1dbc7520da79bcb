"""The one flat model registry.

Every model is listed explicitly in ``_builtin_entries`` (no registration by import
side effects); ``register_model`` adds user models and refuses duplicate names.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from .cifar_resnet import DHMCifarResNet
from .densenet import DHMCifarDenseNet
from .dhm import DHMNet, check_num_classes
from .mobilenetv2 import DHMMobileNetV2, convert_torchvision_mobilenetv2
from .osnet import DHMOSNet
from .resnet import DHMResNet
from .weights import hub_weight_path, load_backbone_weights
from .wrn import DHMWideResNet


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model.

    Attributes:
        builder: ``builder(num_classes, **kwargs) -> DHMNet``.
        description: one line for ``list_models`` / docs.
        hub_files: torchvision ImageNet weight file names looked up for ``pretrained=True``.
        converter: maps a torchvision-layout state dict onto the model (if layouts differ).
    """

    builder: Callable[..., DHMNet]
    description: str
    hub_files: tuple[str, ...] = ()
    converter: Callable | None = None


_RESNET_HUB = {
    18: ("resnet18-f37072fd.pth",),
    34: ("resnet34-b627a593.pth",),
    50: ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-19c8e357.pth"),
    101: ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth", "resnet101-5d3b4d8f.pth"),
    152: ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth", "resnet152-b121ed2d.pth"),
}
_MOBILENET_HUB = ("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth")


def _builtin_entries() -> list[tuple[str, ModelEntry]]:
    entries = []
    for depth, files in _RESNET_HUB.items():
        entries.append(
            (
                f"dhm_resnet{depth}",
                ModelEntry(
                    partial(DHMResNet, depth),
                    f"ResNet-{depth} with DHM branches aux1 (from layer3) and aux2 (from layer2)",
                    files,
                ),
            )
        )
        entries.append(
            (
                f"resnet{depth}",
                ModelEntry(
                    partial(DHMResNet, depth, branches=()),
                    f"plain ResNet-{depth} (torchreid/torchvision layout)",
                    files,
                ),
            )
        )
    entries.append(
        (
            "dhm_mobilenetv2",
            ModelEntry(
                DHMMobileNetV2,
                "MobileNetV2 (torchreid layout) with DHM branches aux1 (conv6) and aux2 (conv4)",
                _MOBILENET_HUB,
                convert_torchvision_mobilenetv2,
            ),
        )
    )
    entries.append(
        (
            "mobilenetv2",
            ModelEntry(
                partial(DHMMobileNetV2, branches=()),
                "plain MobileNetV2 (torchreid mobilenetv2_x1_0 layout)",
                _MOBILENET_HUB,
                convert_torchvision_mobilenetv2,
            ),
        )
    )
    for width, tag in ((1.0, "x1_0"), (0.25, "x0_25")):
        # torchreid's ImageNet OSNet files, if the user has them in the torch hub cache.
        hub = (f"osnet_{tag}_imagenet.pth",)
        entries.append(
            (
                f"dhm_osnet_{tag}",
                ModelEntry(
                    partial(DHMOSNet, width=width),
                    f"OSNet-{tag} (torchreid layout) with DHM branches aux1 (conv3), aux2 (conv2)",
                    hub,
                ),
            )
        )
        entries.append(
            (
                f"osnet_{tag}",
                ModelEntry(
                    partial(DHMOSNet, width=width, branches=()),
                    f"plain OSNet-{tag} (torchreid osnet_{tag} layout)",
                    hub,
                ),
            )
        )
    # CIFAR models (32x32 inputs, trained from scratch: no hub weights).
    cifar = [
        ("cifar_resnet20", partial(DHMCifarResNet, 20), "CIFAR ResNet-20 (option-A shortcuts)"),
        ("cifar_resnet32", partial(DHMCifarResNet, 32), "CIFAR ResNet-32 (option-A shortcuts)"),
        ("cifar_resnet110", partial(DHMCifarResNet, 110), "CIFAR ResNet-110 (option-A shortcuts)"),
        (
            "cifar_resnet1202",
            partial(DHMCifarResNet, 1202),
            "CIFAR ResNet-1202 (option-A shortcuts)",
        ),
        (
            "cifar_densenet40_12",
            partial(DHMCifarDenseNet, 40, 12),
            "CIFAR DenseNet (d=40, k=12)",
        ),
        (
            "cifar_densenet_bc100_12",
            partial(DHMCifarDenseNet, 100, 12, bottleneck=True, compression=0.5),
            "CIFAR DenseNet-BC (d=100, k=12, compression 0.5)",
        ),
        ("wrn16_8", partial(DHMWideResNet, 16, 8), "Wide ResNet WRN-16-8 (pre-activation)"),
        ("wrn28_10", partial(DHMWideResNet, 28, 10), "Wide ResNet WRN-28-10 (pre-activation)"),
    ]
    for name, builder, description in cifar:
        entries.append(
            (
                f"dhm_{name}",
                ModelEntry(builder, f"{description} with DHM branches aux1 and aux2"),
            )
        )
        entries.append((name, ModelEntry(partial(builder, branches=()), f"plain {description}")))
    return entries


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, entry: ModelEntry | Callable[..., DHMNet]) -> None:
    """Add a model under ``name``; a name that is taken raises ``ValueError``."""
    if not isinstance(entry, ModelEntry):
        entry = ModelEntry(entry, getattr(entry, "__doc__", "") or name)
    if name in _REGISTRY:
        raise ValueError(f"model name {name!r} is already registered")
    _REGISTRY[name] = entry


for _name, _entry in _builtin_entries():
    register_model(_name, _entry)


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid models are {list_models()}")
    return _REGISTRY[name]


def _check_kwargs(name: str, entry: ModelEntry, kwargs: dict) -> None:
    """Unknown keywords name the model and list what its builder accepts.

    Without this, a typo such as ``last_strde=1`` surfaces as the constructor's
    ``TypeError``, which names neither the registry model nor the valid options.
    """
    try:
        params = inspect.signature(entry.builder).parameters
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check against
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [
        n
        for n, p in params.items()
        if n != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    unknown = [k for k in kwargs if k not in accepted]
    if unknown:
        raise ValueError(
            f"model {name!r} takes no keyword {unknown[0]!r}; accepted keywords are "
            f"{accepted} (besides num_classes and pretrained)"
        )


def _check_pretrained(pretrained) -> None:
    if pretrained is None or isinstance(pretrained, (bool, str, os.PathLike, Mapping)):
        return
    raise ValueError(
        f"pretrained must be True, False, a path to a weight file or a state dict, "
        f"got {type(pretrained).__name__} {pretrained!r}"
    )


def build_model(
    name: str,
    num_classes: int,
    pretrained: bool | str | os.PathLike | Mapping[str, Tensor] | None = False,
    **kwargs,
) -> DHMNet:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models`, e.g. ``'dhm_resnet50'``.
        num_classes: classes (identities) every branch classifies, an integer >= 1
            (numpy integers are accepted; bools and floats are not).
        pretrained: ``False`` or ``None`` for none; a path to torchvision-format
            ImageNet weights; a state dict; or ``True`` to take torchvision's file from
            the local torch hub cache (never downloaded). Weights go into the
            main-branch backbone only.
        **kwargs: architecture options, e.g. ``branches=('aux1',)`` or ``last_stride=1``.

    Returns:
        A :class:`DHMNet`: training mode returns ``BranchOutputs`` (``.logits`` and
        ``.features`` by branch), eval mode the (B, D) main embedding.

    Raises:
        ValueError: unknown model, bad ``num_classes``, ``pretrained`` or keyword, or
            weights that do not fit; FileNotFoundError: a missing weight file.
    """
    entry = get_entry(name)
    _check_pretrained(pretrained)
    _check_kwargs(name, entry, kwargs)
    model = entry.builder(num_classes=check_num_classes(num_classes), **kwargs)
    if pretrained is True:
        pretrained = hub_weight_path(entry.hub_files)
    if pretrained is not False and pretrained is not None:
        load_backbone_weights(model, pretrained, entry.converter)
    return model
