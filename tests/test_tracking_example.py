"""examples/track_people.py on real footage (Debian's opencv-doc vtest.avi), and bad input."""

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import require_system

pytest.importorskip("boxmot")
VTEST = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "track_people.py"


def _example():
    spec = importlib.util.spec_from_file_location("track_people", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tracks_people_in_the_first_frames_of_vtest(tiny_checkpoint, tmp_path, capsys):
    require_system(VTEST, "opencv-doc")
    out = tmp_path / "tracking"
    argv = ["--checkpoint", str(tiny_checkpoint), "--frames", "30", "--upscale", "1.0",
            "--out-dir", str(out)]  # fmt: skip
    assert _example().main(argv) == 0
    printed = capsys.readouterr().out
    assert "30 frames" in printed and "frames/s" in printed and "reid" in printed
    summary = json.loads((out / "tracks.json").read_text())
    assert summary["frames"] == 30 and summary["detections"] > 0 and summary["tracks"] >= 1
    assert summary["reid_crops"] > 0 and 0 < summary["share_reid"] < 1
    assert summary["reid_weights"].endswith(".onnx")
    for name in ("annotated.mp4", "tracks.png", "reid_model.onnx", "reid_model.onnx.metadata.json"):
        assert (out / name).stat().st_size > 0, name
    video = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 30


def test_bad_videos_give_one_line_and_keep_what_is_known(tiny_checkpoint, tmp_path, capsys):
    example = _example()
    base = ["--checkpoint", str(tiny_checkpoint), "--out-dir", str(tmp_path / "o")]
    assert example.main([*base, "--video", str(tmp_path / "missing.avi")]) == 2
    assert "video not found" in capsys.readouterr().err
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 100)
    assert example.main([*base, "--video", str(junk)]) == 2
    assert "cannot open" in capsys.readouterr().err
    # A real video in which nobody appears: a clear warning, and every file is written.
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(5):
        writer.write(np.full((120, 160, 3), 128, np.uint8))
    writer.release()
    assert example.main([*base, "--video", str(empty)]) == 0
    assert "no person was detected in 5 frames" in capsys.readouterr().err
    summary = json.loads((tmp_path / "o" / "tracks.json").read_text())
    assert summary["frames"] == 5 and summary["tracks"] == 0
    assert (tmp_path / "o" / "tracks.png").stat().st_size > 0
