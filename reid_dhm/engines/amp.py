"""Mixed precision for both engines: the modes, their device check, the autocast context."""

from __future__ import annotations

import contextlib

import torch

AMP_MODES = ("none", "bf16", "fp16")


def check_amp(amp: str, device: torch.device) -> str:
    """Validate a mixed-precision mode for ``device``; returns it."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; valid modes are {list(AMP_MODES)}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"amp='fp16' needs a CUDA device (float16 autocast with a GradScaler); the model is "
            f"on {device.type}: use amp='bf16' there, or amp='none'"
        )
    return amp


def autocast(amp: str, device: torch.device):
    """The autocast context for ``amp`` (a no-op context for ``'none'``)."""
    if amp == "none":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def backward_step(loss, optimizer: torch.optim.Optimizer, scaler=None) -> None:
    """``loss.backward()`` and one optimizer step, through the fp16 GradScaler if any."""
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


__all__ = ["AMP_MODES", "autocast", "backward_step", "check_amp"]
