"""The ``reid-dhm`` command: ``reid-dhm train|test|retrieve|export|summary|study [options]``.

Each subcommand lives in its own module here (``reid_dhm.cli.train`` ...) with a
``main(argv, prog)``; ``tools/*.py`` in a checkout are two-line wrappers around the same
functions. This is the only layer that reads the command line and configuration files;
nothing else in ``reid_dhm`` imports it.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line summary)
COMMANDS = {
    "train": ("train", "train (or evaluate) a DHM model on a re-ID or classification data set"),
    "test": ("test", "evaluate a checkpoint on a re-ID query/gallery split (mAP, CMC, mINP)"),
    "retrieve": ("retrieve", "rank a gallery folder or saved index for query images"),
    "export": ("export", "export the deployed model: ONNX, or files BoxMOT loads as they are"),
    "summary": ("summary", "per-branch parameters and FLOPs, training vs deployed"),
    "study": ("study", "multi-seed study of variants (local pool or Ray) with paired intervals"),
}


def usage() -> str:
    from .. import __version__

    lines = [
        f"usage: reid-dhm COMMAND [options]      (reid-dhm {__version__})",
        "",
        "Person re-identification with Dynamic Hierarchical Mimicking.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<10}{text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "'reid-dhm COMMAND --help' shows a command's options."]
    return "\n".join(lines)


def main(argv=None) -> int:
    """Run ``reid-dhm`` with ``argv`` (default: the process's arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        from .. import __version__

        print(f"reid-dhm {__version__}")
        return 0
    command = argv[0]
    if command not in COMMANDS:
        print(
            f"reid-dhm: unknown command {command!r}; valid commands are {', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(f"{__name__}.{COMMANDS[command][0]}")
    return module.main(argv[1:], prog=f"reid-dhm {command}")


__all__ = ["COMMANDS", "main"]
