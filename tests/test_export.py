"""ONNX export: verified against PyTorch, dynamic batch, nothing written on a mismatch;
a summary in words, and normalisation reported as baked only when the graph holds it."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from reid_dhm import FeatureExtractor, build_model
from reid_dhm.cli import export as export_tool  # noqa: E402
from reid_dhm.export import BOXMOT_MEAN, BOXMOT_STD, export_onnx


@pytest.mark.slow  # a checkpoint, an ONNX export and its check: over 20 s on 2 CPU cores
def test_export_tool_matches_the_feature_extractor_on_real_images(
    tiny_reid, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "reid.onnx"
    argv = ["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--bake-normalization"]
    assert export_tool.main(argv) == 0
    printed = capsys.readouterr().out
    # A summary in words (it used to be raw JSON): what, where, opset, normalisation, check.
    assert printed.startswith(f"wrote {out} (") and "ONNX opset 18" in printed
    assert "normalization: baked into the graph: feed RGB in [0, 1]" in printed
    diff = float(printed.split("max |ONNX Runtime - PyTorch| = ")[1].split()[0])
    assert 0 <= diff <= 1e-4
    assert first_op_on_input(out) == "Mul"  # the baked (x - mean) / std
    images = sorted((tiny_reid / "query").glob("*.jpg"))[:5]
    extractor = FeatureExtractor.from_checkpoint(tiny_checkpoint, device="cpu")
    expected = extractor(images).numpy()
    # The graph holds the normalisation: feed resized RGB in [0, 1], batch of 5.
    h, w = extractor.image_size
    x = torch.stack(
        [TF.to_tensor(Image.open(p).convert("RGB").resize((w, h), Image.BILINEAR)) for p in images]
    )
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["embeddings"], {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)


def first_op_on_input(path) -> str:
    """The operator the graph applies to its input images first."""
    graph = onnx.load(str(path)).graph
    return next(n.op_type for n in graph.node if "images" in n.input)


@pytest.mark.slow  # an ONNX export and its check: over 20 s on 2 CPU cores
def test_boxmot_export_bakes_nothing_when_the_model_uses_boxmots_statistics(
    tiny_checkpoint, tmp_path, capsys
):
    stem = tmp_path / "reid"
    argv = ["--checkpoint", str(tiny_checkpoint), "--format", "boxmot", "--output", str(stem)]
    assert export_tool.main(argv + ["--json"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)  # --json: stdout holds the report alone
    check = report["onnx_check"]
    # The tiny model was trained with ImageNet statistics, BoxMOT's own: nothing to bake
    # (the report used to say "normalization_baked_in": true all the same).
    assert check["normalization_baked_in"] is False
    assert first_op_on_input(report["onnx"]) == "Conv"
    assert "normalization: the model's mean / std are BoxMOT's (ImageNet), nothing baked" in err
    assert f"wrote for BoxMOT (ONNX opset {check['opset']})" in err


@pytest.mark.slow  # an ONNX export and its check: over 20 s on 2 CPU cores
def test_other_input_statistics_are_baked_and_reported_so(tmp_path):
    model = build_model("cifar_resnet20", 4)
    own, boxmot = ((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)), (BOXMOT_MEAN, BOXMOT_STD)
    path = tmp_path / "m.onnx"
    report = export_onnx(model, path, (32, 32), normalize=own, input_normalization=boxmot)
    assert report["normalization_baked_in"] is True and first_op_on_input(path) == "Mul"
    assert report["normalization"].startswith("baked into the graph: input normalised with")


def test_a_mismatch_writes_nothing_and_keeps_the_old_file(tmp_path):
    model = build_model("dhm_mobilenetv2", 4)
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ValueError, match="differs from PyTorch.*was not written"):
        # No tolerance at all: ONNX Runtime's float rounding differs from PyTorch's.
        export_onnx(model, target, (64, 32), atol=0.0, rtol=0.0)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_export_errors_are_one_line(tmp_path, capsys):
    argv = ["--checkpoint", str(tmp_path / "none.pth"), "--output", str(tmp_path / "m.onnx")]
    assert export_tool.main(argv) == 2
    assert "checkpoint not found" in capsys.readouterr().err
