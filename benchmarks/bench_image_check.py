#!/usr/bin/env python
"""Cost per image of the load-time check and of the reader, against the alternatives.

Times, interleaved, over the same files: opening the header only (misses files cut
short), the load-time check (header, pixel limit, end marker:
``reid_dhm.utils.images.image_problem``), the same check on copies with 100 bytes
appended after the end marker (its backward search), a full decode (PIL ``load``); and
for reading, PIL's plain ``open + convert('RGB')`` against ``read_image`` (pixel limit,
EXIF orientation, mode conversion). Also confirms that the check catches truncated JPEG
and PNG files, with and without bytes appended.

    python benchmarks/bench_image_check.py                          # synthreid's images
    python benchmarks/bench_image_check.py --folder reid-data/market1501/Market-1501-v15.09.15/query
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from reid_dhm.utils.images import image_problem, read_image


def header_only(path: Path) -> None:
    with Image.open(path):
        pass


def full_decode(path: Path) -> None:
    with Image.open(path) as img:
        img.load()


def plain_read(path: Path) -> None:
    with Image.open(path) as img:
        img.convert("RGB")


def padded_copies(files: list[Path], folder: Path) -> list[Path]:
    """Copies of ``files`` with bytes after their end marker (valid, decodable files)."""
    copies = []
    for f in files:
        copy = folder / f.name
        copy.write_bytes(f.read_bytes() + b"trailing bytes " * 7)
        copies.append(copy)
    return copies


def timed(cases: dict, sets: dict, rounds: int) -> dict:
    """Median seconds per file of each case over its file set, in interleaved rounds."""
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            paths = sets.get(name, sets[None])
            start = time.perf_counter()
            for f in paths:
                fn(f)
            times[name].append((time.perf_counter() - start) / len(paths))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", default=None, help="images to time (default: synthreid's gallery)")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    if args.folder is None:
        from reid_dhm.data.synthreid import generate_synthreid

        folder = generate_synthreid(Path(tempfile.gettempdir()) / "bench-image-check")
        folder = folder / "bounding_box_test"
    else:
        folder = Path(args.folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    cases = {"header only": header_only, "check": image_problem,
             "check, bytes appended": image_problem, "full decode": full_decode,
             "open + convert (PIL)": plain_read, "read_image": read_image}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        padded = padded_copies(files, Path(tmp))
        assert all(image_problem(f) is None for f in padded)
        times = timed(cases, {None: files, "check, bytes appended": padded}, args.rounds)
    print(f"{len(files)} files in {folder}, median of {args.rounds} interleaved rounds")
    for name, t in times.items():
        print(f"  {name:<24}{1000 * t:7.3f} ms a file")
    with tempfile.TemporaryDirectory() as tmp:
        src = files[0].read_bytes()
        cut = Path(tmp) / "cut.jpg"
        cut.write_bytes(src[: len(src) * 2 // 3])
        png = Path(tmp) / "cut.png"
        Image.open(files[0]).save(png)
        png.write_bytes(png.read_bytes()[:-40])
        print(f"  truncated JPEG: {image_problem(cut)}; truncated PNG: {image_problem(png)}")
        cut.write_bytes(cut.read_bytes() + b"trailing bytes " * 7)
        print(f"  truncated JPEG, bytes appended: {image_problem(cut)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
