"""Mixed precision for both engines: the modes, their device check, the autocast context."""

from __future__ import annotations

import contextlib

import torch

# auto: bf16 on a CUDA device that supports it (Ampere and later), none elsewhere.
AMP_MODES = ("auto", "none", "bf16", "fp16")


def resolve_amp(amp: str, device: torch.device) -> str:
    """``'auto'`` as the mode it means on ``device``; other modes unchanged."""
    if amp != "auto":
        return amp
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"


def check_amp(amp: str, device: torch.device) -> str:
    """Validate a mixed-precision mode for ``device``; returns it (``'auto'`` resolved)."""
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; valid modes are {list(AMP_MODES)}")
    amp = resolve_amp(amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(
            f"amp='fp16' needs a CUDA device (float16 autocast with a GradScaler); the model is "
            f"on {device.type}: use amp='bf16' there, or amp='none'"
        )
    return amp


def autocast(amp: str, device: torch.device):
    """The autocast context for ``amp`` (a no-op context for ``'none'``)."""
    amp = resolve_amp(amp, device)
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


__all__ = ["AMP_MODES", "autocast", "backward_step", "check_amp", "resolve_amp"]
