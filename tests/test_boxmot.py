"""The BoxMOT export, loaded through BoxMOT's own ReID runtime (boxmot 25.0.0)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_dhm import FeatureExtractor, build_model
from reid_dhm.cli import export as export_tool
from reid_dhm.export import export_boxmot

boxmot = pytest.importorskip("boxmot")  # a dev/CI dependency: pip install 'reid-dhm[boxmot]'


@pytest.fixture(scope="module", autouse=True)
def offline_onnxruntime():
    # BoxMOT's ONNX backend pip-installs this exact version at run time when another one
    # is present; the project pins it so nothing is installed (or downloaded) here.
    from boxmot.reid.backends.dependencies import ONNX_RUNTIME_VERSION
    from boxmot.utils.checks import requirement_satisfied

    assert requirement_satisfied(f"onnxruntime{ONNX_RUNTIME_VERSION}"), ONNX_RUNTIME_VERSION


def _runtime(path):
    from boxmot.reid.core import ReID  # what BoxMOT's trackers build from reid_weights

    return ReID(weights=path, device="cpu")


def _cosines(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_boxmot_loads_both_files_as_exported(tiny_checkpoint, tiny_reid, tmp_path, capsys):
    # A .pth output name: BoxMOT refuses .pth, so the export writes .pt itself.
    stem = tmp_path / "exports" / "tiny_reid.pth"
    argv = ["--checkpoint", str(tiny_checkpoint), "--format", "boxmot", "--output", str(stem)]
    assert export_tool.main(argv) == 0
    capsys.readouterr()
    onnx_path, pt_path = (
        tmp_path / "exports" / "tiny_reid.onnx",
        tmp_path / "exports" / "tiny_reid.pt",
    )
    assert onnx_path.is_file() and pt_path.is_file() and not stem.exists()
    meta = json.loads((tmp_path / "exports" / "tiny_reid.pt.metadata.json").read_text())
    assert meta["model_name"] == "mobilenetv2_x1_0" and meta["img_size"] == [64, 32]
    assert torch.load(pt_path, weights_only=True)["model_name"] == "mobilenetv2_x1_0"

    fx = FeatureExtractor.from_checkpoint(tiny_checkpoint, device="cpu", normalize=True)
    gallery = sorted((tiny_reid / "bounding_box_test").glob("*.jpg"))[:6]
    bgr = [np.asarray(Image.open(p).convert("RGB"))[:, :, ::-1].copy() for p in gallery]
    # Crops at the input size (no resize) and at other sizes (BoxMOT resizes with OpenCV,
    # FeatureExtractor with PIL: close, not identical).
    odd = [np.ascontiguousarray(np.repeat(np.repeat(c, 2, 0), 3, 1)[5:, 2:]) for c in bgr]
    frame = np.zeros((240, 300, 3), np.uint8)
    boxes = np.array([[10, 20, 42, 84], [100, 50, 132, 114], [250, 150, 282, 214]], np.float32)
    for i, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        frame[y1:y2, x1:x2] = bgr[i]
    for path in (onnx_path, pt_path):
        runtime = _runtime(path)
        same = _cosines(runtime(bgr), fx(bgr, bgr=True))
        assert same.min() >= 0.9999, (path.suffix, same)
        resized = _cosines(runtime(odd), fx(odd, bgr=True))
        assert resized.min() >= 0.999, (path.suffix, resized)
        # The tracker path: boxes cut from a BGR frame by BoxMOT's backend.
        tracked = runtime.model.get_features(boxes, frame)
        assert _cosines(tracked, fx.crops(frame, boxes, bgr=True)).min() >= 0.9999


def test_models_boxmot_has_no_backbone_for_get_onnx_only(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet18", 4, last_stride=1)  # BoxMOT's resnet18 has last stride 2
    report = export_boxmot(model, tmp_path / "r18s1", (64, 32))
    assert report["pt"] is None and "no backbone" in report["notes"][0]
    assert not (tmp_path / "r18s1.pt").exists()
    frame = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    fx = FeatureExtractor(model, image_size=(64, 32), device="cpu", normalize=True)
    assert _cosines(_runtime(report["onnx"])([frame]), fx(frame, bgr=True))[0] >= 0.9999


@pytest.mark.parametrize("name", ["convnext_atto", "vit_tiny_patch16_224"])
def test_a_timm_model_runs_in_boxmot_under_the_plain_crop_contract(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(f"timm/{name}", 4, img_size=(64, 32))
    # A file name that holds another BoxMOT architecture's name: without a model_name in
    # the sidecar BoxMOT would read this graph as MobileNetV4 (a 384x128 contract).
    report = export_boxmot(model, tmp_path / f"{name}_vs_mobilenetv4_conv_small", (64, 32))
    assert report["pt"] is None
    meta = json.loads(Path(report["onnx"] + ".metadata.json").read_text())
    assert meta["model_name"] == "resnet50" and meta["architecture"] == f"timm/{name}"
    assert "crop contract" in meta["model_name_note"]
    runtime = _runtime(report["onnx"])
    assert tuple(runtime.model.input_shape) == (64, 32)
    frame = np.random.default_rng(2).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    fx = FeatureExtractor(model, image_size=(64, 32), device="cpu", normalize=True)
    assert _cosines(runtime([frame]), fx(frame, bgr=True))[0] >= 0.9999


def test_other_normalisation_is_converted_inside_the_onnx_graph(tmp_path):
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 4)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    report = export_boxmot(model, tmp_path / "m", (64, 32), mean, std)
    assert report["pt"] is None and "ImageNet statistics" in report["notes"][0]
    frame = np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    fx = FeatureExtractor(model, image_size=(64, 32), mean=mean, std=std, device="cpu")
    assert _cosines(_runtime(report["onnx"])([frame]), fx(frame, bgr=True))[0] >= 0.9999
