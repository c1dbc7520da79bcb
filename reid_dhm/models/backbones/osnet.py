"""DHM OSNet (Zhou et al., ICCV 2019) in torchreid's ``osnet_x1_0`` / ``osnet_x0_25`` layout.

Main-path module names equal torchreid's (``conv1`` ... ``conv5``, ``fc``,
``classifier``; OSBlock internals ``conv1``, ``conv2a`` ... ``conv2d``, ``gate``,
``conv3``, ``downsample``), so a deployed model loads strictly into
``torchreid.reid.models.build_model('osnet_x1_0', n)`` (and BoxMOT's backbone of that
name) and computes the same embedding; torchreid's ImageNet OSNet files load into the
backbone when given as ``pretrained=PATH`` (none can be downloaded here).

Main path: ``conv1`` (7x7 s2) + max pool (/4), ``conv2`` (OSBlocks, then a 1x1 + 2x2
average-pool transition: /8), ``conv3`` (same: /16), ``conv4`` (OSBlocks, no
transition), ``conv5`` (1x1), global average pooling, ``fc`` (Linear to 512, BN1d,
ReLU): the 512-d embedding.

Auxiliary branches (DESIGN-style notes). The ResNet rule is "fresh stages of the
same block type that keep the main path's total down-sampling", and OSNet's stages
are not separable into narrower variants without changing the block's own multi-scale
design, so each branch is a fresh copy of the main path's remaining stages:

* ``aux1`` forks from ``conv3`` (/16, the last down-sampling point): new ``conv4`` +
  ``conv5`` + ``fc``. Forking after ``conv4`` would leave only a 1x1 conv, too shallow
  to be a classifier of its own; ``conv3`` is the deepest fork with a full OSBlock
  stage left, as the ResNet aux1 forks before the last stage.
* ``aux2`` forks from ``conv2`` (/8): new ``conv3`` (with its transition) + ``conv4`` +
  ``conv5`` + ``fc``, the counterpart of the ResNet aux2 fork one stage earlier.

Both end in their own 512-d ``fc``, pooling and classifier, so every branch embedding
has the main branch's size. The training cost is measured by ``tools/summary.py``.
"""

from __future__ import annotations

from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

from ..dhm import AuxBranch, DHMNet, check_backbone_args, init_weights
from ..registry import model_pair

# width -> channels of conv1, conv2, conv3, conv4 (torchreid's osnet_x*_*)
WIDTHS = {1.0: (64, 256, 384, 512), 0.75: (48, 192, 288, 384), 0.5: (32, 128, 192, 256),
          0.25: (16, 64, 96, 128)}  # fmt: skip
BLOCKS_PER_STAGE = (2, 2, 2)
EMBEDDING = 512
# stage -> (index of its input channels, of its output channels, transition after it)
_STAGES = {"conv2": (0, 1, True), "conv3": (1, 2, True), "conv4": (2, 3, False)}
# branch -> fork stage; the branch copies every main stage after it (conv5 and fc too)
_BRANCH_FORKS = {"aux1": "conv3", "aux2": "conv2"}
AUX_BRANCHES = tuple(_BRANCH_FORKS)
DEFAULT_BRANCHES = ("aux1", "aux2")


class ConvLayer(nn.Module):
    """Conv (no bias) -> BN -> ReLU; torchreid's ``ConvLayer`` / ``Conv1x1`` / ``Conv3x3``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Conv1x1Linear(nn.Module):
    """1x1 conv -> BN, no non-linearity."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class LightConv3x3(nn.Module):
    """1x1 (linear) then depthwise 3x3, BN, ReLU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, groups=cout)
        self.bn = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv2(self.conv1(x))))


class ChannelGate(nn.Module):
    """Per-channel sigmoid gates from the globally pooled input (reduction 16)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=True)
        self.gate_activation = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        g = self.fc2(self.relu(self.fc1(self.global_avgpool(x))))
        return x * self.gate_activation(g)


class OSBlock(nn.Module):
    """Omni-scale block: four streams of 1..4 light 3x3 convs, one shared gate, fused."""

    def __init__(self, cin: int, cout: int, bottleneck_reduction: int = 4):
        super().__init__()
        mid = cout // bottleneck_reduction
        self.conv1 = ConvLayer(cin, mid, 1)
        self.conv2a = LightConv3x3(mid, mid)
        self.conv2b = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(2)))
        self.conv2c = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(3)))
        self.conv2d = nn.Sequential(*(LightConv3x3(mid, mid) for _ in range(4)))
        self.gate = ChannelGate(mid)
        self.conv3 = Conv1x1Linear(mid, cout)
        self.downsample = Conv1x1Linear(cin, cout) if cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.conv1(x)
        fused = sum(self.gate(s(x1)) for s in (self.conv2a, self.conv2b, self.conv2c, self.conv2d))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(self.conv3(fused) + shortcut)


def make_stage(cin: int, cout: int, blocks: int, transition: bool) -> nn.Sequential:
    """OSBlocks, then (optionally) a 1x1 conv and a 2x2 average pool halving the size."""
    layers = [OSBlock(cin, cout)] + [OSBlock(cout, cout) for _ in range(1, blocks)]
    if transition:
        layers.append(nn.Sequential(ConvLayer(cout, cout, 1), nn.AvgPool2d(2, stride=2)))
    return nn.Sequential(*layers)


def make_embedding(cin: int, dim: int = EMBEDDING) -> nn.Sequential:
    """OSNet's ``fc``: Linear -> BatchNorm1d -> ReLU on the pooled feature."""
    return nn.Sequential(nn.Linear(cin, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True))


class DHMOSNet(DHMNet):
    """OSNet main branch (torchreid names) with optional DHM auxiliary branches.

    Args:
        num_classes: identities every branch classifies.
        width: 1.0, 0.75, 0.5 or 0.25 (torchreid's ``osnet_x1_0`` ... ``osnet_x0_25``).
        branches: subset of ``('aux1', 'aux2')``; ``()`` = plain OSNet.
        neck: ``'none'`` (torchreid's head) or ``'bnneck'``.
        eval_feature: with a BNNeck, what eval mode returns: ``'pre_bn'`` or ``'post_bn'``.

    Eval output: the (B, 512) embedding (``fc`` output), exactly torchreid's.
    """

    input_stride = 16  # total down-sampling: inputs must be at least this big
    stage_names = ("conv1", "maxpool", "conv2", "conv3", "conv4", "conv5")

    def __init__(
        self,
        num_classes: int = 1000,
        width: float = 1.0,
        branches=DEFAULT_BRANCHES,
        neck: str = "none",
        eval_feature: str = "pre_bn",
    ):
        super().__init__()
        if width not in WIDTHS:
            raise ValueError(f"unknown OSNet width {width!r}; valid widths are {sorted(WIDTHS)}")
        branches = check_backbone_args(
            num_classes,
            branches,
            AUX_BRANCHES,
            DEFAULT_BRANCHES,
            neck=neck,
            eval_feature=eval_feature,
        )
        ch = WIDTHS[width]
        self.conv1 = ConvLayer(3, ch[0], 7, stride=2, padding=3)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        for name, (i, o, transition) in _STAGES.items():
            setattr(self, name, make_stage(ch[i], ch[o], BLOCKS_PER_STAGE[i], transition))
        self.conv5 = ConvLayer(ch[3], ch[3], 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = make_embedding(ch[3])
        self.feature_dim = EMBEDDING
        self._set_head(num_classes, neck, eval_feature)

        aux = {}
        stages = list(_STAGES)
        for name in branches:
            fork = _BRANCH_FORKS[name]
            tail = [
                make_stage(ch[i], ch[o], BLOCKS_PER_STAGE[i], transition)
                for s, (i, o, transition) in _STAGES.items()
                if stages.index(s) > stages.index(fork)
            ]
            body = nn.Sequential(*tail, ConvLayer(ch[3], ch[3], 1))
            aux[name] = AuxBranch(
                fork, body, EMBEDDING, num_classes, head=make_embedding(ch[3]), neck=neck
            )
        self._set_branches(aux)
        init_weights(self)

    @property
    def torchreid_name(self) -> str | None:
        if self.bnneck is not None:
            return None
        return (
            "osnet_x"
            + {1.0: "1_0", 0.75: "0_75", 0.5: "0_5", 0.25: "0_25"}[self.init_kwargs["width"]]
        )


__all__ = ["AUX_BRANCHES", "DHMOSNet", "OSBlock", "WIDTHS"]


MODELS = tuple(
    entry
    for width, tag in ((1.0, "x1_0"), (0.25, "x0_25"))
    for entry in model_pair(
        f"osnet_{tag}",
        partial(DHMOSNet, width=width),
        f"OSNet-{tag} (torchreid layout) with DHM branches aux1 (conv3), aux2 (conv2)",
        f"plain OSNet-{tag} (torchreid osnet_{tag} layout)",
        # torchreid's ImageNet OSNet files, if the user has them in the torch hub cache.
        hub_files=(f"osnet_{tag}_imagenet.pth",),
        options=frozenset({"neck", "eval_feature"}),
    )
)
