"""``reid-dhm export`` as a library call: a checkpoint's deployed model to ONNX or BoxMOT.

The model is rebuilt from the checkpoint and its input size and normalisation come
from the checkpoint's stored preprocessing; :func:`reid_dhm.export.export_onnx` /
:func:`~reid_dhm.export.export_boxmot` do the export and its verification.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path

# What ``export_checkpoint`` writes: one verified .onnx, or the files BoxMOT loads.
FORMATS = ("onnx", "boxmot")


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    *,
    format: str = "onnx",
    height: int | None = None,
    width: int | None = None,
    opset: int = 18,
    bake_normalization: bool = False,
    atol: float = 1e-4,
    log: Callable[[str], object] = print,
) -> dict:
    """Export ``checkpoint``'s deployed (main-branch) network; log and return the report.

    Args:
        checkpoint: a reid_dhm checkpoint.
        output: ``onnx``: the .onnx file; ``boxmot``: a path stem (a .onnx / .pt / .pth
            suffix is replaced by the files' own).
        format: one of :data:`FORMATS`.
        height, width: input size; None = the checkpoint's.
        opset: ONNX opset; atol: allowed |ONNX Runtime - PyTorch| difference.
        bake_normalization: ``onnx`` only: include (x - mean) / std in the graph.
        log: where the notes and the JSON report go.

    Returns:
        ``export_onnx``'s or ``export_boxmot``'s report.
    """
    from ..data.preprocessing import Preprocessing
    from ..export import export_boxmot, export_onnx
    from ..models.checkpoint import model_from_checkpoint
    from ..utils.checkpoint import load_checkpoint

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats are {list(FORMATS)}")
    check_output_file(output)  # before the model is built and traced
    ckpt = load_checkpoint(checkpoint)
    pre = Preprocessing.from_checkpoint(ckpt)
    # None means the checkpoint's size; 0 or a negative size is refused by the export.
    size = (pre.height if height is None else height, pre.width if width is None else width)
    model = model_from_checkpoint(ckpt)
    if format == "boxmot":
        if bake_normalization:
            raise ValueError(
                "--bake-normalization is for --format onnx; BoxMOT feeds ImageNet-normalised "
                "crops, which the boxmot export converts itself"
            )
        report = export_boxmot(model, output, size, pre.mean, pre.std, opset, atol)
        for note in report["notes"]:
            log(f"note: {note}")
        log(json.dumps({k: v for k, v in report.items() if k != "notes"}, indent=1))
        return report
    norm = (pre.mean, pre.std) if bake_normalization else None
    report = export_onnx(model, output, size, opset, norm, atol=atol)
    log(json.dumps(report, indent=1))
    return report


def check_output_file(output: str | os.PathLike) -> None:
    """``--output`` names a file in a folder this process can write: one line if not."""
    from ..utils.io import OutputError, check_output_dir

    path = Path(output)
    if path.is_dir():
        raise OutputError(
            errno.EISDIR, f"--output {path} is a folder; give a file name (e.g. {path}/reid.onnx)"
        )
    check_output_dir(path.absolute().parent, f"--output {path}: its folder")


__all__ = ["FORMATS", "check_output_file", "export_checkpoint"]
