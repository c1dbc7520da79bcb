"""Export a trained model's deployed (main-branch) network: ONNX, or files BoxMOT loads.

    python tools/export.py --checkpoint log/.../checkpoint.pth --output reid.onnx
    python tools/export.py --checkpoint CKPT --output reid.onnx --bake-normalization
    python tools/export.py --checkpoint CKPT --format boxmot --output exports/reid_mobilenetv2

--format onnx: one .onnx file, written only when ONNX Runtime's embeddings match
PyTorch's (several batch sizes). --format boxmot: what BoxMOT's ReID backends load as
they are, with no renaming or key surgery: <stem>.onnx with a <stem>.onnx.metadata.json
sidecar (input size; the graph takes BoxMOT's ImageNet-normalised crops), and, when
BoxMOT has a backbone of the same layout (torchreid resnet* / mobilenetv2_x1_0 ...),
<stem>.pt with its sidecar (never .pth, which BoxMOT refuses). The input size and
normalisation come from the checkpoint's stored preprocessing.
"""

from __future__ import annotations

import argparse
import json

from .common import run_guarded

FORMATS = ("onnx", "boxmot")


def main(argv=None, prog: str | None = None) -> int:
    p = argparse.ArgumentParser(
        prog=prog,
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[2:]),
    )
    p.add_argument("--checkpoint", required=True)
    p.add_argument(
        "--output",
        required=True,
        help="onnx: the .onnx file; boxmot: a path stem (a .onnx / .pt / .pth suffix is "
        "replaced by the files' own)",
    )
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--height", type=int, help="input height (default: the checkpoint's)")
    p.add_argument("--width", type=int, help="input width (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--bake-normalization",
        action="store_true",
        help="onnx: include (x - mean) / std in the graph: feed RGB in [0, 1]",
    )
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args(argv)
    return run_guarded(export, args)


def export(args) -> None:
    from ..data.preprocessing import Preprocessing
    from ..export import export_boxmot, export_onnx
    from ..utils.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    pre = Preprocessing.from_checkpoint(ckpt)
    size = (args.height or pre.height, args.width or pre.width)
    model = model_from_checkpoint(ckpt)
    if args.format == "boxmot":
        if args.bake_normalization:
            raise ValueError(
                "--bake-normalization is for --format onnx; BoxMOT feeds ImageNet-normalised "
                "crops, which the boxmot export converts itself"
            )
        report = export_boxmot(model, args.output, size, pre.mean, pre.std, args.opset, args.atol)
        for note in report["notes"]:
            print(f"note: {note}")
        print(json.dumps({k: v for k, v in report.items() if k != "notes"}, indent=1))
        return
    norm = (pre.mean, pre.std) if args.bake_normalization else None
    report = export_onnx(model, args.output, size, args.opset, norm, atol=args.atol)
    print(json.dumps(report, indent=1))
