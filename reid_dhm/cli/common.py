"""What every command shares: the --help layout, one-line errors and exit statuses."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from ..config import ConfigError
from ..runs.errors import RunStopped, UsageError, error_line
from ..utils.io import OutputError

# The --device option's help, one text for every command that has it.
DEVICE_HELP = (
    "where the network runs: auto (CUDA when torch sees one, else CPU), cpu, cuda, cuda:1 ..."
)


def show_default(value) -> str | None:
    """How ``--help`` writes an option's default, or None when it has nothing to show.

    None (no default: the help says what applies instead) and False (an off switch)
    show nothing; a list is written as it is typed (``1 5 10``).
    """
    if value is None or value is False or value is argparse.SUPPRESS:
        return None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every option's default (argparse's ``ArgumentDefaultsHelpFormatter``
    rule), minus the noise: no "(default: None)" / "(default: False)", nothing added
    where the help already names its default, and the description laid out as written."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = show_default(action.default)
        if shown is None or "default" in text:
            return text
        return f"{text} (default: {shown.replace('%', '%%')})"

    def _split_lines(self, text, width):
        # argparse's own wrapping, but a value such as "reid-data" is never split at its
        # hyphen (a user copies it as it is printed).
        return textwrap.wrap(self._whitespace_matcher.sub(" ", text).strip(), width,
                             break_on_hyphens=False)  # fmt: skip


def doc_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command: its description is ``doc``'s first line, its epilog
    the rest from the third line on, laid out as written (a module docstring's usage
    examples); ``--help`` shows each option's default (``HelpFormatter``)."""
    lines = doc.splitlines()
    return argparse.ArgumentParser(
        prog=prog,
        description=lines[0],
        formatter_class=HelpFormatter,
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
    except BrokenPipeError:  # stdout closed early (`reid-dhm ... | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush traceback
        return 141  # 128 + SIGPIPE, what a shell reports for such a pipe
    except USER_ERRORS as err:
        if os.environ.get("REID_DHM_DEBUG"):
            raise
        return fail(error_line(err))
    return 0


__all__ = [
    "DEVICE_HELP",
    "USER_ERRORS",
    "ConfigError",
    "checkpoint_argument",
    "newest_checkpoint",
    "RunStopped",
    "UsageError",
    "HelpFormatter",
    "doc_parser",
    "error_line",
    "fail",
    "run_guarded",
    "show_default",
]
