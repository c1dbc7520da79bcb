"""ONNX export of the deployed model, verified against PyTorch before it is kept.

The exported graph is the deployed (main-branch) model in eval mode: input
``images`` (B, 3, H, W) float32, output ``embeddings`` (B, D). The batch dimension is
dynamic. Before the file is moved into place, ONNX Runtime runs it on several batch
sizes and its outputs must match PyTorch's to a tolerance; otherwise nothing is
written (an earlier file at the target path is left as it was) and a ``ValueError``
says by how much they differ. Optionally the input normalisation is baked into the
graph, so callers feed RGB in [0, 1] and cannot forget (or double) the mean/std step.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .data.preprocessing import IMAGENET_MEAN, IMAGENET_STD
from .models import DHMNet
from .models.dhm import check_input_size
from .utils.checkpoint import unwrap
from .utils.checks import Range
from .utils.io import atomic_path, atomic_write, atomic_write_text


class NormalizedInput(nn.Module):
    """``model((x * in_std + in_mean - mean) / std)`` for (B, 3, H, W) RGB input.

    With the default ``in_mean=0, in_std=1`` the input is RGB in [0, 1]; with another
    (in_mean, in_std) it is RGB already normalised by those statistics (BoxMOT feeds
    ImageNet-normalised crops), converted to the statistics the model was trained with.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        in_mean: Sequence[float] = (0.0, 0.0, 0.0),
        in_std: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        super().__init__()
        self.model = model

        def column(v):
            return torch.tensor(v, dtype=torch.float32).view(1, 3, 1, 1)

        # One multiply-add: (x * in_std + in_mean - mean) / std = x * scale + shift.
        self.register_buffer("scale", column(in_std) / column(std))
        self.register_buffer("shift", (column(in_mean) - column(mean)) / column(std))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x * self.scale + self.shift)


# torch.onnx's exporter (dynamo) writes opset 18 or newer: asked for an older one, it
# falls back to 18 without failing, so an older opset is refused rather than mislabelled.
FIRST_OPSET = 18
# |ONNX Runtime - PyTorch| allowed per element (absolute and relative parts).
TOLERANCE = Range(0)


def opset_range() -> tuple[int, int]:
    """(oldest, newest) opset the export can write with the installed ``onnx``."""
    import onnx

    return FIRST_OPSET, int(onnx.defs.onnx_opset_version())


def check_opset(opset) -> int:
    """``opset`` if the exporter writes exactly that version, else a one-line ValueError."""
    low, high = opset_range()
    whole = isinstance(opset, int) and not isinstance(opset, bool)
    if not whole or not low <= opset <= high:
        raise ValueError(
            f"opset {opset!r} cannot be exported: torch.onnx writes opsets {low} to {high} "
            f"here (an older one would silently come out as {low}); pass --opset {low} or newer"
        )
    return opset


def _written_opset(path: Path) -> int:
    """The default-domain opset the file at ``path`` declares."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _as_pairs(stats) -> tuple | None:
    return None if stats is None else tuple(tuple(float(v) for v in s) for s in stats)


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({err.name} is missing): "
            "pip install 'reid-dhm[export]'"
        ) from None
    return onnxruntime


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    image_size: tuple[int, int] = (256, 128),
    opset: int = 18,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    check_batches: Sequence[int] = (1, 3),
    atol: float = 1e-4,
    rtol: float = 1e-3,
    seed: int = 0,
    input_normalization: tuple[Sequence[float], Sequence[float]] | None = None,
) -> dict:
    """Export ``model.deploy()`` to ONNX at ``path``, verified with ONNX Runtime.

    Args:
        model: a reid_dhm model (aux branches are dropped by ``deploy()``).
        image_size: (H, W) of the example input, each at least the model's
            ``input_stride`` (the rule training configs meet); the batch stays dynamic.
        opset: ONNX opset version, :data:`FIRST_OPSET` to the installed onnx's newest
            (:func:`check_opset`); the written file is checked to declare it.
        normalize: optional (mean, std) baked into the graph (input RGB in [0, 1]).
        input_normalization: with ``normalize``: the (mean, std) the graph's input is
            already normalised with (instead of RGB in [0, 1]); the graph converts it.
        check_batches: batch sizes run through ONNX Runtime and PyTorch for comparison.
        atol, rtol: allowed difference, elementwise ``|ort - torch| <= atol + rtol |torch|``.

    Returns:
        ``{'path', 'max_abs_diff', 'opset', 'input', 'output', 'embedding_dim', 'bytes',
        'atol', 'rtol', 'checked_batches', 'normalization_baked_in',
        'input_normalization', 'normalization'}``:
        ``normalization_baked_in`` is True only when the graph holds a normalisation
        step (not when ``input_normalization`` already equals ``normalize``);
        ``normalization`` says which case applies in words.

    Raises:
        ValueError: an opset, tolerance or input size that cannot work, or ONNX
            Runtime's outputs differ from PyTorch's beyond the tolerance (the target
            file is not written).
    """
    ort = _require_onnx()
    bare = unwrap(model)
    if not isinstance(bare, DHMNet):
        raise TypeError(f"export_onnx needs a reid_dhm model, got {type(bare).__name__}")
    check_opset(opset)
    TOLERANCE.check(atol, "atol")
    TOLERANCE.check(rtol, "rtol")
    # The same rule a training config's data.height / data.width meet.
    h, w = check_input_size(*image_size, bare.input_stride, type(bare).__name__)
    net = bare.deployed_embedder().cpu().float().eval()
    if input_normalization is not None and normalize is None:
        raise ValueError("input_normalization needs normalize=(mean, std) of the model")
    # Nothing to bake when the input already comes normalised as the model was trained.
    baked = normalize is not None and _as_pairs(normalize) != _as_pairs(input_normalization)
    if baked:
        net = NormalizedInput(net, *normalize, *(input_normalization or ())).eval()
    gen = torch.Generator().manual_seed(seed)
    example = torch.rand(2, 3, h, w, generator=gen)
    batch = torch.export.Dim("batch", min=1, max=4096)
    path = Path(path)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter; the check below is what counts
        torch.onnx.export(
            net,
            (example,),
            str(tmp),
            dynamo=True,
            opset_version=opset,
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_shapes={"x": {0: batch}},
            external_data=False,
            verbose=False,
        )
        written = _written_opset(tmp)
        if written != opset:
            raise ValueError(
                f"opset {opset} was asked, but torch.onnx wrote opset {written}; {path} was "
                f"not written: pass --opset {written}"
            )
        session = _ort_session(ort, tmp, opset, path)
        # Unit-range input when the graph takes RGB in [0, 1], else roughly what
        # normalised images look like.
        unit = normalize is not None and input_normalization is None
        worst, dim = _compare_with_torch(
            session, net, (h, w), check_batches, gen, unit, (atol, rtol), path
        )
    return {
        "path": str(path),
        "max_abs_diff": worst,
        "opset": opset,
        "input": ["images", "batch", 3, h, w],
        "output": ["embeddings", "batch", dim],
        "embedding_dim": dim,
        "bytes": path.stat().st_size,
        "atol": atol,
        "rtol": rtol,
        "checked_batches": list(check_batches),
        # True only when the graph holds a normalisation step (NormalizedInput).
        "normalization_baked_in": baked,
        # What the graph's input must be: RGB in [0, 1], or RGB normalised by (mean, std).
        "input_normalization": (
            "rgb in [0, 1]" if unit else _as_pairs(input_normalization or normalize)
        ),
        "normalization": _normalization_note(normalize, input_normalization),
    }


def _normalization_note(normalize, input_normalization) -> str:
    """Which of the three cases ``export_onnx`` exported, in words."""
    if normalize is None:
        return "not in the graph: feed images normalised with the model's mean / std"
    if input_normalization is None:
        return "baked into the graph: feed RGB in [0, 1]"
    if _as_pairs(normalize) == _as_pairs(input_normalization):
        return "the input's mean / std are the model's: nothing baked, feed them as they are"
    return (
        f"baked into the graph: input normalised with mean {list(input_normalization[0])} / "
        f"std {list(input_normalization[1])}, converted to the model's"
    )


def _ort_session(ort, tmp: Path, opset: int, path: Path):
    """An ONNX Runtime CPU session of ``tmp``; one line when this runtime cannot load it."""
    try:
        return ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own (pybind) exception types
        raise ValueError(
            f"ONNX Runtime {ort.__version__} cannot load the opset {opset} export ("
            f"{str(err).strip().splitlines()[0][:200]}); {path} was not written: pass an "
            f"older --opset (>= {FIRST_OPSET})"
        ) from None


def _compare_with_torch(session, net, size, batches, gen, unit: bool, tol, path) -> tuple:
    """(max |ONNX Runtime - PyTorch|, embedding dim) over ``batches`` random inputs.

    Raises ``ValueError`` (naming ``path``, which is then not written) when a shape
    differs or an element is off by more than ``atol + rtol |torch|``.
    """
    atol, rtol = tol
    worst = 0.0
    for b in batches:
        x = torch.rand(b, 3, *size, generator=gen)
        if not unit:
            x = (x - 0.45) / 0.225
        with torch.no_grad():
            ref = net(x).numpy()
        got = session.run(["embeddings"], {"images": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ValueError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} (batch {b})")
        diff = np.abs(got - ref)
        worst = max(worst, float(diff.max()))
        if not np.all(diff <= atol + rtol * np.abs(ref)):
            raise ValueError(
                f"the ONNX export differs from PyTorch: max |diff| {diff.max():.3g} at batch "
                f"{b} (allowed {atol:g} + {rtol:g} |x|); {path} was not written"
            )
    return worst, int(ref.shape[1])


# BoxMOT's fixed crop preprocessing (boxmot.reid.core.crops): BGR crop -> cv2.resize to the
# input size -> RGB -> / 255 -> ImageNet mean / std; embeddings L2-normalised.
BOXMOT_MEAN = IMAGENET_MEAN
BOXMOT_STD = IMAGENET_STD


# The BoxMOT architecture name written for a graph BoxMOT has no backbone for (a timm
# model, a ResNet with last stride 1). BoxMOT reads ``model_name`` from the sidecar
# before anything else; without one it guesses from substrings of the *file name*
# (``osnet_vs_convnext.onnx`` reads as OSNet, ``*mobilenetv4*`` as a 384x128 model).
# For an ONNX graph the name only sets the crop contract: the default input size when
# no ``img_size`` is given and model-specific options (CSL-TinyViT's). ResNet-50's
# contract is the plain one (resize to img_size, ImageNet mean / std, no options).
BOXMOT_CONTRACT_NAME = "resnet50"


def _contract_name(bare: DHMNet) -> dict:
    """Sidecar keys for a network without a BoxMOT backbone: the contract name and why."""
    timm_name = getattr(bare, "timm_name", None)
    arch = f"timm/{timm_name}" if timm_name else type(bare).__name__
    return {
        "model_name": BOXMOT_CONTRACT_NAME,
        "architecture": arch,
        "model_name_note": (
            f"the graph is {arch}, which BoxMOT has no backbone for; model_name only "
            f"selects BoxMOT's crop contract ({BOXMOT_CONTRACT_NAME}'s: resize to "
            "img_size, ImageNet mean/std), so BoxMOT does not guess one from the file name"
        ),
    }


def boxmot_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(ONNX path, PyTorch path) BoxMOT picks its runtime from by suffix.

    ``output`` may be a stem or end in ``.onnx``, ``.pt`` or ``.pth``: BoxMOT refuses
    ``.pth``, so the PyTorch file always gets ``.pt`` (no renaming left to the user).
    """
    path = Path(output)
    stem = path.with_suffix("") if path.suffix.lower() in (".onnx", ".pt", ".pth") else path
    return stem.with_name(stem.name + ".onnx"), stem.with_name(stem.name + ".pt")


def _write_sidecar(artifact: Path, metadata: dict) -> Path:
    """``<artifact>.metadata.json``: what BoxMOT reads before the file itself."""
    sidecar = artifact.with_name(artifact.name + ".metadata.json")
    atomic_write_text(sidecar, json.dumps(metadata, indent=2, sort_keys=True))
    return sidecar


def export_boxmot(
    model: nn.Module,
    output: str | os.PathLike,
    image_size: tuple[int, int] = (256, 128),
    mean: Sequence[float] = BOXMOT_MEAN,
    std: Sequence[float] = BOXMOT_STD,
    opset: int = 18,
    atol: float = 1e-4,
) -> dict:
    """Files BoxMOT's ReID backends load as they are (no renaming, no key surgery).

    Always an ONNX graph (``<stem>.onnx``) that takes BoxMOT's ImageNet-normalised
    crops (converted inside the graph when the model was trained with other
    statistics), with a ``<stem>.onnx.metadata.json`` sidecar naming the input size.
    When the deployed network is a torchreid backbone BoxMOT also has
    (``model.torchreid_name``, e.g. ``resnet50``, ``mobilenetv2_x1_0``) and was
    trained with ImageNet statistics, also ``<stem>.pt`` (``{'state_dict',
    'model_name', 'num_classes', ...}``, verified to load strictly into torchreid's
    model of that name) with its sidecar, for BoxMOT's PyTorch backend.

    Args:
        model: a reid_dhm model (aux branches are dropped).
        output: a path stem, or a file name ending in ``.onnx`` / ``.pt`` / ``.pth``.
        image_size: (H, W) the model was trained at (BoxMOT resizes crops to it).
        mean, std: the normalisation the model was trained with.

    Returns:
        ``{'onnx': path, 'pt': path or None, 'model_name', 'num_classes', 'img_size',
        'notes': [why a file was not written, ...], 'onnx_check': export_onnx report}``.
    """
    bare = unwrap(model)
    if not isinstance(bare, DHMNet):
        raise TypeError(f"export_boxmot needs a reid_dhm model, got {type(bare).__name__}")
    onnx_path, pt_path = boxmot_paths(output)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    h, w = (int(v) for v in image_size)
    name = bare.torchreid_name
    # BoxMOT's free-dimension override and our dynamic axis share the name "batch".
    check = export_onnx(
        bare, onnx_path, (h, w), opset, normalize=(mean, std),
        input_normalization=(BOXMOT_MEAN, BOXMOT_STD), atol=atol,
    )  # fmt: skip
    common = {
        "num_classes": int(bare.num_classes),
        "img_size": [h, w],
        "preprocess": "resize",
        "model_kwargs_schema_version": 1,
        "model_kwargs": {"img_size": [h, w]},
        "exporter": "reid-dhm",
    }
    onnx_meta = dict(common)
    if name is not None:
        onnx_meta["model_name"] = name
    else:
        onnx_meta.update(_contract_name(bare))
    _write_sidecar(onnx_path, onnx_meta)
    notes, written_pt = [], None
    if name is None:
        skip = ("num_classes", "branches")
        options = {k: v for k, v in bare.init_kwargs.items() if k not in skip}
        notes.append(
            f"no .pt: BoxMOT has no backbone with this network's layout ({type(bare).__name__} "
            f"{options}); its ONNX backend runs the exported graph"
        )
    elif _as_pairs((mean, std)) != _as_pairs((BOXMOT_MEAN, BOXMOT_STD)):
        notes.append(
            f"no .pt: the model was trained with mean {list(mean)} / std {list(std)}, but "
            "BoxMOT's PyTorch backend always feeds ImageNet statistics; the ONNX graph "
            "converts them"
        )
    else:
        written_pt = _write_boxmot_pt(bare, pt_path, name, common)
    return {
        "onnx": str(onnx_path),
        "pt": str(written_pt) if written_pt else None,
        "model_name": name,
        "num_classes": int(bare.num_classes),
        "img_size": [h, w],
        "notes": notes,
        "onnx_check": check,
    }


def _write_boxmot_pt(bare: DHMNet, path: Path, name: str, common: dict) -> Path:
    from torchreid.reid import models as torchreid_models

    state = {k: v.detach().cpu().clone() for k, v in bare.main_state_dict().items()}
    # The same check BoxMOT's loader makes (every non-classifier tensor covered), but
    # strict: torchreid's network of that name is BoxMOT's backbone of that name.
    reference = torchreid_models.build_model(name, bare.num_classes, pretrained=False)
    reference.load_state_dict(state, strict=True)
    payload = {"state_dict": state, "model_name": name, **common}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))
    _write_sidecar(path, {**common, "model_name": name})
    return path
