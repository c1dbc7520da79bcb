"""Track people in a real video with BoxMOT, using a reid-dhm model for appearance.

    python examples/track_people.py --checkpoint log/synthreid/dhm_mobilenetv2-dhm/checkpoint.pth
    python examples/track_people.py --checkpoint CKPT --video my.mp4 --frames 300 --out-dir tracking

1. The checkpoint is exported for BoxMOT (``reid_dhm.export.export_boxmot``: an ONNX
   graph with its metadata sidecar, which BoxMOT loads as it is);
2. people are detected in every frame with OpenCV's HOG people detector (no weights
   to download; the frame is upscaled first, since HOG's 64x128 window misses small
   people);
3. BoxMOT's BoT-SORT associates detections into tracks, embedding every detection
   with the exported model through BoxMOT's own ReID runtime;
4. written to ``--out-dir``: ``annotated.mp4`` (boxes and track ids), ``tracks.png``
   (a contact sheet: a row of crops per track), ``tracks.json`` (every track's boxes).

Prints the tracks found, the frames per second of the whole loop and the share of
time spent in detection, re-ID and association. The default video is Debian's
opencv-doc ``vtest.avi`` (a real pedestrian scene). It has no labels: this shows the
integration working, it makes no accuracy claim.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw

VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"


class TimedReID:
    """BoxMOT's ReID backend, timed: the tracker calls ``get_features(boxes, frame)``."""

    def __init__(self, backend):
        self.backend = backend
        self.seconds = 0.0
        self.crops = 0

    def get_features(self, boxes, frame):
        start = time.perf_counter()
        out = self.backend.get_features(boxes, frame)
        self.seconds += time.perf_counter() - start
        self.crops += len(boxes)
        return out

    def __getattr__(self, name):  # anything else BoxMOT asks of its backend
        return getattr(self.backend, name)


def detect_people(hog, frame: np.ndarray, upscale: float) -> np.ndarray:
    """HOG people detections as BoxMOT input rows (x1, y1, x2, y2, confidence, class 0)."""
    big = cv2.resize(frame, None, fx=upscale, fy=upscale) if upscale != 1 else frame
    rects, weights = hog.detectMultiScale(big, winStride=(8, 8), padding=(8, 8), scale=1.05)
    if len(rects) == 0:
        return np.empty((0, 6), dtype=np.float32)
    weights = np.asarray(weights, dtype=np.float32).reshape(-1)
    keep = cv2.dnn.NMSBoxes([list(map(int, r)) for r in rects], weights.tolist(), 0.0, 0.4)
    keep = np.asarray(keep, dtype=int).reshape(-1)
    rects, weights = np.asarray(rects, dtype=np.float32)[keep] / upscale, weights[keep]
    boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    # HOG's SVM margins (about 0.3 .. 3) mapped into (0, 1) for the tracker's thresholds.
    confidence = 1.0 - np.exp(-weights)
    return np.column_stack([boxes, confidence, np.zeros(len(boxes))]).astype(np.float32)


def colour(track_id: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(track_id * 7919)
    return tuple(int(v) for v in rng.integers(60, 255, 3))


def contact_sheet(
    tracks: dict, frames_seen: int, path: Path, per_row: int = 8, max_rows: int = 12
) -> Path:
    """One row per track (the ``max_rows`` longest): up to ``per_row`` crops over its life."""
    tile_h, tile_w, label_w, pad = 96, 48, 150, 4
    rows = sorted(tracks.items(), key=lambda kv: -len(kv[1]["crops"]))[:max_rows]
    height = pad + max(1, len(rows)) * (tile_h + pad) + 20
    sheet = Image.new("RGB", (label_w + per_row * (tile_w + pad) + pad, height), "white")
    draw = ImageDraw.Draw(sheet)
    shown = f" (the {len(rows)} longest shown)" if len(rows) < len(tracks) else ""
    draw.text((pad, 2), f"{len(tracks)} tracks in {frames_seen} frames{shown}", fill=(0, 0, 0))
    if not rows:
        draw.text((pad, 24), "no person was tracked", fill=(200, 0, 0))
    for r, (tid, t) in enumerate(rows):
        y = 20 + pad + r * (tile_h + pad)
        draw.rectangle([pad, y + 4, pad + 10, y + 14], fill=colour(tid)[::-1])  # its box colour
        draw.text((pad + 16, y + 4), f"track {tid}", fill=(0, 0, 0))
        draw.text((pad, y + 20), f"frames {t['frames'][0]}-{t['frames'][-1]}", fill=(0, 0, 0))
        draw.text((pad, y + 36), f"{len(t['frames'])} boxes", fill=(0, 0, 0))
        picks = np.linspace(0, len(t["crops"]) - 1, min(per_row, len(t["crops"]))).astype(int)
        for j, k in enumerate(picks):
            crop = Image.fromarray(t["crops"][k][:, :, ::-1]).resize((tile_w, tile_h))
            sheet.paste(crop, (label_w + j * (tile_w + pad), y))
    sheet.save(path)
    return path


def run(args) -> dict:
    from boxmot import BotSort
    from boxmot.reid.core import ReID

    from reid_dhm.data.preprocessing import Preprocessing
    from reid_dhm.export import export_boxmot
    from reid_dhm.models.checkpoint import model_from_checkpoint
    from reid_dhm.utils.checkpoint import load_checkpoint
    from reid_dhm.utils.progress import Progress

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    video = Path(args.video)
    if not video.is_file():
        hint = " (Debian: apt-get install opencv-doc)" if str(video) == VTEST else ""
        raise FileNotFoundError(f"video not found: {video}{hint}")
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"cannot open {video} as a video")

    ckpt = load_checkpoint(args.checkpoint)
    pre = Preprocessing.from_checkpoint(ckpt)
    exported = export_boxmot(
        model_from_checkpoint(ckpt), out / "reid_model", pre.size, pre.mean, pre.std
    )
    weights = Path(exported["pt"] if args.runtime == "pt" and exported["pt"] else exported["onnx"])
    print(f"=> re-ID model for BoxMOT: {weights} ({pre.height}x{pre.width} input)")
    reid = TimedReID(ReID(weights=weights, device="cpu").model)
    tracker = BotSort(
        reid_model=reid,
        track_high_thresh=0.5,
        track_low_thresh=0.1,
        new_track_thresh=0.5,
        use_cmc=False,  # a fixed camera: no camera-motion compensation needed
        frame_rate=int(round(cap.get(cv2.CAP_PROP_FPS) or 10)),
    )
    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())

    writer, tracks, frame_idx, detections = None, {}, 0, 0
    t_detect = t_track = 0.0
    problem = None
    in_video = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) or None
    planned = min(args.frames, in_video or args.frames) if args.frames > 0 else in_video
    # A bar on a terminal, else a line every 15 s: detection takes seconds a frame on a CPU.
    progress = Progress(planned, "tracking", "frames", every=15.0)
    start = time.perf_counter()
    try:
        while args.frames <= 0 or frame_idx < args.frames:
            ok, frame = cap.read()
            if not ok or frame is None:
                total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                if total and frame_idx < total - 1:
                    problem = f"frame {frame_idx} of {video} could not be read; stopped there"
                break
            t0 = time.perf_counter()
            dets = detect_people(hog, frame, args.upscale)
            t1 = time.perf_counter()
            reid_before = reid.seconds
            rows = tracker.update(dets, frame)
            t_track += time.perf_counter() - t1 - (reid.seconds - reid_before)
            t_detect += t1 - t0
            detections += len(dets)
            canvas = frame.copy()
            h, w = frame.shape[:2]
            for x1, y1, x2, y2, tid, *_ in np.asarray(rows).reshape(-1, 8 if len(rows) else 1):
                tid = int(tid)
                box = [int(max(0, x1)), int(max(0, y1)), int(min(w, x2)), int(min(h, y2))]
                if box[2] <= box[0] or box[3] <= box[1]:
                    continue
                t = tracks.setdefault(tid, {"frames": [], "boxes": [], "crops": []})
                t["frames"].append(frame_idx)
                t["boxes"].append([round(float(v), 1) for v in (x1, y1, x2, y2)])
                t["crops"].append(frame[box[1] : box[3], box[0] : box[2]].copy())
                cv2.rectangle(canvas, tuple(box[:2]), tuple(box[2:]), colour(tid), 2)
                cv2.putText(canvas, str(tid), (box[0], max(12, box[1] - 4)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour(tid), 2)  # fmt: skip
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                fps = cap.get(cv2.CAP_PROP_FPS) or 10
                writer = cv2.VideoWriter(str(out / "annotated.mp4"), fourcc, fps, (w, h))
            writer.write(canvas)
            frame_idx += 1
            progress.update()
    finally:
        progress.close()
        cap.release()
        if writer is not None:
            writer.release()
    elapsed = time.perf_counter() - start

    if frame_idx == 0:
        problem = problem or f"no frame could be read from {video}"
    sheet = contact_sheet(tracks, frame_idx, out / "tracks.png")
    summary = {
        "video": str(video),
        "frames": frame_idx,
        "detections": detections,
        "tracks": len(tracks),
        "tracks_5_frames_or_more": sum(len(t["frames"]) >= 5 for t in tracks.values()),
        "seconds": round(elapsed, 2),
        "fps": round(frame_idx / elapsed, 2) if elapsed > 0 else None,
        "share_detection": round(t_detect / elapsed, 3) if elapsed > 0 else None,
        "share_reid": round(reid.seconds / elapsed, 3) if elapsed > 0 else None,
        "share_association": round(t_track / elapsed, 3) if elapsed > 0 else None,
        "reid_crops": reid.crops,
        "reid_ms_per_crop": round(1000 * reid.seconds / reid.crops, 2) if reid.crops else None,
        "reid_weights": str(weights),
        "problem": problem,
        "tracks_detail": {
            str(tid): {"frames": t["frames"], "boxes": t["boxes"]} for tid, t in tracks.items()
        },
    }
    (out / "tracks.json").write_text(json.dumps(summary, indent=1))
    if problem:
        print(f"warning: {problem}", file=sys.stderr)
    if detections == 0 and frame_idx:
        print(f"warning: no person was detected in {frame_idx} frames", file=sys.stderr)
    share = {k: summary[f"share_{k}"] for k in ("detection", "reid", "association")}
    print(
        f"{frame_idx} frames, {detections} detections, {len(tracks)} tracks "
        f"({summary['tracks_5_frames_or_more']} lasting 5+ frames); "
        f"{summary['fps']} frames/s for the whole loop; time share: "
        + ", ".join(
            f"{k} {100 * v:.0f} %" for k, v in share.items() if v is not None and not math.isnan(v)
        )
        + (f"; re-ID {summary['reid_ms_per_crop']} ms a crop" if reid.crops else "")
    )
    print(f"wrote {out / 'annotated.mp4'}, {sheet}, {out / 'tracks.json'}")
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="a reid-dhm re-ID checkpoint")
    p.add_argument("--video", default=VTEST, help=f"a video file (default {VTEST})")
    p.add_argument("--frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--out-dir", default="tracking")
    p.add_argument("--upscale", type=float, default=1.5,
                   help="upscale frames before HOG detection (small people)")  # fmt: skip
    p.add_argument("--runtime", choices=("onnx", "pt"), default="onnx",
                   help="BoxMOT ReID runtime for the exported model")  # fmt: skip
    args = p.parse_args(argv)
    try:
        run(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
