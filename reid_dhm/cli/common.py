"""What every command shares: one-line errors and exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..runs.errors import RunStopped, UsageError, error_line
from ..utils.io import OutputError


def doc_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """A parser whose description is ``doc``'s first line and whose epilog is the rest
    from the third line on, laid out as written (a module docstring's usage examples)."""
    lines = doc.splitlines()
    return argparse.ArgumentParser(
        prog=prog,
        description=lines[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[2:]),
    )


def newest_checkpoint(folder: Path, option: str, say: Callable = print) -> Path:
    """The newest valid checkpoint of the run folder ``folder`` (``checkpoint.pth``, else
    ``checkpoint.prev.pth``; a damaged one is skipped with a warning through ``say``):
    the one lookup behind every option that takes a run folder. ``option`` names the
    option in the one-line error when the folder holds none."""
    from ..runs.folders import CHECKPOINT_NAMES, find_resume_checkpoint

    found = find_resume_checkpoint(folder, warn=lambda m: say(m, file=sys.stderr))
    if found is None:
        raise UsageError(
            f"{option} {folder}: that folder holds no readable checkpoint "
            f"({' / '.join(CHECKPOINT_NAMES)})"
        )
    return found


def checkpoint_argument(path: str, option: str = "--checkpoint") -> str:
    """A checkpoint option's value: a file as given, or a run folder's newest checkpoint.

    The choice is said on stderr, so that stdout keeps only the command's results.
    """
    if not Path(path).is_dir():
        return path
    found = newest_checkpoint(Path(path), option)
    print(f"=> {option} {path}: using {found}", file=sys.stderr)
    return str(found)


def fail(message: str, status: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


# What a user can cause: reported as one line, exit status 2 (REID_DHM_DEBUG=1 re-raises).
USER_ERRORS = (UsageError, ConfigError, FileNotFoundError, ValueError, ImportError)


def run_guarded(body, *args) -> int:
    """Run a tool's body; a user error becomes ``error: <one line>`` and exit status 2.

    ``RunStopped`` prints its line with its own status (128 + signal for a stop signal);
    a Ctrl-C outside training (loading, evaluation) is one line and status 130 instead
    of a traceback.
    """
    try:
        body(*args)
    except RunStopped as stop:
        print(str(stop), file=sys.stderr)
        return stop.code
    except OutputError as err:  # a full, read-only or misnamed output place
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail(str(err), 1)
    except KeyboardInterrupt:
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail("interrupted (SIGINT); nothing half-written was left behind", 130)
    except USER_ERRORS as err:
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail(error_line(err))
    return 0


__all__ = [
    "USER_ERRORS",
    "ConfigError",
    "checkpoint_argument",
    "newest_checkpoint",
    "RunStopped",
    "UsageError",
    "doc_parser",
    "error_line",
    "fail",
    "run_guarded",
]
