"""Parameters and FLOPs per branch: what DHM costs in training and (nothing) at inference."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .dhm import MAIN, DHMNet, count_parameters


def _flops(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args)
    return int(counter.get_total_flops())


@torch.no_grad()
def branch_costs(model: DHMNet, input_size: tuple[int, int] = (256, 128)) -> OrderedDict:
    """Forward cost of one image, per branch and in total.

    FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-add, convolutions
    and linear layers). The main row includes its classifier; each aux row is the
    branch alone (its own stages, pooling and classifier) on top of the shared stem.

    Args:
        model: any registry model.
        input_size: (H, W) of the input image.

    Returns:
        ``{row: {"params": int, "flops": int}}`` with rows ``main``, each aux branch,
        ``train`` (all branches) and ``deploy`` (``model.deploy()`` in eval mode).
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, *input_size, device=next(model.parameters()).device)
        taps = model._run_main(x, {b.fork for b in model.aux_branches.values()})
        rows = OrderedDict()
        rows[MAIN] = {
            "params": count_parameters(model) - count_parameters(model.aux_branches),
            "flops": _flops(lambda: model.forward_branches(x, [MAIN])),
        }
        for name, branch in model.aux_branches.items():
            tap = taps[branch.fork]
            rows[name] = {
                "params": count_parameters(branch),
                "flops": _flops(lambda b=branch, t=tap: b.classifier(b.embed(t))),
            }
        rows["train"] = {
            "params": count_parameters(model),
            "flops": _flops(lambda: model.forward_branches(x)),
        }
        deployed = model.deploy()
        rows["deploy"] = {"params": count_parameters(deployed), "flops": _flops(deployed, x)}
    finally:
        model.train(was_training)
    return rows
