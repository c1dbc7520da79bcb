"""How a model runs fast on its device: channels_last convolutions, ``torch.compile``.

At the recipes' batch sizes (32-64) a ResNet-50 step on a GPU is launch-bound:
``train.compile`` (``torch.compile``; ``reduce-overhead`` replays CUDA graphs) removes
Python and launch overhead; channels_last lets cuDNN pick its NHWC kernels, which
tensor cores (bf16) prefer. Both change how the model runs, never what it computes:
parameter names, ``state_dict`` and checkpoints stay as they are (``nn.Module.compile``
compiles in place; channels_last only changes strides).
"""

from __future__ import annotations

import torch
from torch import nn

# train.compile: none | default | reduce-overhead (torch.compile's modes; the last uses
# CUDA graphs, so it only pays off on CUDA).
COMPILE_MODES = ("none", "default", "reduce-overhead")


def check_compile(mode: str) -> str:
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid modes are {list(COMPILE_MODES)}")
    return mode


def is_convolutional(model: nn.Module) -> bool:
    """More than one Conv2d: a CNN (a ViT's single patch-embedding conv does not count)."""
    return sum(isinstance(m, nn.Conv2d) for m in model.modules()) > 1


def prepare_model(model: nn.Module, device: torch.device, compile_mode: str = "none") -> nn.Module:
    """``model`` (already on ``device``) made ready to train there, in place; returns it.

    * CUDA and a convolutional model: channels_last parameters (inputs follow: a conv
      with channels_last weights converts its NCHW input itself);
    * ``compile_mode`` other than ``'none'``: ``model.compile(mode=...)``, in place, so
      the module, its parameter names and checkpoints are unchanged (the first
      iterations, and each new set of active branches, pay the compilation).
    """
    check_compile(compile_mode)
    if torch.device(device).type == "cuda" and is_convolutional(model):
        model.to(memory_format=torch.channels_last)
    if compile_mode != "none":
        model.compile(mode=None if compile_mode == "default" else compile_mode)
    return model


__all__ = ["COMPILE_MODES", "check_compile", "is_convolutional", "prepare_model"]
