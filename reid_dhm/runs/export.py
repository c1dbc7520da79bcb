"""``reid-dhm export`` as a library call: a checkpoint's deployed model to ONNX or BoxMOT.

The model is rebuilt from the checkpoint and its input size and normalisation come
from the checkpoint's stored preprocessing; :func:`reid_dhm.export.export_onnx` /
:func:`~reid_dhm.export.export_boxmot` do the export and its verification.
"""

from __future__ import annotations

import errno
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
    """Export ``checkpoint``'s deployed (main-branch) network; log what was written (in
    words, :func:`describe_export`) and return the report.

    Args:
        checkpoint: a reid_dhm checkpoint.
        output: ``onnx``: the .onnx file; ``boxmot``: a path stem (a .onnx / .pt / .pth
            suffix is replaced by the files' own).
        format: one of :data:`FORMATS`.
        height, width: input size; None = the checkpoint's.
        opset: ONNX opset; atol: allowed |ONNX Runtime - PyTorch| difference.
        bake_normalization: ``onnx`` only: include (x - mean) / std in the graph.
        log: where the notes and the summary go.

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
    else:
        norm = (pre.mean, pre.std) if bake_normalization else None
        report = export_onnx(model, output, size, opset, norm, atol=atol)
        report["model_normalization"] = _as_lists(pre.mean, pre.std)
    log(describe_export(report))
    return report


def _as_lists(mean, std) -> dict:
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _check_line(check: dict) -> str:
    batches = " and ".join(str(b) for b in check["checked_batches"])
    return (
        f"  checked: max |ONNX Runtime - PyTorch| = {check['max_abs_diff']:.2g} on batches of "
        f"{batches} (allowed {check['atol']:g} + {check['rtol']:g} x |value|)"
    )


def describe_export(report: dict) -> str:
    """What an export wrote, where, its opset, input, normalisation and check, in words.

    Args:
        report: ``export_checkpoint``'s (``export_onnx``'s, or ``export_boxmot``'s).
    """
    boxmot = "onnx_check" in report
    check = report["onnx_check"] if boxmot else report
    _, _, _, h, w = check["input"]
    output = f"  output: embeddings (batch, {check['embedding_dim']}) float32"
    if not boxmot:
        norm = check["normalization"]
        stats = report.get("model_normalization")
        if not check["normalization_baked_in"] and stats:
            norm += f":\n                 mean {stats['mean']}, std {stats['std']}"
        return "\n".join([
            f"wrote {check['path']} ({_size(check['bytes'])}, ONNX opset {check['opset']})",
            f"  input:  images (batch, 3, {h}, {w}) float32", output,
            f"  normalization: {norm}", _check_line(check),
        ])  # fmt: skip
    onnx, pt = Path(report["onnx"]), report["pt"] and Path(report["pt"])
    lines = [
        f"wrote for BoxMOT (ONNX opset {check['opset']}):",
        f"  {onnx} ({_size(check['bytes'])}) + {onnx.name}.metadata.json: its ONNX backend",
    ]
    if pt:
        lines.append(
            f"  {pt} + {pt.name}.metadata.json: torchreid {report['model_name']} weights, its "
            "PyTorch backend"
        )
    norm = (
        "baked into the graph: BoxMOT's ImageNet-normalised crops are converted to the "
        "model's mean / std"
        if check["normalization_baked_in"]
        else "the model's mean / std are BoxMOT's (ImageNet), nothing baked"
    )
    lines += [
        f"  input:  BoxMOT's crops, resized to {h}x{w} (the sidecars' img_size), "
        "ImageNet-normalised",
        output,
        f"  normalization: {norm}",
        _check_line(check),
    ]
    return "\n".join(lines + [f"note: {note}" for note in report["notes"]])


def check_output_file(output: str | os.PathLike) -> None:
    """``--output`` names a file in a folder this process can write: one line if not."""
    from ..utils.io import OutputError, check_output_dir

    path = Path(output)
    if path.is_dir():
        raise OutputError(
            errno.EISDIR, f"--output {path} is a folder; give a file name (e.g. {path}/reid.onnx)"
        )
    check_output_dir(path.absolute().parent, f"--output {path}: its folder")


__all__ = ["FORMATS", "check_output_file", "describe_export", "export_checkpoint"]
