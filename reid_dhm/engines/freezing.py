"""Staged freezing: train only the new layers while the pretrained backbone stays fixed."""

from __future__ import annotations

from torch import nn

from ..models import DHMNet
from ..utils.checkpoint import unwrap


def set_backbone_frozen(model: nn.Module, frozen: bool) -> list[str]:
    """Freeze (or release) the pretrained main-path stages of a DHM model.

    Frozen stages get ``requires_grad=False`` and are put in eval mode, so their
    BatchNorm running statistics do not move either. New layers (every classifier
    and every aux branch, ``model.new_module_names()``) always train. Works through
    DataParallel / DDP wrappers. Call after ``model.train()``.

    Returns:
        The names of the stages now frozen (empty when released).
    """
    bare = unwrap(model)
    if not isinstance(bare, DHMNet):
        raise TypeError(f"expected a reid_dhm model, got {type(bare).__name__}")
    names = bare.pretrained_module_names()
    for name in names:
        module = getattr(bare, name)
        module.train(not frozen and bare.training)
        for p in module.parameters():
            p.requires_grad_(not frozen)
    return list(names) if frozen else []
