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

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .models import DHMNet
from .utils.checkpoint import unwrap
from .utils.io import atomic_path


class NormalizedInput(nn.Module):
    """``model((x - mean) / std)``: takes RGB images in [0, 1], shape (B, 3, H, W)."""

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


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
) -> dict:
    """Export ``model.deploy()`` to ONNX at ``path``, verified with ONNX Runtime.

    Args:
        model: a reid_dhm model (aux branches are dropped by ``deploy()``).
        image_size: (H, W) of the example input; the batch size stays dynamic.
        opset: ONNX opset version.
        normalize: optional (mean, std) baked into the graph (input RGB in [0, 1]).
        check_batches: batch sizes run through ONNX Runtime and PyTorch for comparison.
        atol, rtol: allowed difference, elementwise ``|ort - torch| <= atol + rtol |torch|``.

    Returns:
        ``{'path', 'max_abs_diff', 'opset', 'input', 'output', 'embedding_dim', 'bytes'}``.

    Raises:
        ValueError: ONNX Runtime's outputs differ from PyTorch's beyond the tolerance
            (the target file is not written).
    """
    ort = _require_onnx()
    bare = unwrap(model)
    if not isinstance(bare, DHMNet):
        raise TypeError(f"export_onnx needs a reid_dhm model, got {type(bare).__name__}")
    net = bare.deploy().cpu().float().eval()
    if normalize is not None:
        net = NormalizedInput(net, *normalize).eval()
    h, w = image_size
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
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        worst = 0.0
        for b in check_batches:
            x = torch.rand(b, 3, h, w, generator=gen)
            if normalize is None:
                x = (x - 0.45) / 0.225  # roughly what normalised images look like
            with torch.no_grad():
                ref = net(x).numpy()
            got = session.run(["embeddings"], {"images": x.numpy()})[0]
            if got.shape != ref.shape:
                raise ValueError(
                    f"ONNX output shape {got.shape} != PyTorch {ref.shape} (batch {b})"
                )
            diff = np.abs(got - ref)
            worst = max(worst, float(diff.max()))
            if not np.all(diff <= atol + rtol * np.abs(ref)):
                raise ValueError(
                    f"the ONNX export differs from PyTorch: max |diff| {diff.max():.3g} at batch "
                    f"{b} (allowed {atol:g} + {rtol:g} |x|); {path} was not written"
                )
        dim = int(ref.shape[1])
    return {
        "path": str(path),
        "max_abs_diff": worst,
        "opset": opset,
        "input": ["images", "batch", 3, h, w],
        "output": ["embeddings", "batch", dim],
        "embedding_dim": dim,
        "bytes": path.stat().st_size,
        "normalization_baked_in": normalize is not None,
    }
