"""FeatureExtractor for frames and crops: every input form, batching, crops, preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from reid_dhm import FeatureExtractor, build_model
from reid_dhm.data.preprocessing import Preprocessing
from reid_dhm.models.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    model = build_model("dhm_mobilenetv2", 5)
    pre = Preprocessing(height=64, width=32, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    return FeatureExtractor(model, preprocessing=pre, device="cpu", batch_size=3)


def _picture(h=90, w=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_the_same_picture_in_every_form_gives_the_same_embedding(extractor, tmp_path):
    rgb = _picture()
    path = tmp_path / "p.png"
    Image.fromarray(rgb).save(path)
    forms = {
        "path": str(path),
        "pil": Image.fromarray(rgb),
        "rgb array": rgb,
        "uint8 tensor": torch.from_numpy(rgb).permute(2, 0, 1),
        "float tensor": extractor.preprocess(rgb),
        "list of one": [rgb],
    }
    ref = extractor(rgb)
    assert ref.shape == (1, extractor.feature_dim) == (1, 1280)
    for name, form in forms.items():
        torch.testing.assert_close(extractor(form), ref, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(extractor(rgb[:, :, ::-1].copy(), bgr=True), ref, rtol=0, atol=0)
    bgr_extractor = FeatureExtractor(extractor.model, preprocessing=extractor.preprocessing,
                                     device="cpu", bgr=True)  # fmt: skip
    torch.testing.assert_close(bgr_extractor(rgb[:, :, ::-1].copy()), ref, rtol=0, atol=0)


def test_batching_equals_one_by_one(extractor):
    pics = [_picture(50 + 7 * i, 20 + 3 * i, seed=i) for i in range(7)]
    together = extractor(pics)  # batches of 3, 3, 1
    alone = torch.cat([extractor(p) for p in pics])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
    stacked = np.stack([_picture(seed=i) for i in range(4)])  # N x H x W x 3
    assert extractor(stacked).shape == (4, 1280)
    mixed = extractor([pics[0], extractor.preprocess(pics[1])[None], pics[2]])
    torch.testing.assert_close(mixed, together[:3], rtol=1e-4, atol=1e-5)
    assert extractor([]).shape == (0, 1280)


def test_grey_and_alpha_follow_the_documented_rule(extractor):
    grey = np.random.default_rng(1).integers(0, 256, (60, 30), dtype=np.uint8)
    as_rgb = np.repeat(grey[:, :, None], 3, axis=2)
    torch.testing.assert_close(extractor(grey), extractor(as_rgb), rtol=0, atol=0)
    torch.testing.assert_close(extractor(grey[:, :, None]), extractor(as_rgb), rtol=0, atol=0)
    torch.testing.assert_close(extractor(Image.fromarray(grey, "L")), extractor(as_rgb))
    rgba = np.concatenate([_picture(), np.full((90, 40, 1), 17, np.uint8)], axis=2)
    torch.testing.assert_close(extractor(rgba), extractor(_picture()), rtol=0, atol=0)
    torch.testing.assert_close(extractor(Image.fromarray(rgba, "RGBA")), extractor(_picture()))


def test_normalize_gives_unit_rows(extractor):
    fx = FeatureExtractor(extractor.model, preprocessing=extractor.preprocessing, device="cpu",
                          normalize=True)  # fmt: skip
    out = fx([_picture(seed=i) for i in range(3)])
    torch.testing.assert_close(out.norm(dim=1), torch.ones(3))


def test_crops_cut_clip_and_refuse(extractor):
    frame = _picture(120, 200, seed=3)
    boxes = [[10, 20, 42, 84], [-15, -5, 30, 70], [180, 100, 260, 170]]  # last two: clipped
    got = extractor.crops(frame, boxes)
    expected = extractor([frame[20:84, 10:42], frame[0:70, 0:30], frame[100:120, 180:200]])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        extractor.crops(frame[:, :, ::-1].copy(), boxes, bgr=True), got, rtol=1e-4, atol=1e-5
    )
    assert extractor.crops(frame, np.zeros((0, 4))).shape == (0, 1280)
    with pytest.raises(ValueError, match=r"box 1 .* outside the 200x120 frame"):
        extractor.crops(frame, [[0, 0, 10, 10], [300, 10, 340, 50]])
    with pytest.raises(ValueError, match="box 0 .* empty"):
        extractor.crops(frame, [[5, 5, 5, 40]])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        extractor.crops(frame, [[1, 2, 3]])


def test_bad_inputs_are_clear_errors(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor(np.random.rand(20, 10, 3))
    with pytest.raises(ValueError, match="HxWx3"):
        extractor(np.zeros((20, 10, 5), np.uint8))
    with pytest.raises(TypeError, match="cannot embed a dict"):
        extractor([{}])
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        extractor("nope.jpg")


def test_preprocessing_comes_from_the_checkpoint_field(tmp_path):
    model = build_model("dhm_mobilenetv2", 3)
    pre = Preprocessing(height=48, width=24, mean=(0.1, 0.2, 0.3), std=(0.3, 0.2, 0.1),
                        interpolation="bicubic")  # fmt: skip
    # The config says something else: the stored field wins.
    config = {"data": {"height": 256, "width": 128, "norm_mean": [0, 0, 0], "norm_std": [1, 1, 1]}}
    save_checkpoint(tmp_path / "c.pth", model, "dhm_mobilenetv2", 1, config=config,
                    preprocessing=pre.to_dict())  # fmt: skip
    fx = FeatureExtractor.from_checkpoint(tmp_path / "c.pth", device="cpu")
    assert fx.preprocessing == pre
    assert FeatureExtractor(tmp_path / "c.pth", device="cpu").preprocessing == pre
    # A checkpoint from before the field existed: its config's size and statistics.
    save_checkpoint(tmp_path / "old.pth", model, "dhm_mobilenetv2", 1, config=config)
    old = FeatureExtractor.from_checkpoint(tmp_path / "old.pth", device="cpu")
    assert old.image_size == (256, 128) and old.mean == [0, 0, 0]
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(interpolation="lanczos9")
