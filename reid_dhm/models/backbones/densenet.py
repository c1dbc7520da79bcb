"""DHM DenseNets (Huang et al. 2017) for CIFAR with the authors' branches.

Main path: a 3x3 conv (16 channels, or 2k for DenseNet-BC), three dense blocks of
``n`` layers each with growth rate k, separated by transitions (BN-ReLU-conv1x1-
avgpool2, channels multiplied by the compression factor), then BN-ReLU, global
average pooling and a linear classifier.

* DenseNet (d, k): ``n = (depth - 4) / 3`` layers of BN-ReLU-conv3x3, compression 1.
* DenseNet-BC (d, k): ``n = (depth - 4) / 6`` bottleneck layers (BN-ReLU-conv1x1 to
  4k, BN-ReLU-conv3x3 to k), compression 0.5.

Auxiliary branches (DESIGN 2), each ending in BN-ReLU before pooling:

* ``aux2`` forks after ``transition1`` (16x16): dense block (growth k) -> transition
  -> dense block (growth k), i.e. a copy of the main path's next two stages with its
  own depths.
* ``aux1`` forks after ``transition2`` (8x8): one dense block with growth 3k.

Main-path module names equal the authors' (``conv1``, ``layer1``, ``transition1`` ...).
"""

from __future__ import annotations

import math
from functools import partial

import torch
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

# (depth, bottleneck) -> ((aux2 block 1, aux2 block 2), (aux1 block,)) layers; the authors'.
BRANCH_BLOCKS = {
    (40, False): ((12, 6), (12,)),
    (100, False): ((16, 16), (32,)),
    (100, True): ((16, 16), (32,)),
    (190, True): ((16, 16), (31,)),
    (250, True): ((22, 22), (41,)),
}


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing ``growth`` channels, concatenated to its input.

    (B, C, H, W) -> (B, C + growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int, dropout: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, growth, 3, 1, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.relu(self.bn(x)))
        out = F.dropout(out, self.dropout, self.training)
        return torch.cat((x, out), 1)


class BottleneckLayer(nn.Module):
    """DenseNet-B layer: BN-ReLU-conv1x1 (4 growth), BN-ReLU-conv3x3 (growth), concatenated.

    (B, C, H, W) -> (B, C + growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int, dropout: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        out = F.dropout(self.conv1(F.relu(self.bn1(x))), self.dropout, self.training)
        out = F.dropout(self.conv2(F.relu(self.bn2(out))), self.dropout, self.training)
        return torch.cat((x, out), 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-(dropout)-avgpool2: (B, C_in, H, W) -> (B, C_out, H / 2, W / 2)."""

    def __init__(self, in_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.dropout = dropout

    def forward(self, x: Tensor) -> Tensor:
        out = F.dropout(self.conv(F.relu(self.bn(x))), self.dropout, self.training)
        return F.avg_pool2d(out, 2, 2)


def make_dense_block(
    in_channels: int, layers: int, growth: int, bottleneck: bool, dropout: float
) -> tuple[nn.Sequential, int]:
    """A dense block of ``layers`` layers; returns it and its output channel count."""
    if layers < 1:
        raise ValueError(f"a dense block needs at least one layer, got {layers!r}")
    layer = BottleneckLayer if bottleneck else DenseLayer
    block = nn.Sequential(
        *(layer(in_channels + i * growth, growth, dropout) for i in range(layers))
    )
    return block, in_channels + layers * growth


class DHMCifarDenseNet(DHMNet):
    """CIFAR DenseNet / DenseNet-BC with optional DHM auxiliary branches.

    Args:
        depth: ``3n + 4`` (plain) or ``6n + 4`` (bottleneck), e.g. 40 or 100.
        growth: growth rate k.
        num_classes: classifier outputs of every branch.
        branches: subset of ``('aux1', 'aux2')``; ``()`` is the plain DenseNet.
        bottleneck: use DenseNet-B bottleneck layers.
        compression: transition channel factor theta in (0, 1] (0.5 for -BC, 1 plain);
            output channels are ``floor(theta * C)`` as in the reference code.
        dropout: dropout after every conv (0 = none, the default, as for augmented CIFAR).
        branch_blocks: ``((aux2_block1, aux2_block2), (aux1_block,))`` layers; default:
            the authors' table (40/100 plain, 100/190/250 bottleneck).

    Input (B, 3, H, W), H and W multiples of 4 (32x32 for CIFAR). Eval output: the
    (B, C) pooled BN-ReLU ``layer3`` features (C = 448 for d40-k12, 342 for BC-100-12).
    """

    input_stride = 4  # total down-sampling: inputs must be at least this big
    stage_names = (
        "conv1",
        "layer1",
        "transition1",
        "layer2",
        "transition2",
        "layer3",
        "bn",
        "relu",
    )

    def __init__(
        self,
        depth: int = 40,
        growth: int = 12,
        num_classes: int = 100,
        branches=DEFAULT_BRANCHES,
        bottleneck: bool = False,
        compression: float = 1.0,
        dropout: float = 0.0,
        branch_blocks=None,
    ):
        super().__init__()
        per_layer = 6 if bottleneck else 3
        if (
            isinstance(depth, bool)
            or not isinstance(depth, int)
            or depth < per_layer + 4
            or (depth - 4) % per_layer
        ):
            kind = "DenseNet-BC" if bottleneck else "DenseNet"
            raise ValueError(f"{kind} depth must be {per_layer}n + 4 with n >= 1, got {depth!r}")
        if isinstance(growth, bool) or not isinstance(growth, int) or growth < 1:
            raise ValueError(f"DenseNet growth must be an integer >= 1, got {growth!r}")
        if not 0 < compression <= 1:
            raise ValueError(f"compression must be in (0, 1], got {compression!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        branches = check_backbone_args(num_classes, branches, AUX_BRANCHES, DEFAULT_BRANCHES)
        if branches:
            known = {d: v for (d, b), v in BRANCH_BLOCKS.items() if b == bool(bottleneck)}
            kind = "DenseNet-BC" if bottleneck else "DenseNet"
            branch_blocks = check_branch_blocks(branch_blocks, depth, known, kind)
        # Recorded as resolved (the table's default filled in), as checkpoints hold it.
        self.init_kwargs["branch_blocks"] = branch_blocks
        n = (depth - 4) // per_layer

        def transition(c: int) -> tuple[Transition, int]:
            out = int(math.floor(c * compression))
            return Transition(c, out, dropout), out

        c = 2 * growth if bottleneck else 16
        self.conv1 = nn.Conv2d(3, c, 3, 1, 1, bias=False)
        self.layer1, c = make_dense_block(c, n, growth, bottleneck, dropout)
        self.transition1, c = transition(c)
        c_fork2 = c
        self.layer2, c = make_dense_block(c, n, growth, bottleneck, dropout)
        self.transition2, c = transition(c)
        c_fork1 = c
        self.layer3, c = make_dense_block(c, n, growth, bottleneck, dropout)
        self._set_bn_relu_head(c, num_classes)

        aux = {}
        if "aux2" in branches:
            (a, b), _ = branch_blocks
            block1, c2 = make_dense_block(c_fork2, a, growth, bottleneck, dropout)
            trans, c2 = transition(c2)
            block2, c2 = make_dense_block(c2, b, growth, bottleneck, dropout)
            body = nn.Sequential(block1, trans, block2, *bn_relu(c2))
            aux["aux2"] = AuxBranch("transition1", body, c2, num_classes)
        if "aux1" in branches:
            _, (layers,) = branch_blocks
            block, c1 = make_dense_block(c_fork1, layers, 3 * growth, bottleneck, dropout)
            body = nn.Sequential(block, *bn_relu(c1))
            aux["aux1"] = AuxBranch("transition2", body, c1, num_classes)
        self._set_branches(aux)
        init_weights(self)


# CIFAR models take 32x32 inputs and train from scratch: no hub weights, no options.
MODELS = (
    *model_pair(
        "cifar_densenet40_12",
        partial(DHMCifarDenseNet, 40, 12),
        "CIFAR DenseNet (d=40, k=12) with DHM branches aux1 and aux2",
        "plain CIFAR DenseNet (d=40, k=12)",
        options=frozenset(),
    ),
    *model_pair(
        "cifar_densenet_bc100_12",
        partial(DHMCifarDenseNet, 100, 12, bottleneck=True, compression=0.5),
        "CIFAR DenseNet-BC (d=100, k=12, compression 0.5) with DHM branches aux1 and aux2",
        "plain CIFAR DenseNet-BC (d=100, k=12, compression 0.5)",
        options=frozenset(),
    ),
)
