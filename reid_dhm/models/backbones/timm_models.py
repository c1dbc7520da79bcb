"""DHM on any timm model: ``model.name=timm/<timm name>``.

The main branch is ``timm.create_model(name, pretrained=False, num_classes=0, ...)``
under ``backbone``, followed by the toolkit's re-ID head (a classifier, or BNNeck and a
bias-free classifier). Its embedding is exactly timm's
``forward_head(forward_features(x), pre_logits=True)``.

Auxiliary branches follow the mirror rule: each is a *freshly initialised* timm model
of the same name and keyword arguments, cut in front of its fork, so it holds new
copies of the stages after the fork and the same final norm / pooling / pre-logits
head. Cutting is structural and uses only what timm exposes: the fork is a
``feature_info`` module (``layer2``, ``stages.1``, ``blocks.7``, ...); in forward order,
every child that runs before it (the stem, earlier stages, the fork stage itself) is
replaced by a pass-through (:class:`Skipped`; parameter-free state such as EVA-02's
rotary embedding stays) and the model's top-level parameters (ViT's ``cls_token`` and
``pos_embed``: the tokens already carry them) are removed. The branch then runs
its own ``forward_features`` on the main path's fork output.

Fork points (``forks``):

* hierarchical models (CNNs, Swin): 0-based ``feature_info`` indices; by default the
  levels of reduction 8 and 16 (the paper's ImageNet choice: after conv3_x / conv4_x);
* plain ViTs (every level at the same reduction): block counts k (the branch forks
  after block k); by default floor(2d/3) and floor(5d/6) of depth d.

``aux1`` is the deepest fork, ``aux2`` the next, and so on. The paper's hand-written
branch recipes do not exist here (``branch_style='paper'`` is refused).

``deploy()`` returns the plain timm model: its state dict loads strictly into
``timm.create_model(name, num_classes=N, **timm_kwargs)``. With a BNNeck it returns a
:class:`TimmWithNeck` (the timm model with ``num_classes=0`` plus the neck). timm is
imported only when a ``timm/`` model is built, so the rest of the toolkit does not
wait for it.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..dhm import AuxBranch, DHMNet, check_backbone_args, make_bnneck
from ..registry import ModelEntry

PREFIX = "timm/"
BACKBONE = "backbone."
# What deployed.pth of a timm model says it is (the hand-written models write a bare
# state dict); bumped when the layout changes.
DEPLOYED_FORMAT = "reid_dhm.timm_deployed/1"


def import_timm():
    """The timm module, or a one-line ImportError saying how to get it."""
    try:
        import timm
    except ImportError:
        raise ImportError("timm/<name> models need the timm package: pip install timm") from None
    return timm


@dataclass(frozen=True)
class TimmFacts:
    """What the toolkit reads off a timm architecture (built once on the meta device).

    Attributes:
        modules: ``feature_info`` module paths, in forward order.
        reductions: their down-sampling factors.
        classifier: the names of timm's classifier modules (dropped from weight files).
        takes_img_size: the model class accepts ``img_size`` (ViT, Swin, ...).
    """

    name: str
    modules: tuple[str, ...]
    reductions: tuple[int, ...]
    classifier: tuple[str, ...]
    takes_img_size: bool

    @property
    def hierarchical(self) -> bool:
        """Levels of several reductions (CNNs, Swin); False for a plain ViT."""
        return len(set(self.reductions)) > 1

    @property
    def stride(self) -> int:
        return max(self.reductions)

    def fork_range(self) -> tuple[int, int]:
        """(lowest, highest) valid fork: an index, or for a plain ViT a block count."""
        n = len(self.modules)
        return (0, n - 2) if self.hierarchical else (1, n - 1)

    def fork_module(self, fork: int) -> str:
        """The module (path inside the timm model) whose output feeds a branch at ``fork``."""
        return self.modules[fork] if self.hierarchical else self.modules[fork - 1]

    def default_forks(self) -> tuple[int, ...]:
        """Deepest first: the reduction-16 and -8 levels, or blocks 5d/6 and 2d/3 of a ViT."""
        low, high = self.fork_range()
        if not self.hierarchical:
            d = len(self.modules)
            return tuple(
                sorted({(5 * d) // 6, (2 * d) // 3} & set(range(low, high + 1)), reverse=True)
            )
        picked = []
        for r in (16, 8):
            found = [i for i, red in enumerate(self.reductions) if red == r and i <= high]
            if found:
                picked.append(found[-1])
        if not picked:  # no level at /8 or /16: the two levels before the last
            picked = list(range(high, max(low, high - 1) - 1, -1))
        return tuple(sorted(set(picked), reverse=True))


def _unsupported(model: nn.Module) -> str | None:
    """Why DHM branches cannot be cut from this timm model, or None. Found by
    ``benchmarks/probe_timm_families.py``; each would otherwise fail at the first forward
    with an error from inside timm."""
    kind = type(model)
    if kind.__module__ == "timm.models.hrnet":
        return "HRNet's stages pass lists of multi-resolution maps; a branch fork carries one"
    if kind.__module__ == "timm.models.levit" and not getattr(model, "use_conv", True):
        return (
            "LeViT flattens its stem's map to tokens outside any module, so a branch cannot "
            "start at a fork; the levit_conv_* models work"
        )
    if kind.__name__ == "VisionTransformerDistilled":
        return (
            "a distilled DeiT's token layout needs the distillation token at every fork; "
            "the plain deit_* models work"
        )
    return None


@functools.lru_cache(maxsize=64)
def timm_facts(timm_name: str) -> TimmFacts:
    """:class:`TimmFacts` of a timm model name; ValueError for a name timm does not have."""
    timm = import_timm()
    if not timm.is_model(timm_name):
        raise ValueError(
            f"unknown timm model {timm_name!r}; timm.list_models() lists the names "
            f"(give model.name=timm/<name>)"
        )
    with torch.device("meta"):  # structure only: no memory, no initialisation cost
        model = timm.create_model(timm_name, pretrained=False, num_classes=0)
    why = _unsupported(model)
    if why is not None:
        raise ValueError(f"timm model {timm_name!r} cannot take DHM branches: {why}")
    info = getattr(model, "feature_info", None)
    if not info or len(info) < 2:
        raise ValueError(f"timm model {timm_name!r} has no feature_info levels to fork from")
    classifier = model.pretrained_cfg.get("classifier") or ()
    return TimmFacts(
        name=timm_name,
        modules=tuple(f["module"] for f in info),
        reductions=tuple(int(f["reduction"]) for f in info),
        classifier=(classifier,) if isinstance(classifier, str) else tuple(classifier),
        takes_img_size="img_size" in inspect.signature(type(model).__init__).parameters,
    )


def check_forks(forks: Iterable[int] | None, timm_name: str) -> tuple[int, ...]:
    """``forks`` (or the default) as distinct ints in range, deepest first.

    The one rule for ``model.forks``: the config check and the constructor both call it.
    """
    facts = timm_facts(timm_name)
    if forks is None:
        return facts.default_forks()
    low, high = facts.fork_range()
    what = "feature_info indices" if facts.hierarchical else "block counts"
    values = list(forks) if not isinstance(forks, (str, bytes)) else [forks]
    for f in values:
        if not isinstance(f, int) or isinstance(f, bool) or not low <= f <= high:
            raise ValueError(
                f"forks {values!r}: timm/{timm_name} forks are {what} {low}..{high}, got {f!r}"
            )
    if len(set(values)) != len(values):
        raise ValueError(f"forks {values!r}: a fork is listed twice")
    return tuple(sorted(values, reverse=True))


class Skipped(nn.Module):
    """A module cut from a branch: returns its input (``nn.Identity`` would refuse the
    keyword arguments some blocks get, e.g. EVA-02's ``blk(x, rope=...)``)."""

    def forward(self, x, *args, **kwargs):
        return x


def _cut_before(module: nn.Module, path: Sequence[str]) -> None:
    """Replace by :class:`Skipped` every child of ``module`` that runs before the
    submodule at ``path`` (children are in forward order in timm), and that submodule."""
    names = [n for n, _ in module.named_children()]
    if path[0] not in names:
        raise ValueError(f"{type(module).__name__} has no child {path[0]!r}")
    for name in names[: names.index(path[0])]:
        if not _is_shared_state(getattr(module, name)):
            setattr(module, name, Skipped())
    if len(path) == 1:
        setattr(module, path[0], Skipped())
    else:
        _cut_before(getattr(module, path[0]), path[1:])


def _is_shared_state(child: nn.Module) -> bool:
    """A child with buffers and no parameters (EVA-02's rotary embedding ``rope``) is state
    the later blocks consult, not a layer the input runs through: the cut keeps it."""
    has_params = next(child.parameters(), None) is not None
    return not has_params and next(child.buffers(), None) is not None


def mirror_body(model: nn.Module, fork_module: str) -> nn.Module:
    """``model`` cut in front of ``fork_module``'s output (in place; returned).

    Its ``forward_features`` then takes that module's output, (B, C, H, W) for CNNs,
    (B, H, W, C) for Swin, (B, N, C) tokens for a ViT, and runs the remaining stages
    and the final norm. Top-level parameters (a ViT's ``cls_token``, ``pos_embed``,
    ``reg_token``) go: the fork's tokens already hold them, and timm skips them when None.
    """
    _cut_before(model, fork_module.split("."))
    for name, _ in list(model.named_parameters(recurse=False)):
        setattr(model, name, None)
    return model


def timm_embedding(model: nn.Module, x: Tensor) -> Tensor:
    """(B, 3, H, W) -> (B, D): timm's pre-logits feature, the embedding we train."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def embedding_dim(model: nn.Module) -> int:
    """D of :func:`timm_embedding` (MobileNetV3's head widens past ``num_features``)."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def _classifiers(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """``(dotted name, module)`` of each of ``model.get_classifier()``: one (``fc``,
    ``head``, ``head.fc``, ...) or two for distilled models (LeViT, EfficientFormer:
    ``head`` and ``head_dist``); None if one is not a submodule."""
    heads = model.get_classifier()
    names = {id(m): n for n, m in model.named_modules()}
    found = [(names.get(id(h)), h) for h in (heads if isinstance(heads, tuple) else (heads,))]
    return None if any(name is None for name, _ in found) else found


def _head_tensors(head: nn.Module, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor] | None:
    if isinstance(head, nn.Linear):
        return weight, bias
    if isinstance(head, nn.Conv2d) and head.kernel_size == (1, 1) and head.groups == 1:
        return weight[:, :, None, None], bias  # DLA
    return None


def timm_head_state(net: nn.Module, classifier: nn.Linear) -> dict[str, Tensor] | None:
    """``classifier`` as the state of ``net``'s own classifier, or None where timm's
    classifier is no single linear map of the pre-logits feature (RepViT's BN + Linear
    with a distillation head, MetaFormer's MLP head): then the deployed network is the
    timm model with ``num_classes=0`` plus the trained linear classifier.

    A distilled model whose eval logits are the mean of two linear heads (LeViT,
    EfficientFormer) gets the trained classifier in both, so the mean is the classifier.
    """
    found = _classifiers(net)
    if found is None:
        return None
    weight, bias = classifier.weight.detach(), classifier.bias.detach()
    state = {}
    for path, head in found:
        tensors = _head_tensors(head, weight, bias)
        if tensors is None:
            return None
        state[f"{path}.weight"], state[f"{path}.bias"] = (t.clone() for t in tensors)
    return state


class TimmBranch(AuxBranch):
    """An auxiliary branch whose body is a cut timm model (see :func:`mirror_body`)."""

    def embed(self, x: Tensor) -> Tensor:
        """Fork output (layout of the fork module) -> (B, feature_dim) pre-logits feature."""
        return timm_embedding(self.body, x)


class _Tapped(Exception):
    """Raised by a forward hook to end the main pass once the wanted output is taken."""


def _init_classifier(linear: nn.Linear) -> None:
    # torchreid's classifier init, as every branch of every registry model.
    nn.init.normal_(linear.weight, 0, 0.01)
    if linear.bias is not None:
        nn.init.zeros_(linear.bias)


class DHMTimm(DHMNet):
    """A timm model with the re-ID head and mirror DHM branches.

    Args:
        num_classes: classifier outputs of every branch.
        model_name: the timm name, e.g. ``'convnext_atto'`` (the registry's
            ``timm/<name>`` binds it).
        branches: subset of the aux names (``aux1`` = deepest fork); None = all;
            ``()`` = the plain timm model.
        forks: fork points, see the module docstring; None = the default.
        img_size: (H, W) input size, passed to timm only for models that take it
            (ViT, Swin: position embeddings and windows); CNNs take any size.
        branch_style: only ``'mirror'``.
        neck, eval_feature: as every registry model (``'bnneck'``: BoT's head).
        **timm_kwargs: more ``timm.create_model`` keywords (``drop_path_rate=0.1``).

    Eval output: (B, D) pre-logits embedding of the timm model.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        model_name: str = "resnet18",
        branches=None,
        forks: Sequence[int] | None = None,
        img_size: int | Sequence[int] | None = None,
        branch_style: str = "mirror",
        neck: str = "none",
        eval_feature: str = "pre_bn",
        **timm_kwargs,
    ):
        super().__init__()
        if branch_style == "paper":
            raise ValueError(
                f"timm/{model_name} builds mirror branches only: the paper's branch recipes "
                "exist for the hand-written backbones; use branch_style='mirror'"
            )
        timm = import_timm()
        facts = timm_facts(model_name)
        forks = check_forks(forks, model_name)
        names = tuple(f"aux{i + 1}" for i in range(len(forks)))
        branches = check_backbone_args(
            num_classes, branches, names, names,
            branch_style=branch_style, neck=neck, eval_feature=eval_feature,
        )  # fmt: skip
        kwargs = dict(timm_kwargs)
        if img_size is not None and facts.takes_img_size:
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            kwargs["img_size"] = tuple(int(v) for v in size)
        # Exactly what create_model got, for deploy() and deployed.pth.
        self.timm_name, self.timm_kwargs = model_name, kwargs
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
        self.input_stride = facts.stride
        # Instance-level: every feature_info level is a stage a branch may fork from.
        self.stage_names = tuple(BACKBONE + m for m in facts.modules)
        self.feature_dim = embedding_dim(self.backbone)
        self._set_head(num_classes, neck, eval_feature)
        _init_classifier(self.classifier)
        aux = {}
        for name, fork in zip(names, forks):
            if name not in branches:
                continue
            module = facts.fork_module(fork)
            fresh = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
            aux[name] = TimmBranch(
                BACKBONE + module, mirror_body(fresh, module), self.feature_dim,
                num_classes, neck=neck,
            )  # fmt: skip
        self._set_branches(aux)
        self.init_kwargs["forks"] = list(forks)

    def __getattr__(self, name: str):
        # stage_names are dotted paths into the timm model ("backbone.layer2"); the code
        # that walks stages (gradient monitor) reads them with getattr.
        if "." in name:
            return self.get_submodule(name)
        return super().__getattr__(name)

    # ---------------------------------------------------------------- forward
    def _run_main(self, x: Tensor, taps: set[str], stop_at: str | None = None) -> dict:
        """timm's own forward, with the outputs of the ``taps`` modules captured by hooks.

        Returns ``{tap: its output}`` and, under None, the (B, D) embedding (absent when
        the pass stops early at ``stop_at``).
        """
        out: dict = {}

        def hook(name: str, module: nn.Module, args, output) -> None:
            out[name] = output
            if name == stop_at:
                raise _Tapped

        handles = [
            self.get_submodule(t).register_forward_hook(functools.partial(hook, t)) for t in taps
        ]
        try:
            out[None] = timm_embedding(self.backbone, x)
        except _Tapped:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    # ------------------------------------------------------------- deployment
    def pretrained_module_names(self) -> tuple[str, ...]:
        return ("backbone",)

    def adapt_pretrained(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """ImageNet weights made at another input size, fitted to this model's.

        timm's own loading filter of the architecture (``checkpoint_filter_fn`` of its
        module) does it: a ViT's position embeddings are resampled to this model's patch
        grid (224x224's 14x14 to 256x128's 16x8), Swin's relative position tables to its
        windows. Architectures without a filter take the weights as they are.
        """
        module = sys.modules[type(self.backbone).__module__]
        filter_fn = getattr(module, "checkpoint_filter_fn", None)
        if filter_fn is None:
            return state
        inner = {k[len(BACKBONE) :]: v for k, v in state.items() if k.startswith(BACKBONE)}
        with warnings.catch_warnings():  # torch performance notes from timm's resampling
            warnings.simplefilter("ignore", UserWarning)
            adapted = filter_fn(inner, self.backbone)
        out = {k: v for k, v in state.items() if not k.startswith(BACKBONE)}
        out.update((BACKBONE + k, v) for k, v in adapted.items())
        return out

    def _fresh_timm(self, num_classes: int) -> nn.Module:
        timm = import_timm()
        return timm.create_model(
            self.timm_name, pretrained=False, num_classes=num_classes, **self.timm_kwargs
        )

    def deploy(self) -> nn.Module:
        """The plain timm model (neck none) or :class:`TimmWithNeck` (BNNeck), in eval mode.

        Built fresh by ``timm.create_model(name, num_classes=N or 0, **timm_kwargs)`` and
        loaded strictly, so what comes back is exactly what a user of timm builds.
        """
        ref = next(self.parameters())
        backbone = {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}
        net = self._fresh_timm(self.num_classes) if self.bnneck is None else None
        head = None if net is None else timm_head_state(net, self.classifier)
        if head is not None:
            backbone.update(head)
            net.load_state_dict(backbone, strict=True)
        else:
            net = TimmWithNeck(self._fresh_timm(0), self.num_classes, self.eval_feature, self.neck)
            net.model.load_state_dict(backbone, strict=True)
            if self.bnneck is not None:
                net.bnneck.load_state_dict(self.bnneck.state_dict(), strict=True)
            net.classifier.load_state_dict(self.classifier.state_dict(), strict=True)
        return net.to(device=ref.device, dtype=ref.dtype).eval()

    def deployed_embedder(self) -> nn.Module:
        """(B, 3, H, W) -> (B, D): the deployed network's pre-logits embedding."""
        return TimmEmbedding(self.deploy())

    def deployed_file(self) -> dict:
        """``deployed.pth``: the deployed state dict and what rebuilds it (``load_deployed``)."""
        timm = import_timm()
        deployed = self.deploy().cpu()
        state = deployed.state_dict()
        wrapped = isinstance(deployed, TimmWithNeck)
        if self.bnneck is not None:
            holds = (
                "the timm model with num_classes=0 under 'model.', BNNeck 'bnneck.', bias-free "
                "'classifier.': rebuild with reid_dhm.models.backbones.timm_models.load_deployed"
            )
        elif wrapped:
            holds = (
                "the timm model with num_classes=0 under 'model.' and the trained linear "
                "'classifier.' (timm's own classifier for this architecture is not one linear "
                "layer): rebuild with reid_dhm.models.backbones.timm_models.load_deployed"
            )
        else:
            holds = (
                "the plain timm model: timm.create_model(timm_name, num_classes=num_classes, "
                "**timm_kwargs).load_state_dict(state_dict, strict=True)"
            )
        return {
            "format": DEPLOYED_FORMAT,
            "library": "timm",
            "timm_version": timm.__version__,
            "timm_name": self.timm_name,
            "timm_kwargs": _plain(self.timm_kwargs),
            "num_classes": self.num_classes,
            "embedding_dim": self.feature_dim,
            "neck": self.neck,
            "eval_feature": self.eval_feature,
            "head": "toolkit" if wrapped else "timm",
            "holds": holds,
            "state_dict": state,
        }


class TimmWithNeck(nn.Module):
    """A deployed timm model with BNNeck: ``model`` (num_classes=0), ``bnneck``, ``classifier``;
    with ``neck='none'`` (an architecture whose timm classifier is not one linear layer)
    ``bnneck`` is an identity and the classifier has a bias.

    Keeps timm's calling convention: ``forward_features``, ``forward_head(x,
    pre_logits=True)`` (the embedding: before the BN, or after it with
    ``eval_feature='post_bn'``) and ``forward`` (logits).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        eval_feature: str = "pre_bn",
        neck: str = "bnneck",
    ):
        super().__init__()
        self.model = model
        dim = embedding_dim(model)
        # neck='none' here: timm's own classifier for this architecture is no single
        # linear map (see timm_head_state), so the trained one rides beside the model.
        self.bnneck = make_bnneck(dim) if neck == "bnneck" else nn.Identity()
        self.classifier = nn.Linear(dim, num_classes, bias=neck != "bnneck")
        self.eval_feature = eval_feature

    def forward_features(self, x: Tensor) -> Tensor:
        return self.model.forward_features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Features -> (B, D) embedding (``pre_logits``) or (B, num_classes) logits."""
        v = self.model.forward_head(x, pre_logits=True)
        if pre_logits:
            return self.bnneck(v) if self.eval_feature == "post_bn" else v
        return self.classifier(self.bnneck(v))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


class TimmEmbedding(nn.Module):
    """Wraps a deployed timm network so that calling it gives the (B, D) embedding."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return timm_embedding(self.net, x)


def load_deployed(source) -> nn.Module:
    """Rebuild a timm model's ``deployed.pth`` (a path or the loaded dict), in eval mode."""
    from ...utils.torch_io import read_torch_file

    payload = (
        source if isinstance(source, Mapping) else read_torch_file(source, what="deployed file")
    )
    if not isinstance(payload, Mapping) or payload.get("format") != DEPLOYED_FORMAT:
        raise ValueError(f"{source!r} is not a deployed timm model file ({DEPLOYED_FORMAT})")
    timm = import_timm()
    kwargs = dict(payload["timm_kwargs"])
    if "img_size" in kwargs:
        kwargs["img_size"] = tuple(kwargs["img_size"])
    if payload["neck"] == "bnneck" or payload.get("head") == "toolkit":
        base = timm.create_model(payload["timm_name"], pretrained=False, num_classes=0, **kwargs)
        net = TimmWithNeck(base, payload["num_classes"], payload["eval_feature"], payload["neck"])
    else:
        net = timm.create_model(
            payload["timm_name"], pretrained=False, num_classes=payload["num_classes"], **kwargs
        )
    net.load_state_dict(payload["state_dict"], strict=True)
    return net.eval()


def _plain(value):
    """Tuples as lists, so the record reads back the same from JSON and ``weights_only``."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def convert_timm_state_dict(
    state: Mapping[str, Tensor], target: Mapping[str, Tensor], classifier: Sequence[str] = ()
) -> OrderedDict[str, Tensor]:
    """A timm (or torchvision: timm's ResNets share its names) state dict onto ``backbone.``.

    The source's classifier (``classifier`` names, e.g. ``fc``, ``head.fc``) is dropped:
    class counts differ. Everything else is kept, so the loader's strict checks still
    refuse weights of another architecture.
    """
    out = OrderedDict()
    for key, value in state.items():
        if any(key == c or key.startswith(c + ".") for c in classifier):
            continue
        out[BACKBONE + key] = value
    return out


def timm_entry(timm_name: str) -> ModelEntry:
    """The registry entry of ``timm/<timm_name>`` (any name timm has)."""
    facts = timm_facts(timm_name)
    return ModelEntry(
        functools.partial(DHMTimm, model_name=timm_name),
        f"timm {timm_name} with mirror DHM branches (forks {list(facts.default_forks())})",
        converter=functools.partial(convert_timm_state_dict, classifier=facts.classifier),
        options=frozenset({"neck", "branch_style", "eval_feature"}),
        input_stride=facts.stride,
    )


def is_timm_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


# Registry names resolved by rule rather than listed: "timm/<any timm model name>".
PREFIXES = ((PREFIX, timm_entry),)

__all__ = [
    "DEPLOYED_FORMAT",
    "DHMTimm",
    "PREFIX",
    "TimmBranch",
    "TimmEmbedding",
    "TimmFacts",
    "TimmWithNeck",
    "check_forks",
    "convert_timm_state_dict",
    "is_timm_name",
    "load_deployed",
    "mirror_body",
    "timm_entry",
    "timm_facts",
]
