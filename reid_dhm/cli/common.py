"""What every command shares: one-line errors and exit statuses."""

from __future__ import annotations

import argparse
import os
import sys

from ..config import ConfigError
from ..runs.errors import RunStopped, UsageError, error_line


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
    "RunStopped",
    "UsageError",
    "doc_parser",
    "error_line",
    "fail",
    "run_guarded",
]
