"""ONNX export: verified against PyTorch, dynamic batch, nothing written on a mismatch."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from reid_dhm import FeatureExtractor, build_model
from reid_dhm.cli import export as export_tool  # noqa: E402
from reid_dhm.export import export_onnx


@pytest.mark.slow  # a checkpoint, an ONNX export and its check: over 20 s on 2 CPU cores
def test_export_tool_matches_the_feature_extractor_on_real_images(
    tiny_reid, tiny_checkpoint, tmp_path, capsys
):
    out = tmp_path / "reid.onnx"
    argv = ["--checkpoint", str(tiny_checkpoint), "--output", str(out), "--bake-normalization"]
    assert export_tool.main(argv) == 0
    assert '"max_abs_diff"' in capsys.readouterr().out
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
