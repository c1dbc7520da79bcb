"""Training and evaluation runs as library calls.

``train(cfg, ...)`` does what ``reid-dhm train`` does with a resolved config (data,
model, loss, optimizer, schedule, resume, run folder, stop signals, final evaluation,
``deployed.pth``, ``results.json``, plots) and returns a :class:`RunResult`;
``evaluate_checkpoint`` is ``reid-dhm test``, ``retrieve_folder`` ``reid-dhm retrieve``
and ``export_checkpoint`` ``reid-dhm export``. The command line only parses arguments,
resolves the config (``reid_dhm.config``) and calls these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluate import evaluate_checkpoint
    from .export import export_checkpoint
    from .retrieve import Retrieval, retrieve_folder
    from .training import RunResult, train

# Lazy: ``import reid_dhm.runs`` for its errors must not import the training stack.
_LAZY = {
    "train": ".training",
    "RunResult": ".training",
    "evaluate_checkpoint": ".evaluate",
    "export_checkpoint": ".export",
    "retrieve_folder": ".retrieve",
    "Retrieval": ".retrieve",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Retrieval",
    "RunResult",
    "evaluate_checkpoint",
    "export_checkpoint",
    "retrieve_folder",
    "train",
]
