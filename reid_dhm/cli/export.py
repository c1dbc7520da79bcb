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
normalisation come from the checkpoint's stored preprocessing. It prints what was
written, the opset, the normalisation and the largest ONNX Runtime - PyTorch difference
found (--json: that report as JSON on stdout, for scripts).
"""

from __future__ import annotations

import argparse
import json
import sys

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
    p.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="onnx: one verified .onnx file; boxmot: the files BoxMOT's ReID backends load",
    )
    p.add_argument("--height", type=int, help="input height (default: the checkpoint's)")
    p.add_argument("--width", type=int, help="input width (default: the checkpoint's)")
    p.add_argument("--opset", type=int, default=18,
                   help="ONNX opset; older than 18 is refused (torch.onnx would silently write "
                   "18)")  # fmt: skip
    p.add_argument(
        "--bake-normalization",
        action="store_true",
        help="onnx: include (x - mean) / std in the graph: feed RGB in [0, 1]",
    )
    p.add_argument(
        "--atol",
        type=float,
        default=1e-4,
        help="largest |ONNX Runtime - PyTorch| difference allowed per embedding value, plus "
        "1e-3 x |value| (>= 0); a larger one writes nothing",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the export's report as JSON on stdout (the summary goes to stderr)",
    )
    return p


def export(args) -> None:
    """``export_checkpoint`` (the parser's destinations are its parameters)."""
    from ..export import TOLERANCE, check_opset
    from ..runs.export import export_checkpoint

    # The export's own checks, before the checkpoint is read and the model built.
    check_opset(args.opset)
    TOLERANCE.check(args.atol, "--atol")
    options = vars(args)
    as_json = options.pop("json")
    options["checkpoint"] = checkpoint_argument(args.checkpoint)
    # With --json, stdout holds the JSON alone.
    log = (lambda line: print(line, file=sys.stderr)) if as_json else print
    report = export_checkpoint(**options, log=log)
    if as_json:
        print(json.dumps(report, indent=1))


def main(argv=None, prog: str | None = None) -> int:
    return run_guarded(export, build_parser(prog).parse_args(argv))
