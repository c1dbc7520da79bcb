"""DHM ResNets for CIFAR (He et al. 2016, section 4.2) with the authors' branches.

Main path: a 3x3 conv to 16 channels, then three stages of ``n = (depth - 2) / 6``
BasicBlocks with 16, 32 and 64 channels (strides 1, 2, 2), global average pooling
and a linear classifier. Shortcuts are option A, as in the paper and the authors'
code: parameter-free, a 2x2 average pool when the block is strided and zero
channels appended when the width grows. That is what makes ResNet-110 1.7M
parameters (a 1x1 projection shortcut would add some).

Auxiliary branches (DESIGN 2), fresh stages that keep the main path's /4
down-sampling:

* ``aux2`` forks from ``layer1`` (16 ch, 32x32): 32 ch stride 2, then 64 ch stride 2.
* ``aux1`` forks from ``layer2`` (32 ch, 16x16): one stage of double width, 128 ch
  stride 2.

``branch_style='mirror'`` makes each branch a fresh copy of the main path's own
stages after its fork instead (aux1 = a new ``layer3``, aux2 = new ``layer2`` +
``layer3``, n blocks each, 64-d embeddings).

Module names of the main path equal the authors' (``conv1``, ``bn1``, ``layer1`` ...;
their ``fc`` is our ``classifier``).
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ..dhm import (
    AuxBranch,
    DHMNet,
    check_backbone_args,
    init_weights,
)
from ..registry import model_pair

AUX_BRANCHES = ("aux1", "aux2")
DEFAULT_BRANCHES = AUX_BRANCHES

# depth -> blocks per branch stage ((aux2 32-ch stage, aux2 64-ch stage), (aux1 128-ch stage,))
# 32 / 110 / 1202 are the authors'; 20 follows ResNet-32's pattern (n, ~n/2; n) and is ours,
# a small model for quick CPU experiments.
BRANCH_BLOCKS = {
    20: ((3, 2), (3,)),
    32: ((5, 3), (5,)),
    110: ((9, 9), (18,)),
    1202: ((100, 100), (200,)),
}


class ShortcutA(nn.Module):
    """Parameter-free shortcut (option A): average-pool by ``stride``, zero-pad channels.

    (B, C_in, H, W) -> (B, C_out, H / stride, W / stride), the extra channels all zero.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"option-A shortcut cannot shrink channels ({in_channels} -> {out_channels})"
            )
        self.extra = out_channels - in_channels
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride)
        if self.extra:
            # Pads the channel dim (dims are padded last-first: W, H, then C).
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


class CifarBasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU (post-activation).

    (B, in_channels, H, W) -> (B, channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = (
            ShortcutA(in_channels, channels, stride)
            if stride != 1 or in_channels != channels
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def make_cifar_stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks; only the first one changes stride and width."""
    if blocks < 1:
        raise ValueError(f"a stage needs at least one block, got {blocks!r}")
    layers = [CifarBasicBlock(in_channels, channels, stride)]
    layers += [CifarBasicBlock(channels, channels) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def check_branch_blocks(branch_blocks, depth: int, known: dict, what: str):
    """Validate ``((aux2 stage blocks...), (aux1 stage blocks...))`` or look it up by depth."""
    if branch_blocks is None:
        if depth not in known:
            raise ValueError(
                f"no default branch_blocks for {what} depth {depth}; known depths are "
                f"{sorted(known)} (pass branch_blocks=((a, b), (c,)) for others)"
            )
        return known[depth]
    try:
        (a, b), (c,) = branch_blocks
        values = (int(a), int(b), int(c))
    except (TypeError, ValueError):
        raise ValueError(
            f"branch_blocks must look like ((aux2_a, aux2_b), (aux1,)), got {branch_blocks!r}"
        ) from None
    if min(values) < 1 or any(v != w for v, w in zip(values, (a, b, c))):
        raise ValueError(f"branch_blocks must be integers >= 1, got {branch_blocks!r}")
    return (values[0], values[1]), (values[2],)


class DHMCifarResNet(DHMNet):
    """CIFAR ResNet (option-A shortcuts) with optional DHM auxiliary branches.

    Args:
        depth: ``6n + 2`` (20, 32, 110, 1202, ...).
        num_classes: classifier outputs of every branch (100 for CIFAR-100).
        branches: subset of ``('aux1', 'aux2')``; ``()`` is the plain ResNet (baseline
            and deployed model).
        branch_blocks: blocks per branch stage ``((aux2_32ch, aux2_64ch), (aux1_128ch,))``;
            default: the authors' table for depths 32, 110, 1202 (and ours for 20).
            ``'paper'`` style only.
        branch_style: ``'paper'`` (the authors' branches, default) or ``'mirror'``
            (each branch a fresh copy of the main path's stages after its fork).

    Input (B, 3, H, W), H and W multiples of 4 (32x32 for CIFAR). Eval output: the
    (B, 64) pooled ``layer3`` features. Branch embeddings: aux1 128-d, aux2 64-d.
    """

    input_stride = 4  # total down-sampling: inputs must be at least this big
    stage_names = ("conv1", "bn1", "relu", "layer1", "layer2", "layer3")

    def __init__(
        self,
        depth: int = 32,
        num_classes: int = 100,
        branches=DEFAULT_BRANCHES,
        branch_blocks=None,
        branch_style: str = "paper",
    ):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth!r}")
        branches = check_backbone_args(
            num_classes, branches, AUX_BRANCHES, DEFAULT_BRANCHES, branch_style=branch_style
        )
        if branch_style == "mirror" and branch_blocks is not None:
            raise ValueError(
                "branch_blocks sets the 'paper' branches; 'mirror' copies the main path"
            )
        n = (depth - 2) // 6
        if branches and branch_style == "paper":
            branch_blocks = check_branch_blocks(branch_blocks, depth, BRANCH_BLOCKS, "ResNet")
        # Recorded as resolved (the table's default filled in), as checkpoints hold it.
        self.init_kwargs["branch_blocks"] = branch_blocks

        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_cifar_stage(16, 16, n, 1)
        self.layer2 = make_cifar_stage(16, 32, n, 2)
        self.layer3 = make_cifar_stage(32, 64, n, 2)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 64
        self.classifier = nn.Linear(64, num_classes)

        # (aux2 stage blocks, aux1 stage blocks) and the aux1 width: a mirror copies the
        # main path's n-block 32- and 64-channel stages.
        (a, b), (c,) = (
            ((n, n), (n,)) if branch_style == "mirror" else (branch_blocks or ((1, 1), (1,)))
        )
        aux1_width = 64 if branch_style == "mirror" else 128
        aux = {}
        if "aux2" in branches:
            body = nn.Sequential(make_cifar_stage(16, 32, a, 2), make_cifar_stage(32, 64, b, 2))
            aux["aux2"] = AuxBranch("layer1", body, 64, num_classes)
        if "aux1" in branches:
            stage = make_cifar_stage(32, aux1_width, c, 2)
            aux["aux1"] = AuxBranch("layer2", stage, aux1_width, num_classes)
        self._set_branches(aux)
        init_weights(self)


# CIFAR models take 32x32 inputs and train from scratch: no hub weights.
MODELS = tuple(
    entry
    for depth in (20, 32, 110, 1202)
    for entry in model_pair(
        f"cifar_resnet{depth}",
        partial(DHMCifarResNet, depth),
        f"CIFAR ResNet-{depth} (option-A shortcuts) with DHM branches aux1 and aux2",
        f"plain CIFAR ResNet-{depth} (option-A shortcuts)",
        options=frozenset({"branch_style"}),
    )
)
