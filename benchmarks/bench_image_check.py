#!/usr/bin/env python
"""Cost per image of the load-time check, against the alternatives.

Times, interleaved, over the same files: opening the header only (what the check did
before: misses files cut short), the check used now (header + end marker,
``reid_dhm.data.reid_datasets.image_problem``) and a full decode (PIL ``load``).
Also confirms that the check catches truncated JPEG and PNG files.

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

from reid_dhm.data.reid_datasets import image_problem


def header_only(path: Path) -> None:
    with Image.open(path):
        pass


def full_decode(path: Path) -> None:
    with Image.open(path) as img:
        img.load()


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
    cases = {"header only": header_only, "header + end marker": image_problem,
             "full decode": full_decode}  # fmt: skip
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            for f in files:
                fn(f)
            times[name].append((time.perf_counter() - start) / len(files))
    print(f"{len(files)} files in {folder}, median of {args.rounds} interleaved rounds")
    for name, ts in times.items():
        print(f"  {name:<22}{1000 * statistics.median(ts):7.3f} ms a file")
    with tempfile.TemporaryDirectory() as tmp:
        src = files[0].read_bytes()
        cut = Path(tmp) / "cut.jpg"
        cut.write_bytes(src[: len(src) * 2 // 3])
        png = Path(tmp) / "cut.png"
        Image.open(files[0]).save(png)
        png.write_bytes(png.read_bytes()[:-40])
        print(f"  truncated JPEG: {image_problem(cut)}; truncated PNG: {image_problem(png)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
