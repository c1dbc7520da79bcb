"""Image files in, upright 8-bit RGB images out: the one reader of every image file.

Training and evaluation (the re-ID data sets' ``__getitem__``, ImageNet folders),
``FeatureExtractor`` (and so ``retrieve``) and the pictures of the reports read files
with :func:`read_image`; the re-ID data sets check every file once at load time with
:func:`inspect_image`. Both

* refuse an image over ``max_pixels`` pixels from its header, before any decoding,
  with a message naming the file and its size (PIL's decompression-bomb guard, as an
  explicit argument: ``data.max_image_pixels``);
* (:func:`read_image`) apply the EXIF orientation, since phone crops are stored
  sideways with a tag that says so, and convert every mode to 8-bit RGB (16-bit grey
  is scaled, not saturated to white).

The load-time check parses the header and looks for the JPEG / PNG end marker, which
a file cut short lacks. Only PIL and numpy are imported: no torch.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .options import DEFAULT_MAX_IMAGE_PIXELS

# What PIL raises for a file it cannot read (SyntaxError: some broken headers;
# DecompressionBombError: frames of multi-frame formats, checked while decoding).
UNREADABLE = (
    UnidentifiedImageError,
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)
# Above PIL's own limit an allowed image earns a warning naming it (it costs memory).
LARGE_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
EXIF_ORIENTATION = 0x0112
# MPO: a phone's JPEG with more pictures appended; PIL reads the first.
JPEG_FORMATS = ("JPEG", "MPO")
# Integer grey modes: 16-bit PNGs open as I;16, older Pillows and TIFFs give I.
WIDE_GREY = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# The end marker of a complete file is normally in its last bytes: one small read.
TAIL_BYTES = 32
SEARCH_BLOCK = 1 << 16

# For pictures of files a run has already read under its own limit (report tiles).
NO_PIXEL_LIMIT = sys.maxsize

# PIL's guard is a module global; it is swapped while a header is read (below), and
# the lock keeps two threads of this process from restoring each other's value.
_PIL_LIMIT_LOCK = threading.Lock()


def _new_lock_after_fork() -> None:
    # A loader worker forked while another thread held the lock would wait forever.
    global _PIL_LIMIT_LOCK
    _PIL_LIMIT_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock_after_fork)


class ImageTooLarge(ValueError):
    """An image file whose header gives more pixels than the limit."""


@contextlib.contextmanager
def open_image(path: str | os.PathLike, max_pixels: int) -> Iterator[Image.Image]:
    """``Image.open(path)`` (header read, pixels not decoded), refusing > ``max_pixels``.

    PIL's own guard warns (naming no file) above ``Image.MAX_IMAGE_PIXELS`` and raises
    above twice that, before the size is known to the caller; it is lifted for the
    header read so that ``max_pixels`` alone decides, with the size in the message.
    (Only for the header read, microseconds; another thread's own ``Image.open`` in
    that window would run unguarded. Images this package opens are all checked here.)
    """
    with _PIL_LIMIT_LOCK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    with img:
        w, h = img.size
        if w * h > max_pixels:
            raise ImageTooLarge(
                f"too large: {w}x{h} = {w * h:,} pixels, over max_image_pixels {max_pixels:,}"
            )
        yield img


def large_image_note(path, size: tuple[int, int], max_pixels: int) -> str:
    """The warning for an allowed image over PIL's own limit."""
    w, h = size
    return (
        f"large image {path}: {w}x{h} = {w * h:,} pixels, over PIL's decompression-bomb "
        f"limit {LARGE_IMAGE_PIXELS:,}; read because max_image_pixels is {max_pixels:,}"
    )


def read_image(
    path: str | os.PathLike,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    warn_large: bool = True,
) -> Image.Image:
    """The image file at ``path`` as upright 8-bit RGB, or one error naming the file.

    Args:
        max_pixels: larger images are refused (``ValueError``) before decoding.
        warn_large: warn, naming the file, when an allowed image is over PIL's own
            limit (the re-ID data sets warn once at load and read with False).

    Raises:
        FileNotFoundError: no such file; ValueError: unreadable, cut short or too large.
    """
    try:
        with open_image(path, max_pixels) as img:
            if warn_large and img.width * img.height > LARGE_IMAGE_PIXELS:
                warnings.warn(large_image_note(path, img.size, max_pixels), stacklevel=2)
            img.load()
            return to_rgb(img)
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except UNREADABLE as err:
        raise ValueError(f"cannot read image {path}: {first_line(err)}") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """``img`` upright (EXIF orientation applied) as 8-bit RGB (``img`` itself if it is).

    Integer grey (16-bit ``I;16``, ``I``) is scaled from 0-65535 to 0-255; palette
    transparency and alpha are dropped, the colour values kept (not composited);
    ``F`` follows PIL (0-255, clipped); ``1``, ``L``, ``CMYK``, ``YCbCr`` convert as PIL does.
    """
    if exif_orientation(img) in range(2, 9):
        img = ImageOps.exif_transpose(img)
    if img.mode == "RGB":
        return img  # the common case: no copy
    if img.mode in WIDE_GREY:
        return Image.fromarray(grey_to_8bit(np.asarray(img)), "L").convert("RGB")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")  # PIL asks palettes with transparency to go through RGBA
    return img.convert("RGB")


def exif_orientation(img: Image.Image) -> int:
    """The EXIF Orientation tag (1 = upright, 2-8 = flipped / rotated); 1 when absent."""
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # noqa: BLE001 - a damaged EXIF block must not make pixels unreadable
        return 1


def grey_to_8bit(values: np.ndarray) -> np.ndarray:
    """0-65535 integer grey -> 0-255 uint8, rounded (65535 -> 255, 32768 -> 128)."""
    wide = np.clip(values, 0, 65535).astype(np.uint32)
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def first_line(err: BaseException) -> str:
    """An exception's message, first line only (its type's name if empty)."""
    return str(err).split("\n")[0] or type(err).__name__


def inspect_image(
    path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
) -> tuple[str | None, tuple[int, int] | None]:
    """(why ``path`` cannot be read as an image, or None; its (width, height) if known).

    The header is parsed and the size checked; a JPEG or PNG must hold its end marker
    (JPEG EOI, PNG IEND), which a half-written file (a copy or download cut short)
    lacks; other formats are decoded in full. Bytes after the end marker are allowed.
    """
    try:
        with open_image(path, max_pixels) as img:
            fmt, size = img.format, img.size
            if fmt not in JPEG_FORMATS + ("PNG",):
                img.load()
    except ImageTooLarge as err:
        return str(err), None
    except UNREADABLE as err:
        return first_line(err), None
    with open(path, "rb") as f:
        if fmt in JPEG_FORMATS and not jpeg_complete(f):
            return "truncated (no JPEG end marker)", size
        if fmt == "PNG" and not png_complete(f):
            return "truncated (no PNG end chunk)", size
    return None, size


def image_problem(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS):
    """Why ``path`` cannot be read as an image, or None (:func:`inspect_image`)."""
    return inspect_image(path, max_pixels)[0]


def _tail(f, n: int) -> bytes:
    size = f.seek(0, 2)
    f.seek(max(0, size - n))
    return f.read()


def jpeg_complete(f) -> bool:
    """Whether the JPEG in ``f`` has its end marker (EOI, FF D9) after its first scan.

    Mostly the marker is in the last bytes. Otherwise (bytes appended after it, or a
    file cut short) the file is searched backwards down to the start of the first scan:
    an EXIF thumbnail ends with its own EOI, so a marker before the scan proves nothing,
    while inside entropy-coded data FF is never followed by D9.
    """
    if b"\xff\xd9" in _tail(f, TAIL_BYTES):
        return True
    start = jpeg_scan_start(f)
    return start is not None and _found_backwards(f, b"\xff\xd9", start)


def jpeg_scan_start(f) -> int | None:
    """Offset where the first scan's entropy-coded data starts, or None (no scan)."""
    f.seek(2)  # after SOI
    while True:
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte before a marker
            f.seek(-3, 1)
        elif marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            f.seek(-2, 1)
        elif marker == 0xDA:  # SOS: its header, then the data
            return f.tell() - 2 + int.from_bytes(head[2:], "big")
        else:
            f.seek(int.from_bytes(head[2:], "big") - 2, 1)


def _found_backwards(f, marker: bytes, start: int) -> bool:
    """Whether ``marker`` occurs at or after offset ``start``, read in blocks from the end."""
    end = f.seek(0, 2)
    while end > start:
        low = max(start, end - SEARCH_BLOCK)
        f.seek(low)
        # Overlap by the marker's length less one, for a marker across two blocks.
        if marker in f.read(end - low + len(marker) - 1):
            return True
        end = low
    return False


def png_complete(f) -> bool:
    """Whether the PNG in ``f`` has its IEND chunk: in the last bytes, or found by
    walking the chunks (lengths and types only) when bytes follow it."""
    if b"IEND" in _tail(f, TAIL_BYTES):
        return True
    size, pos = f.seek(0, 2), 8  # after the signature
    while pos + 8 <= size:
        f.seek(pos)
        head = f.read(8)
        if head[4:] == b"IEND":
            return pos + 12 <= size  # length, type, CRC
        pos += 12 + int.from_bytes(head[:4], "big")
    return False


__all__ = [
    "LARGE_IMAGE_PIXELS",
    "NO_PIXEL_LIMIT",
    "ImageTooLarge",
    "image_problem",
    "inspect_image",
    "large_image_note",
    "open_image",
    "read_image",
    "to_rgb",
]
