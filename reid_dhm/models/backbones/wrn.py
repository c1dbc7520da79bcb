"""DHM Wide ResNets (Zagoruyko & Komodakis 2016) for CIFAR with the authors' branches.

WRN-d-k: a 3x3 conv to 16 channels, three stages of ``n = (depth - 4) / 6``
pre-activation BasicBlocks with 16k, 32k and 64k channels (strides 1, 2, 2), then
BN-ReLU, global average pooling and a linear classifier. A block whose width or
stride changes takes its 1x1-conv shortcut from the block's own BN-ReLU output, as
in the reference implementation; dropout (between the two convs) is optional.

Auxiliary branches (DESIGN 2), each ending in its own BN-ReLU before pooling, as a
pre-activation network must:

* ``aux2`` forks from ``layer1`` (16k ch): 32k ch stride 2, then 64k ch stride 2.
* ``aux1`` forks from ``layer2`` (32k ch): one stage of double width, 128k ch stride 2.

Main-path module names equal the authors' (``conv``, ``layer1``..``layer3``, ``bn``).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ..dhm import (
    AuxBranch,
    DHMNet,
    bn_relu,
    check_backbone_args,
    init_weights,
)
from ..registry import model_pair
from .cifar_resnet import check_branch_blocks

AUX_BRANCHES = ("aux1", "aux2")
DEFAULT_BRANCHES = AUX_BRANCHES

# depth -> ((aux2 32k stage, aux2 64k stage), (aux1 128k stage,)), the authors' table.
BRANCH_BLOCKS = {
    16: ((2, 1), (2,)),
    28: ((4, 2), (4,)),
}


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, plus shortcut.

    (B, in_channels, H, W) -> (B, channels, H / stride, W / stride). No BN-ReLU after
    the addition: the next block (or the network's final ``bn``) applies it.
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.shortcut = (
            nn.Conv2d(in_channels, channels, 1, stride, bias=False)
            if stride != 1 or in_channels != channels
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        # Projection shortcuts see the pre-activated input; identity ones the raw input.
        skip = x if self.shortcut is None else self.shortcut(act)
        out = self.conv1(act)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + skip


def make_wide_stage(
    in_channels: int, channels: int, blocks: int, stride: int, dropout: float
) -> nn.Sequential:
    """``blocks`` WideBasicBlocks; only the first one changes stride and width."""
    if blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {blocks!r}")
    layers = [WideBasicBlock(in_channels, channels, stride, dropout)]
    layers += [WideBasicBlock(channels, channels, 1, dropout) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class DHMWideResNet(DHMNet):
    """WRN-depth-widen (pre-activation) with optional DHM auxiliary branches.

    Args:
        depth: ``6n + 4`` (16, 28, ...).
        widen: widening factor k (channels 16k, 32k, 64k).
        num_classes: classifier outputs of every branch.
        branches: subset of ``('aux1', 'aux2')``; ``()`` is the plain WRN.
        dropout: dropout probability between each block's convs (0 = none, default).
        branch_blocks: ``((aux2_32k, aux2_64k), (aux1_128k,))``; default: the authors'
            table for depths 16 and 28.

    Input (B, 3, H, W), H and W multiples of 4 (32x32 for CIFAR). Eval output: the
    (B, 64k) pooled BN-ReLU ``layer3`` features. Branch embeddings: aux1 128k, aux2 64k.
    """

    input_stride = 4  # total down-sampling: inputs must be at least this big
    stage_names = ("conv", "layer1", "layer2", "layer3", "bn", "relu")

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        num_classes: int = 100,
        branches=DEFAULT_BRANCHES,
        dropout: float = 0.0,
        branch_blocks=None,
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n + 4 with n >= 1, got {depth!r}")
        if isinstance(widen, bool) or not isinstance(widen, int) or widen < 1:
            raise ValueError(f"WRN widen must be an integer >= 1, got {widen!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        branches = check_backbone_args(num_classes, branches, AUX_BRANCHES, DEFAULT_BRANCHES)
        if branches:
            branch_blocks = check_branch_blocks(branch_blocks, depth, BRANCH_BLOCKS, "WRN")
        # Recorded as resolved (the table's default filled in), as checkpoints hold it.
        self.init_kwargs["branch_blocks"] = branch_blocks
        n = (depth - 4) // 6
        w1, w2, w3 = 16 * widen, 32 * widen, 64 * widen

        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.layer1 = make_wide_stage(16, w1, n, 1, dropout)
        self.layer2 = make_wide_stage(w1, w2, n, 2, dropout)
        self.layer3 = make_wide_stage(w2, w3, n, 2, dropout)
        self._set_bn_relu_head(w3, num_classes)

        aux = {}
        if "aux2" in branches:
            (a, b), _ = branch_blocks
            body = nn.Sequential(
                make_wide_stage(w1, w2, a, 2, dropout),
                make_wide_stage(w2, w3, b, 2, dropout),
                *bn_relu(w3),
            )
            aux["aux2"] = AuxBranch("layer1", body, w3, num_classes)
        if "aux1" in branches:
            _, (c,) = branch_blocks
            w4 = 128 * widen
            body = nn.Sequential(make_wide_stage(w2, w4, c, 2, dropout), *bn_relu(w4))
            aux["aux1"] = AuxBranch("layer2", body, w4, num_classes)
        self._set_branches(aux)
        init_weights(self)


# CIFAR models take 32x32 inputs and train from scratch: no hub weights, no options.
MODELS = tuple(
    entry
    for depth, widen in ((16, 8), (28, 10))
    for entry in model_pair(
        f"wrn{depth}_{widen}",
        partial(DHMWideResNet, depth, widen),
        f"Wide ResNet WRN-{depth}-{widen} (pre-activation) with DHM branches aux1 and aux2",
        f"plain Wide ResNet WRN-{depth}-{widen} (pre-activation)",
        options=frozenset(),
    )
)
