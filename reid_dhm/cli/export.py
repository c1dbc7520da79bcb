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

from ..runs.export import FORMATS
from .common import checkpoint_argument, doc_parser, run_guarded


# The docstring is the --help text; the work is reid_dhm.runs.export.export_checkpoint.
def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = doc_parser(__doc__, prog)
    p.add_argument(
        "--checkpoint", required=True, help="a checkpoint, or a run folder (its newest valid one)"
    )
    p.add_argument(
        "--output",
        required=True,
        help="onnx: the .onnx file; boxmot: a path stem (a .onnx / .pt / .pth suffix is "
        "replaced by the files' own)",
    )
    p.add_argument("--format", choices=FORMATS, default="onnx")
    p.add_argument("--height", type=int, help="input height (default: the checkpoint's)")
    p.add_argument("--width", type=int, help="input width (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (older ones are refused)")
    p.add_argument(
        "--bake-normalization",
        action="store_true",
        help="onnx: include (x - mean) / std in the graph: feed RGB in [0, 1]",
    )
    p.add_argument(
        "--atol", type=float, default=1e-4, help="allowed |ONNX Runtime - PyTorch| (>= 0)"
    )
    return p


def export(args) -> None:
    """``export_checkpoint`` (the parser's destinations are its parameters)."""
    from ..export import TOLERANCE, check_opset
    from ..runs.export import export_checkpoint

    # The export's own checks, before the checkpoint is read and the model built.
    check_opset(args.opset)
    TOLERANCE.check(args.atol, "--atol")
    args.checkpoint = checkpoint_argument(args.checkpoint)
    export_checkpoint(**vars(args))


def main(argv=None, prog: str | None = None) -> int:
    return run_guarded(export, build_parser(prog).parse_args(argv))
