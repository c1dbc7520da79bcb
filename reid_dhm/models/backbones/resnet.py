"""DHM ResNets for re-ID and ImageNet (torchvision / torchreid layout).

Main-branch parameter names are exactly torchvision's ``resnet*`` minus ``fc``
plus torchreid's ``classifier``, so ImageNet weights load strictly into the main
branch and a deployed model loads into ``torchreid``'s ``resnet50``.

Auxiliary branches (DESIGN 2, the authors' ImageNet code): fresh stages of the
backbone's block type that keep the main path's total down-sampling.

* ``aux2`` forks from ``layer2``: a layer3-like stage (planes 256, stride 2), then a
  layer4-like stage (planes 512, stride 2).
* ``aux1`` forks from ``layer3``: one layer4-like stage of double width (planes 1024,
  stride 2), so its embedding is ``1024 * expansion`` wide.
* ``aux3`` (paper Table 4, B3; placement is ours, the supplement is not public)
  forks from ``layer1``: layer2-, layer3- and layer4-like stages (planes 128, 256,
  512, stride 2 each).

``branch_style='mirror'`` replaces those recipes by fresh copies of the main path's
own remaining stages (same planes, block counts and strides as the main path from the
fork on: aux1 = a new layer4, aux2 = new layer3 + layer4, aux3 = new layer2 + layer3 +
layer4), so every branch is the main network's tail with its own weights.
"""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from ..dhm import (
    AuxBranch,
    DHMNet,
    check_backbone_args,
    init_weights,
)
from ..registry import model_pair


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a shortcut: torchvision's ``BasicBlock`` (same names, same maths).

    Our own copy of the layout, so that ``import reid_dhm`` does not import torchvision.
    """

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    """1x1, 3x3 (strided: "ResNet v1.5", as torchvision and torchreid), 1x1 x4 and a shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(out + shortcut)


# depth -> (block, main blocks per stage, {branch: blocks per branch stage})
_SPECS = {
    18: (BasicBlock, (2, 2, 2, 2), {"aux1": (2,), "aux2": (1, 2), "aux3": (1, 1, 2)}),
    34: (BasicBlock, (3, 4, 6, 3), {"aux1": (3,), "aux2": (3, 2), "aux3": (2, 2, 2)}),
    50: (Bottleneck, (3, 4, 6, 3), {"aux1": (3,), "aux2": (3, 2), "aux3": (2, 2, 2)}),
    101: (Bottleneck, (3, 4, 23, 3), {"aux1": (3,), "aux2": (12, 2), "aux3": (2, 4, 2)}),
    152: (Bottleneck, (3, 8, 36, 3), {"aux1": (3,), "aux2": (18, 2), "aux3": (2, 6, 2)}),
}
# branch -> (fork stage, planes of each branch stage)
_BRANCH_LAYOUT = {
    "aux1": ("layer3", (1024,)),
    "aux2": ("layer2", (256, 512)),
    "aux3": ("layer1", (128, 256, 512)),
}
AUX_BRANCHES = tuple(_BRANCH_LAYOUT)
DEFAULT_BRANCHES = ("aux1", "aux2")
_MAIN_STAGES = ("layer1", "layer2", "layer3", "layer4")
_MAIN_PLANES = (64, 128, 256, 512)
_STAGE_INPLANES = {"layer1": 64, "layer2": 128, "layer3": 256}


def branch_stages(style: str, depth: int, branch: str) -> list[tuple[int, int]]:
    """(planes, blocks) of each stage of ``branch`` in ``style``, from the tables above."""
    fork, planes = _BRANCH_LAYOUT[branch]
    if style == "mirror":
        after = _MAIN_STAGES.index(fork) + 1
        return list(zip(_MAIN_PLANES[after:], _SPECS[depth][1][after:]))
    return list(zip(planes, _SPECS[depth][2][branch]))


def make_stage(block, inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A torchvision-style residual stage (first block projects when the shape changes)."""
    out = planes * block.expansion
    down = None
    if stride != 1 or inplanes != out:
        down = nn.Sequential(conv1x1(inplanes, out, stride), nn.BatchNorm2d(out))
    layers = [block(inplanes, planes, stride, down)]
    layers += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


class DHMResNet(DHMNet):
    """ResNet main branch (torchvision names) with optional DHM auxiliary branches.

    Args:
        depth: 18, 34, 50, 101 or 152.
        num_classes: identities (re-ID) or categories; every branch classifies them.
        branches: auxiliary branches to build, a subset of ``('aux1', 'aux2', 'aux3')``;
            ``()`` gives the plain ResNet (the baseline and the deployed model).
        last_stride: stride of ``layer4`` (torchreid default 2; 1 is a common re-ID
            variant). Each branch's last stage uses the same stride so all branches
            keep the main path's down-sampling.

    Eval output: (B, 512 * expansion) globally average-pooled ``layer4`` features,
    exactly torchreid's ``resnet50`` embedding for depth 50.
    """

    input_stride = 32  # total down-sampling: inputs must be at least this big
    stage_names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")

    def __init__(
        self,
        depth: int = 50,
        num_classes: int = 1000,
        branches=DEFAULT_BRANCHES,
        last_stride: int = 2,
        branch_style: str = "paper",
        neck: str = "none",
        eval_feature: str = "pre_bn",
    ):
        super().__init__()
        if depth not in _SPECS:
            raise ValueError(f"unknown ResNet depth {depth!r}; valid depths are {sorted(_SPECS)}")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
        branches = check_backbone_args(
            num_classes, branches, AUX_BRANCHES, DEFAULT_BRANCHES,
            branch_style=branch_style, neck=neck, eval_feature=eval_feature,
        )  # fmt: skip
        block, layers, _ = _SPECS[depth]
        exp = block.expansion

        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        planes = (64, 128, 256, 512)
        strides = (1, 2, 2, last_stride)
        inplanes = 64
        for i, (p, n, s) in enumerate(zip(planes, layers, strides)):
            setattr(self, f"layer{i + 1}", make_stage(block, inplanes, p, n, s))
            inplanes = p * exp
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = 512 * exp
        self._set_head(num_classes, neck, eval_feature)

        aux = {}
        for name in branches:
            fork = _BRANCH_LAYOUT[name][0]
            spec = branch_stages(branch_style, depth, name)
            stages, cin = [], _STAGE_INPLANES[fork] * exp
            for j, (p, n) in enumerate(spec):
                stride = last_stride if j == len(spec) - 1 else 2
                stages.append(make_stage(block, cin, p, n, stride))
                cin = p * exp
            aux[name] = AuxBranch(fork, nn.Sequential(*stages), cin, num_classes, neck=neck)
        self._set_branches(aux)
        init_weights(self)

    @property
    def torchreid_name(self) -> str | None:
        # torchreid's resnet* builders use last stride 2; a stride-1 model's weights would
        # load there but give another (coarser) embedding.
        if self.init_kwargs["last_stride"] != 2 or self.bnneck is not None:
            return None
        return f"resnet{self.init_kwargs['depth']}"


def to_torchvision_state_dict(state: dict) -> dict:
    """A deployed ResNet state dict with torchvision's names (``classifier`` -> ``fc``).

    ``torchvision.models.resnet50(num_classes=n).load_state_dict(...)`` then loads it
    strictly; without a classifier, drop the ``fc`` keys and load with ``strict=False``.
    """
    return {
        ("fc" + k[len("classifier") :] if k.startswith("classifier.") else k): v
        for k, v in state.items()
    }


# torchvision's ImageNet weight files of each depth, looked up (never downloaded) in the
# local torch hub cache for pretrained=True.
HUB_FILES = {
    18: ("resnet18-f37072fd.pth",),
    34: ("resnet34-b627a593.pth",),
    50: ("resnet50-0676ba61.pth", "resnet50-11ad3fa6.pth", "resnet50-19c8e357.pth"),
    101: ("resnet101-63fe2227.pth", "resnet101-cd907fc2.pth", "resnet101-5d3b4d8f.pth"),
    152: ("resnet152-394f9c45.pth", "resnet152-f82ba261.pth", "resnet152-b121ed2d.pth"),
}
MODELS = tuple(
    entry
    for depth, files in HUB_FILES.items()
    for entry in model_pair(
        f"resnet{depth}",
        partial(DHMResNet, depth),
        f"ResNet-{depth} with DHM branches aux1 (from layer3) and aux2 (from layer2)",
        f"plain ResNet-{depth} (torchreid/torchvision layout)",
        hub_files=files,
        options=frozenset({"neck", "last_stride", "branch_style", "eval_feature"}),
    )
)
