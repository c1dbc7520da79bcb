"""The one flat model registry.

Built-in models are declared beside their backbone: every module of
:mod:`reid_dhm.models.backbones` holds a ``MODELS`` table of ``(name, ModelEntry)``
pairs, and the registry walks that package on first use, so a new backbone is one file
there and nothing else. ``register_model`` adds user models and refuses duplicate names.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from .dhm import DHMNet, check_num_classes
from .weights import hub_weight_path, load_backbone_weights

# The optional architecture keywords the config layer maps onto a model (model.neck,
# model.last_stride, model.branch_style, test.feature); an entry states which it takes.
OPTIONS = ("neck", "last_stride", "branch_style", "eval_feature")


@dataclass(frozen=True)
class ModelEntry:
    """How to build one registered model, and what it offers.

    Attributes:
        builder: ``builder(num_classes, **kwargs) -> DHMNet``.
        description: one line for ``list_models`` / docs.
        hub_files: torchvision ImageNet weight file names looked up for ``pretrained=True``.
        converter: maps a torchvision-layout state dict onto the model (if layouts differ).
        options: which of :data:`OPTIONS` the builder accepts; left out (None), they are
            read off the builder's signature (how a user's ``register_model`` callable
            gets them). Always a ``frozenset`` once the entry exists.
        input_stride: total down-sampling of the main path (inputs must be at least this
            big); left out, the builder class's ``input_stride`` (1 if it has none).
    """

    builder: Callable[..., DHMNet]
    description: str
    hub_files: tuple[str, ...] = ()
    converter: Callable | None = None
    options: frozenset[str] | None = None
    input_stride: int | None = None

    def __post_init__(self) -> None:
        # frozen: fill the derived fields through object.__setattr__, once, here.
        options = _signature_options(self.builder) if self.options is None else self.options
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise ValueError(f"unknown model option {unknown[0]!r}; options are {list(OPTIONS)}")
        object.__setattr__(self, "options", frozenset(options))
        if self.input_stride is None:
            object.__setattr__(self, "input_stride", _builder_class_stride(self.builder))


def _signature_options(builder: Callable) -> frozenset[str]:
    """The :data:`OPTIONS` that ``builder`` takes as keywords (all, if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(builder).parameters
    except (TypeError, ValueError):  # a builtin or C callable: assume it takes them all
        return frozenset(OPTIONS)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return frozenset(OPTIONS)
    return frozenset(k for k in OPTIONS if k in params)


def _builder_class_stride(builder: Callable) -> int:
    while isinstance(builder, partial):  # partial(DHMResNet, 50) -> DHMResNet
        builder = builder.func
    return int(getattr(builder, "input_stride", 1))


def model_pair(
    name: str, builder: Callable[..., DHMNet], dhm: str, plain: str, **fields
) -> tuple[tuple[str, ModelEntry], tuple[str, ModelEntry]]:
    """The two entries most backbones offer: ``dhm_<name>`` and the plain ``<name>``.

    Args:
        name: the plain model's name, e.g. ``'resnet50'``.
        builder: builds the DHM model; the plain one is ``builder`` with ``branches=()``.
        dhm, plain: the two descriptions.
        **fields: the other :class:`ModelEntry` fields, shared by both.
    """
    return (
        (f"dhm_{name}", ModelEntry(builder, dhm, **fields)),
        (name, ModelEntry(partial(builder, branches=()), plain, **fields)),
    )


_REGISTRY: dict[str, ModelEntry] = {}
# Name prefixes resolved by rule, not listed: a backbone module's ``PREFIXES`` table of
# ``(prefix, factory)`` pairs, ``factory(rest of the name) -> ModelEntry`` (``timm/<name>``
# builds any timm model); entries made this way are cached here, apart from the listing.
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}
_BY_PREFIX: dict[str, ModelEntry] = {}
_DISCOVERED = False


def _builtin_entries() -> Iterator[tuple[str, ModelEntry]]:
    """Every ``MODELS`` pair of the modules in :mod:`reid_dhm.models.backbones`."""
    from . import backbones

    for info in sorted(pkgutil.iter_modules(backbones.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{backbones.__name__}.{info.name}")
        _PREFIXES.update(getattr(module, "PREFIXES", ()))
        yield from getattr(module, "MODELS", ())


def _registry() -> dict[str, ModelEntry]:
    """The registry, with the built-in entries found on first use.

    Lazy because the backbone modules import this one (for :class:`ModelEntry`); it also
    runs before any ``register_model``, so a user model can never take a built-in name.
    """
    global _DISCOVERED
    if not _DISCOVERED:
        found = list(_builtin_entries())  # all or nothing: a failed import adds none
        _DISCOVERED = True
        for name, entry in found:
            register_model(name, entry)
    return _REGISTRY


def register_model(name: str, entry: ModelEntry | Callable[..., DHMNet]) -> None:
    """Add a model under ``name``; a name that is taken raises ``ValueError``."""
    registry = _registry()
    if not isinstance(entry, ModelEntry):
        entry = ModelEntry(entry, getattr(entry, "__doc__", "") or name)
    if name in registry:
        raise ValueError(f"model name {name!r} is already registered")
    registry[name] = entry


def list_models() -> list[str]:
    """Every registered model name, sorted."""
    return sorted(_registry())


def get_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; ``ValueError`` listing the valid names if unknown."""
    registry = _registry()
    if name in registry:
        return registry[name]
    prefix = prefix_of(name)
    if prefix is None:
        raise ValueError(
            f"unknown model {name!r}; valid models are {list_models()}"
            f" (or {', '.join(p + '<name>' for p in _PREFIXES)})"
        )
    if name not in _BY_PREFIX:
        _BY_PREFIX[name] = _PREFIXES[prefix](name[len(prefix) :])
    return _BY_PREFIX[name]


def prefix_of(name: str) -> str | None:
    """The registered name prefix ``name`` starts with (e.g. ``'timm/'``), else None."""
    _registry()
    return next((p for p in _PREFIXES if isinstance(name, str) and name.startswith(p)), None)


def models_with_option(option: str) -> list[str]:
    """The registered models whose builder accepts ``option`` (one of :data:`OPTIONS`), sorted."""
    if option not in OPTIONS:
        raise ValueError(f"unknown model option {option!r}; options are {list(OPTIONS)}")
    return sorted(n for n, e in _registry().items() if option in e.options)


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
