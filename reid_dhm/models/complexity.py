"""Parameters and FLOPs per branch: what DHM costs in training and (nothing) at inference.

Every branch row counts the branch's embedding network only (stages and pooling).
Classifiers are reported apart, in one ``classifiers`` row: they exist only in
training (the deployed model returns the embedding), and their size depends on the
class count of the training set, not on the architecture. So a plain backbone costs
exactly the same in its ``main``, ``train`` and ``deploy`` rows.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch.utils.flop_counter import FlopCounterMode

from .dhm import BRANCH_STYLES, MAIN, DHMNet, count_parameters


def _flops(fn, *args) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn(*args)
    return int(counter.get_total_flops())


@torch.no_grad()
def branch_costs(model: DHMNet, input_size: tuple[int, int] = (256, 128)) -> OrderedDict:
    """Forward cost of one image, per branch and in total, classifiers apart.

    FLOPs are counted by ``torch.utils.flop_counter`` (2 per multiply-add, convolutions
    and linear layers).

    Args:
        model: any registry model.
        input_size: (H, W) of the input image.

    Returns:
        ``{row: {"params": int, "flops": int}}`` with rows

        * ``main``: the main path up to its pooled embedding (no classifier);
        * each aux branch: its own stages and pooling on top of the shared stem;
        * ``classifiers``: the classifiers of all branches (training only);
        * ``train``: a training forward pass of every branch without the classifiers,
          measured, so it equals the sum of the branch rows;
        * ``deploy``: ``model.deploy()`` in eval mode (the embedding network), which
          equals ``main``.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, 3, *input_size, device=next(model.parameters()).device)
        taps = model._run_main(x, {b.fork for b in model.aux_branches.values()})
        feats = {MAIN: taps.pop(None)}
        heads = {MAIN: model.classifier}
        rows = OrderedDict()
        rows[MAIN] = {
            "params": count_parameters(model)
            - count_parameters(model.aux_branches)
            - count_parameters(model.classifier),
            "flops": _flops(lambda: model.embed(x)),
        }
        for name, branch in model.aux_branches.items():
            tap = taps[branch.fork]
            feats[name], heads[name] = branch.embed(tap), branch.classifier
            rows[name] = {
                "params": count_parameters(branch) - count_parameters(branch.classifier),
                "flops": _flops(lambda b=branch, t=tap: b.embed(t)),
            }
        rows["classifiers"] = {
            "params": sum(count_parameters(h) for h in heads.values()),
            "flops": sum(_flops(h, feats[n]) for n, h in heads.items()),
        }
        rows["train"] = {
            "params": count_parameters(model) - rows["classifiers"]["params"],
            "flops": _flops(lambda: model.forward_branches(x)) - rows["classifiers"]["flops"],
        }
        deployed = model.deployed_embedder()
        rows["deploy"] = {
            # the deployed classifier is the main one (timm's head holds it when deployed)
            "params": count_parameters(deployed) - count_parameters(model.classifier),
            "flops": _flops(deployed, x),
        }
    finally:
        model.train(was_training)
    return rows


def style_costs(
    name: str,
    num_classes: int,
    input_size: tuple[int, int] = (256, 128),
    branches=None,
    branch_style: str = "paper",
) -> list[tuple[str, OrderedDict, int]]:
    """:func:`branch_costs` of the registry model ``name`` for one branch style, or both.

    Args:
        name: a registry model name; num_classes: its classifier size.
        input_size: (H, W) of the input image.
        branches: the aux branches (None: the model's default).
        branch_style: ``'paper'``, ``'mirror'`` or ``'both'`` (one entry per style).

    Returns:
        ``[(title, rows, the model's class count), ...]``: the title is ``name``, with
        the style added unless only the paper's style was asked for.
    """
    from .backbones.timm_models import is_timm_name
    from .registry import build_model

    kwargs = {} if branches is None else {"branches": branches}
    if is_timm_name(name):  # ViT / Swin size their position embeddings and windows
        kwargs["img_size"] = tuple(input_size)
    styles = BRANCH_STYLES if branch_style == "both" else (branch_style,)
    out = []
    for style in styles:
        # Only a non-default style is passed: models without the option still work.
        extra = {} if style == "paper" else {"branch_style": style}
        model = build_model(name, num_classes, **kwargs, **extra)
        title = f"{name} (branch style {style})" if branch_style != "paper" else name
        out.append((title, branch_costs(model, input_size), model.num_classes))
    return out
