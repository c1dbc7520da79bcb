"""How a run ends early on purpose: user mistakes and explained stops (one line each)."""

from __future__ import annotations


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""


class RunStopped(Exception):
    """A run that ends early on purpose or after a failure it explains: one line, ``code``.

    ``signum`` is the stop signal that ended it (None for a failure it explains).
    """

    def __init__(self, message: str, code: int, signum: int | None = None):
        super().__init__(message)
        self.code = code
        self.signum = signum


def error_line(err: BaseException) -> str:
    """The one line that says what went wrong.

    An error raised in a DataLoader worker process comes back re-raised by torch as
    ``Caught ValueError in DataLoader worker process 0.`` followed by the worker's
    ``Original Traceback``; the worker's own message (naming, e.g., the unreadable
    image) is the traceback's last line.
    """
    text = str(err).strip()
    if not text:
        return type(err).__name__
    lines = text.splitlines()
    if "Original Traceback" in text:
        last = next((line.strip() for line in reversed(lines) if line.strip()), lines[0])
        name, sep, message = last.partition(": ")
        # "ValueError: cannot read image ...": the exception type adds nothing for a user.
        return message if sep and name.isidentifier() else last
    return lines[0]


__all__ = ["RunStopped", "UsageError", "error_line"]
