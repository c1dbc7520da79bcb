#!/usr/bin/env python
"""Export a trained model's deployed (main-branch) network to ONNX, verified with ONNX Runtime.

    python tools/export.py --checkpoint log/.../checkpoint.pth --output reid.onnx
    python tools/export.py --checkpoint CKPT --output reid.onnx --bake-normalization

The file is only written when ONNX Runtime's embeddings match PyTorch's (several batch
sizes); the input size and normalisation come from the checkpoint's config.
"""

from __future__ import annotations

import argparse
import json
import sys

from common import run_guarded


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--output", required=True, help="the .onnx file to write")
    p.add_argument("--height", type=int, help="input height (default: the training config's)")
    p.add_argument("--width", type=int, help="input width (default: the training config's)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument(
        "--bake-normalization",
        action="store_true",
        help="include (x - mean) / std in the graph: feed RGB in [0, 1]",
    )
    p.add_argument("--atol", type=float, default=1e-4)
    args = p.parse_args(argv)
    return run_guarded(export, args)


def export(args) -> None:
    from reid_dhm.export import export_onnx
    from reid_dhm.utils.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    data = (ckpt.get("config") or {}).get("data") or {}
    size = (args.height or data.get("height", 256), args.width or data.get("width", 128))
    norm = None
    if args.bake_normalization:
        norm = (
            data.get("norm_mean", [0.485, 0.456, 0.406]),
            data.get("norm_std", [0.229, 0.224, 0.225]),
        )
    report = export_onnx(
        model_from_checkpoint(ckpt), args.output, size, args.opset, norm, atol=args.atol
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    sys.exit(main())
