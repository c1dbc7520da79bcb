"""Atomic file writes: a crash mid-write never leaves a half-written or lost file.

A write that fails because the disk is full or read-only becomes one
:class:`OutputError` line naming the path (and, for a full disk, the bytes it needed),
with the old file intact and no temporary file left behind.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import shutil
import tempfile
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

# Errors that mean "this file system has no room for the write".
_FULL = (errno.ENOSPC, errno.EDQUOT)
# Errors that mean "this place cannot be written at all".
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)


class OutputError(OSError):
    """A file or folder could not be written (full disk, no permission, read-only file
    system, a file where a folder should be): one line naming the path.

    ``str()`` is the message alone (no ``[Errno n]`` prefix); ``errno`` is kept.
    """

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.errno = code


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _errno_in_chain(err: BaseException) -> int | None:
    """The errno of ``err`` or of an exception it was raised from / during."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            return err.errno
        err = err.__cause__ or err.__context__
    return None


def _size_text(n: int) -> str:
    return f"{n:,} bytes ({n / 2**20:.1f} MiB)"


def _disk_full_error(path: Path, err: BaseException, needed: Callable[[], int] | None):
    """An ``OutputError`` when ``err`` came from a full file system, else None.

    torch's writer reports a full disk as "unexpected pos ..." without an errno, so the
    free space is compared with what the write needs (``needed()``) as well.
    """
    code = _errno_in_chain(err)
    if code in _DENIED:
        return OutputError(code, f"cannot write {path}: {os.strerror(code)}")
    # torch's writer, referenced from the traceback, still holds the deleted temporary
    # file open (its space is not free until it is closed).
    chained = err
    while chained is not None:
        traceback.clear_frames(chained.__traceback__)
        chained = chained.__cause__ or chained.__context__
    gc.collect()
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    size = needed() if needed is not None else None
    full = code in _FULL or (size is not None and size > free)
    if not full:
        return None
    need = f"it needs {_size_text(size)}, " if size is not None else ""
    return OutputError(
        errno.ENOSPC,
        f"no space left on the device to write {path}: {need}{_size_text(free)} free there; "
        f"the file was not replaced (the earlier {path.name}, if any, is intact); free some "
        "space or choose another --output-dir",
    )


def _reraise_as_output_error(path: Path, err: BaseException, needed) -> None:
    """Raise the one-line ``OutputError`` when ``err`` means a full or read-only disk."""
    output_error = _disk_full_error(path, err, needed)
    if output_error is not None:
        raise output_error from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, needed: Callable[[], int] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The old file stays intact until the new one is complete (``os.replace`` on the same
    file system); on an exception the temporary file is removed and ``path`` untouched.
    A full or read-only file system raises :class:`OutputError` naming ``path``;
    ``needed()`` (called only then) gives the bytes the write needs, for the message.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        _reraise_as_output_error(path, err, needed)
        raise
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        try:
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        except Exception as err:
            tmp.unlink(missing_ok=True)  # before measuring the free space
            _reraise_as_output_error(path, err, needed)
            raise
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path, needed=lambda: len(text.encode())) as tmp:
        tmp.write_text(text)


def atomic_write(
    path: str | os.PathLike, writer: Callable[[Path], None], needed: Callable[[], int] | None = None
) -> None:
    """Call ``writer(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path, needed) as tmp:
        writer(tmp)


class _CountingSink:
    """A write-only file object that keeps only the number of bytes written."""

    def __init__(self):
        self.size = 0

    def write(self, data) -> int:
        n = memoryview(data).nbytes
        self.size += n
        return n

    def flush(self) -> None:
        pass


def torch_size(obj) -> int:
    """The bytes ``torch.save(obj, path)`` writes (serialised again, nothing kept)."""
    import torch

    sink = _CountingSink()
    torch.save(obj, sink)
    return sink.size


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` atomically; a full disk is one line with the bytes needed."""
    import torch

    atomic_write(path, lambda tmp: torch.save(obj, tmp), needed=lambda: torch_size(obj))


def check_output_dir(folder: str | os.PathLike, option: str = "--output-dir") -> Path:
    """Make sure ``folder`` is (or can become) a folder this process can write into.

    Called before any work, so a bad output folder fails at once, not after an hour of
    embedding. Creates the folder.

    Raises:
        OutputError: one line naming ``option`` and the path at fault.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(errno.ENOTDIR, f"{option} {folder} is a file, not a folder")
    blocker = next((p for p in folder.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(
            errno.ENOTDIR, f"{option} {folder}: {blocker} is a file, so no folder can be made there"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real write: os.access says yes to root on a read-only mount.
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = os.strerror(err.errno) if err.errno else str(err)
        raise OutputError(
            err.errno or errno.EACCES, f"{option} {folder} cannot be written: {reason}"
        ) from None
    return folder


__all__ = [
    "OutputError",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "check_output_dir",
    "torch_size",
]


def yaml_text(data: Mapping) -> str:
    """A nested mapping as block YAML in its own key order (paths and tuples as plain
    YAML), e.g. a run's ``config.yaml``: in ``utils/`` so that ``runs/`` writes its
    config without importing the config layer above it."""
    return yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=None)


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
