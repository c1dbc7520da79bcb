"""The DHM model base: a main path of named stages plus forked auxiliary branches.

A subclass builds its main path as attributes named exactly like the reference
implementation (torchvision / torchreid), so pretrained and deployed weights load
with strict key matching, and hands its auxiliary branches to ``_set_branches``.
Everything about forking, per-branch outputs, branch selection and deployment
lives here once, for every architecture.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

from torch import Tensor, nn

from ..utils.branches import MAIN
from ..utils.checks import branch_name_tuple, check_int
from .outputs import BranchOutputs

AUX_PREFIX = "aux_branches."
# How auxiliary branches are built: each architecture's recipe table ("paper"), or
# fresh copies of the main path's own stages after the fork ("mirror").
BRANCH_STYLES = ("paper", "mirror")
# The head after pooling: a plain classifier, or BNNeck (Luo et al. 2019: BatchNorm on the
# embedding, a bias-free classifier after it; triplet on the feature before the BN).
NECKS = ("none", "bnneck")
# What eval mode (and the deployed model) returns with a BNNeck: the feature before the
# BN or after it (BoT evaluates on the latter).
EVAL_FEATURES = ("pre_bn", "post_bn")


def make_bnneck(dim: int) -> nn.BatchNorm1d:
    """BNNeck's BatchNorm: its shift is frozen at 0 (as BoT), so it only rescales."""
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)
    return bn


def check_head(neck: str, eval_feature: str) -> None:
    if neck not in NECKS:
        raise ValueError(f"unknown neck {neck!r}; valid necks are {list(NECKS)}")
    if eval_feature not in EVAL_FEATURES:
        raise ValueError(
            f"unknown eval_feature {eval_feature!r}; valid ones are {list(EVAL_FEATURES)}"
        )
    if neck == "none" and eval_feature != "pre_bn":
        raise ValueError(f"eval_feature={eval_feature!r} needs neck='bnneck'")


class AuxBranch(nn.Module):
    """One auxiliary classifier branch: fresh stages, global pooling, classifier.

    Args:
        fork: name of the main-path stage whose output feeds this branch.
        body: the branch's own stages (nothing is shared with the main path).
        feature_dim: size of the branch embedding (``head``'s output, else ``body``'s
            channels).
        num_classes: classifier outputs.
        head: optional layers after pooling (OSNet's ``fc``), as in the main path.
        neck: ``'none'`` or ``'bnneck'`` (BatchNorm, then a bias-free classifier).
    """

    def __init__(
        self,
        fork: str,
        body: nn.Module,
        feature_dim: int,
        num_classes: int,
        head: nn.Module | None = None,
        neck: str = "none",
    ):
        super().__init__()
        self.fork = fork
        self.feature_dim = feature_dim
        self.body = body
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        if head is not None:
            self.fc = head
        self.bnneck = make_bnneck(feature_dim) if neck == "bnneck" else None
        self.classifier = nn.Linear(feature_dim, num_classes, bias=neck == "none")
        nn.init.normal_(self.classifier.weight, 0, 0.01)
        if self.classifier.bias is not None:
            nn.init.zeros_(self.classifier.bias)

    def embed(self, x: Tensor) -> Tensor:
        """(B, C, H, W) fork feature map -> (B, feature_dim) pooled embedding (before any BN)."""
        v = self.global_avgpool(self.body(x)).flatten(1)
        return self.fc(v) if hasattr(self, "fc") else v

    def logits(self, v: Tensor) -> Tensor:
        """(B, feature_dim) embedding -> (B, num_classes), through the BNNeck if any."""
        return self.classifier(self.bnneck(v) if self.bnneck is not None else v)


class DHMNet(nn.Module):
    """Base class of every model in the registry (DHM and plain baselines).

    Subclasses must set, before calling ``_set_branches``:

    * ``stage_names``: main-path stage attribute names in forward order;
    * ``global_avgpool``, ``classifier`` and ``feature_dim`` for the main branch.

    ``init_kwargs`` (what ``deploy()`` rebuilds the architecture from, and checkpoints
    store) is recorded for every subclass by the base: the outermost constructor's
    arguments, defaults filled in, ``branches`` as built. A constructor that normalises
    another argument (e.g. fills a default from a table) writes that value into
    ``self.init_kwargs`` itself, and it is kept.

    ``forward`` returns :class:`BranchOutputs` in training mode and the main
    embedding, shape (B, feature_dim), in eval mode.
    """

    stage_names: tuple[str, ...] = ()
    # Total down-sampling of the main path; an input smaller than this in height or width
    # collapses to a 1x1 map long before the end (configs are checked against it).
    input_stride: int = 1

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        # Every subclass constructor is wrapped, so no backbone repeats the bookkeeping.
        if "__init__" in cls.__dict__:
            cls.__init__ = _recording_init(cls.__init__)

    def __init__(self) -> None:
        super().__init__()
        self.aux_branches = nn.ModuleDict()
        # No class attributes for these: a class attribute would hide a registered module.
        self.bnneck: nn.BatchNorm1d | None = None
        self.eval_feature = "pre_bn"
        self._active: tuple[str, ...] | None = None
        self.init_kwargs: dict = {}

    # ----------------------------------------------------------------- set-up
    def _set_head(self, num_classes: int, neck: str = "none", eval_feature: str = "pre_bn") -> None:
        """The main branch's classifier (bias-free after a BNNeck) and optional BNNeck;
        subclasses call it once ``feature_dim`` is known."""
        check_head(neck, eval_feature)
        self.bnneck = make_bnneck(self.feature_dim) if neck == "bnneck" else None
        self.classifier = nn.Linear(self.feature_dim, num_classes, bias=neck == "none")
        self.eval_feature = eval_feature

    def _set_bn_relu_head(self, channels: int, num_classes: int) -> None:
        """A pre-activation network's last stages ``bn`` and ``relu``, global pooling and
        the main classifier (no neck) on ``channels`` features."""
        self.bn, self.relu = bn_relu(channels)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = channels
        self._set_head(num_classes)

    @property
    def neck(self) -> str:
        return "bnneck" if self.bnneck is not None else "none"

    def set_eval_feature(self, eval_feature: str) -> None:
        """Choose what eval mode returns: ``'pre_bn'`` or (with a BNNeck) ``'post_bn'``."""
        check_head(self.neck, eval_feature)
        self.eval_feature = eval_feature
        if "eval_feature" in self.init_kwargs:
            self.init_kwargs["eval_feature"] = eval_feature

    def _set_branches(self, branches: Mapping[str, AuxBranch]) -> None:
        # Depth order (aux1 = deepest fork first) is the order losses rely on.
        for name in sorted(branches):
            if branches[name].fork not in self.stage_names:
                raise ValueError(
                    f"branch {name!r} forks from unknown stage {branches[name].fork!r}; "
                    f"stages are {list(self.stage_names)}"
                )
            self.aux_branches[name] = branches[name]

    @property
    def branch_names(self) -> tuple[str, ...]:
        """``('main', 'aux1', 'aux2', ...)``: every branch this model has, in depth order."""
        return (MAIN, *self.aux_branches.keys())

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def branch_feature_dims(self) -> OrderedDict[str, int]:
        """Embedding size of every branch, in depth order."""
        dims = OrderedDict([(MAIN, self.feature_dim)])
        dims.update((n, b.feature_dim) for n, b in self.aux_branches.items())
        return dims

    def branch_path(self, branch: str) -> tuple[str, ...]:
        """Main-path stages ``branch`` runs through: all of them for ``main``, else the
        stages up to and including its fork (the stem it shares with the main branch)."""
        self._check_branch_names([branch])
        if branch == MAIN:
            return self.stage_names
        fork = self.aux_branches[branch].fork
        return self.stage_names[: self.stage_names.index(fork) + 1]

    def set_active_branches(self, names: Iterable[str] | None) -> None:
        """Restrict training forward passes to ``names`` (``main`` is always computed).

        ``None`` activates every branch. Inactive branches are not computed at all,
        so an epoch without them costs no more than the baseline.
        """
        if names is None:
            self._active = None
            return
        names = branch_name_tuple(names, "active branches")
        self._check_branch_names(names)
        self._active = tuple(n for n in self.aux_branches if n in names)

    @property
    def active_branches(self) -> tuple[str, ...]:
        aux = tuple(self.aux_branches) if self._active is None else self._active
        return (MAIN, *aux)

    def _check_branch_names(self, names: Iterable[str]) -> None:
        unknown = [n for n in names if n not in self.branch_names]
        if unknown:
            raise ValueError(
                f"unknown branch {unknown[0]!r}; this model has branches {list(self.branch_names)}"
            )

    # ---------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> BranchOutputs | Tensor:
        """Training: :class:`BranchOutputs` of the active branches. Eval: (B, D) main embedding."""
        if self.training:
            return self.forward_branches(x, self.active_branches)
        return self.embed(x)

    def forward_branches(self, x: Tensor, branches: Iterable[str] | None = None) -> BranchOutputs:
        """Run the main path once and the requested aux branches off its stage outputs.

        Args:
            x: images, shape (B, 3, H, W).
            branches: names to compute (``main`` is always included); ``None`` = all.

        Returns:
            :class:`BranchOutputs` with logits (B, num_classes) and features (B, D_b).
        """
        names = self.branch_names if branches is None else branch_name_tuple(branches, "branches")
        self._check_branch_names(names)
        aux = [n for n in self.aux_branches if n in names]
        taps = self._run_main(x, {self.aux_branches[n].fork for n in aux})
        feats = OrderedDict([(MAIN, taps.pop(None))])
        for name in aux:
            feats[name] = self.aux_branches[name].embed(taps[self.aux_branches[name].fork])
        logits = OrderedDict([(MAIN, self._main_logits(feats[MAIN]))])
        for name in aux:
            logits[name] = self.aux_branches[name].logits(feats[name])
        return BranchOutputs(logits=logits, features=feats)

    def branch_embeddings(self, x: Tensor, branches: Iterable[str]) -> OrderedDict[str, Tensor]:
        """Eval-mode embeddings of several branches from one main-path pass (as ``embed``)."""
        out = self.forward_branches(x, branches)
        feats = OrderedDict()
        for name, v in out.features.items():
            bn = self.bnneck if name == MAIN else self.aux_branches[name].bnneck
            feats[name] = bn(v) if bn is not None and self.eval_feature == "post_bn" else v
        return feats

    def _main_logits(self, v: Tensor) -> Tensor:
        return self.classifier(self.bnneck(v) if self.bnneck is not None else v)

    def embed(self, x: Tensor, branch: str = MAIN) -> Tensor:
        """Embedding of one branch, shape (B, D_branch); ``main`` is the deployed one.

        With a BNNeck and ``eval_feature='post_bn'`` the feature after the BN.
        """
        if branch == MAIN:
            v = self._run_main(x, set())[None]
            bn = self.bnneck
        else:
            self._check_branch_names([branch])
            aux = self.aux_branches[branch]
            v = aux.embed(self._run_main(x, {aux.fork}, stop_at=aux.fork)[aux.fork])
            bn = aux.bnneck
        return bn(v) if bn is not None and self.eval_feature == "post_bn" else v

    def _run_main(self, x: Tensor, taps: set[str], stop_at: str | None = None) -> dict:
        """Main path; returns the requested stage outputs and, under key None, the embedding."""
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in taps:
                out[name] = x
            if name == stop_at:
                return out
        v = self.global_avgpool(x).flatten(1)
        out[None] = self.fc(v) if hasattr(self, "fc") else v  # OSNet's embedding layer
        return out

    # ------------------------------------------------------------- deployment
    @property
    def torchreid_name(self) -> str | None:
        """The torchreid model (also BoxMOT's backbone of that name) that the deployed
        model's state dict loads into strictly and computes the same embedding with,
        e.g. ``'resnet50'``; None when there is none (CIFAR models, non-standard strides).
        """
        return None

    def main_state_dict(self) -> OrderedDict[str, Tensor]:
        """The state dict without any auxiliary-branch entry (what ``deploy()`` keeps)."""
        return OrderedDict(
            (k, v) for k, v in self.state_dict().items() if not k.startswith(AUX_PREFIX)
        )

    def pretrained_module_names(self) -> tuple[str, ...]:
        """Top-level children that hold backbone (ImageNet-pretrainable) parameters."""
        return tuple(n for n in self.stage_names if _has_params(getattr(self, n)))

    def adapt_pretrained(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fit ImageNet weights (already in this model's key layout) to this instance.

        The hand-written CNNs take weights of any input size as they are; a model whose
        tensors depend on the input size (a ViT's position embeddings, Swin's relative
        position tables) resamples them here.
        """
        return state

    def new_module_names(self) -> tuple[str, ...]:
        """Top-level children with no pretrained weights: classifiers and aux branches."""
        kept = set(self.pretrained_module_names())
        return tuple(n for n, m in self.named_children() if n not in kept and _has_params(m))

    def deploy(self) -> DHMNet:
        """The inference model: same class and main path, no auxiliary branches.

        Its parameters, FLOPs and eval outputs equal the main branch of ``self``; its
        ``state_dict`` has exactly the reference library's keys. Returned in eval mode
        on the same device and dtype as ``self``.
        """
        plain = type(self)(**{**self.init_kwargs, "branches": ()})
        ref = next(self.parameters())
        plain.to(device=ref.device, dtype=ref.dtype)
        plain.load_state_dict(self.main_state_dict(), strict=True)
        return plain.eval()

    def deployed_embedder(self) -> nn.Module:
        """The deployed network as (B, 3, H, W) -> (B, D) embeddings, in eval mode.

        ``deploy()`` itself here (its eval forward is the embedding); a backbone whose
        deployed model is another library's (timm's forward gives logits) wraps it.
        Export, inference and the cost summary call this, not ``deploy()``.
        """
        return self.deploy()

    def deployed_file(self) -> Mapping:
        """What a run writes to ``deployed.pth``: here the deployed state dict alone."""
        return self.deploy().cpu().state_dict()


def _recording_init(init: Callable) -> Callable:
    """``init`` that, for the outermost class only, records its arguments in ``init_kwargs``."""
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        # A subclass's constructor calling its parent's: only the class being built records.
        if type(self).__init__ is __init__:
            self.init_kwargs = _recorded_arguments(self, signature, args, kwargs)

    return __init__


def _recorded_arguments(model: DHMNet, signature: inspect.Signature, args, kwargs) -> dict:
    """The constructor's keyword arguments as ``deploy()`` and checkpoints need them."""
    bound = signature.bind(model, *args, **kwargs)
    bound.apply_defaults()
    params = list(signature.parameters.values())
    recorded = {}
    for name, value in list(bound.arguments.items())[1:]:  # [0] is self
        kind = signature.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            recorded.update(value)
        elif kind is not inspect.Parameter.VAR_POSITIONAL:
            recorded[name] = value
    if "branches" in recorded:
        # Resolved as built: "aux2,aux1" and ["aux2", "aux1"] are both ('aux1', 'aux2').
        recorded["branches"] = tuple(model.aux_branches)
    # Values the constructor stored itself (normalised ones) win over the raw arguments.
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    for name, value in model.init_kwargs.items():
        if name in recorded or accepts_any:
            recorded[name] = value
    return recorded


def init_weights(model: nn.Module) -> None:
    """The initialisation every registry model uses.

    Convolutions He-normal (fan-out, as torchvision's ResNet and the authors' code),
    BatchNorm (1, 0), every linear classifier N(0, 0.01) with zero bias (torchreid's
    classifier init), so that no branch starts out more confident than another.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def bn_relu(channels: int) -> list[nn.Module]:
    """``[BatchNorm2d(channels), ReLU]``: a pre-activation network's closing pair."""
    return [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]


def check_num_classes(num_classes: int) -> int:
    """``num_classes`` as a Python int >= 1 (any integer type, not bool or float)."""
    return check_int(num_classes, "num_classes")


def check_input_size(
    height, width, stride: int, model: str, names: tuple[str, str] = ("height", "width")
) -> tuple[int, int]:
    """(height, width) as ints >= ``stride``, the model's total down-sampling.

    The one input-size rule: the config check (``data.height`` / ``data.width``) and
    the export (``--height`` / ``--width``) both call it, with their own ``names``.
    Smaller inputs collapse to nothing before the last stage.
    """
    sizes = []
    for name, value in zip(names, (height, width)):
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not whole or value < stride:
            raise ValueError(
                f"'{name}' is {value!r}, but {model} down-samples its input by {stride}: "
                f"give {names[0]} and {names[1]} >= {stride}"
            )
        sizes.append(int(value))
    return sizes[0], sizes[1]


def check_branch_style(style: str) -> str:
    """``style`` if it is one of :data:`BRANCH_STYLES`, else a ValueError naming them."""
    if style not in BRANCH_STYLES:
        raise ValueError(f"unknown branch_style {style!r}; valid styles are {list(BRANCH_STYLES)}")
    return style


def resolve_branches(
    branches: Iterable[str] | str | None, available: Iterable[str], default: Iterable[str]
) -> tuple[str, ...]:
    """Validate a user's ``branches=`` choice against what an architecture offers."""
    available = tuple(available)
    if branches is None:
        return tuple(default)
    if isinstance(branches, str):
        branches = [b for b in branches.replace("+", ",").split(",") if b and b != "none"]
    chosen = tuple(branches)
    for b in chosen:
        if b not in available:
            raise ValueError(f"unknown branch {b!r}; valid branches are {list(available)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"branch listed twice in {list(chosen)}")
    return tuple(sorted(chosen))


def check_backbone_args(
    num_classes: int,
    branches: Iterable[str] | str | None,
    available: Iterable[str],
    default: Iterable[str],
    *,
    branch_style: str = "paper",
    neck: str = "none",
    eval_feature: str = "pre_bn",
) -> tuple[str, ...]:
    """The checks every backbone constructor makes of the arguments all of them share
    (class count, head, branch style, branch choice); returns the resolved branches."""
    check_num_classes(num_classes)
    check_head(neck, eval_feature)
    check_branch_style(branch_style)
    return resolve_branches(branches, available, default)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "BRANCH_STYLES",
    "EVAL_FEATURES",
    "NECKS",
    "check_head",
    "make_bnneck",
    "MAIN",
    "AuxBranch",
    "DHMNet",
    "check_backbone_args",
    "check_branch_style",
    "check_input_size",
    "check_num_classes",
    "init_weights",
    "count_parameters",
    "resolve_branches",
]
