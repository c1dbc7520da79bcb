"""Issue 18, images from the real world: every case on real image files the test writes.

EXIF orientation, 16-bit and other modes, bytes after the JPEG end marker, images over
the pixel limit (a real 20000x10000 PNG, made cheaply as a 1-bit PNG by hand), ids that
do not fit int64, and training splits of one identity or only junk. The images go
through the one reader (``reid_dhm.utils.images.read_image``) that the data sets,
``FeatureExtractor`` and ``retrieve`` use, and through those callers themselves.
"""

import shutil
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reid_dhm import FeatureExtractor, build_model
from reid_dhm.cli import retrieve as retrieve_tool
from reid_dhm.cli import train as train_tool
from reid_dhm.data.preprocessing import Preprocessing
from reid_dhm.data.reid_datasets import MarketLayoutDataset, parse_name
from reid_dhm.data.reid_manager import build_reid_datamanager
from reid_dhm.models.checkpoint import save_checkpoint
from reid_dhm.runs.retrieve import parse_identity
from reid_dhm.utils import images
from reid_dhm.utils.images import image_problem, read_image, to_rgb

TINY = [
    "model.name=dhm_mobilenetv2", "model.pretrained=false", "data.height=64", "data.width=32",
    "data.batch_size=4", "data.test_batch_size=16", "data.workers=0", "train.fixbase_epoch=0",
    "test.vis_queries=0", "train.max_epoch=1",
]  # fmt: skip
RED, BLUE = (220, 20, 20), (20, 20, 220)
# Orientation tag -> the transpose that stores an upright picture under that tag.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90,
             8: Image.Transpose.ROTATE_270}  # fmt: skip


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    model = build_model("dhm_mobilenetv2", 5)
    return FeatureExtractor(model, preprocessing=Preprocessing(height=64, width=32), device="cpu")


def _upright() -> Image.Image:
    """16 wide x 32 high: red top half, blue bottom half (which way is up shows)."""
    pixels = np.zeros((32, 16, 3), np.uint8)
    pixels[:16], pixels[16:] = RED, BLUE
    return Image.fromarray(pixels)


def _is_upright(img: Image.Image) -> bool:
    if img.size != (16, 32):
        return False
    pixels = np.asarray(img, dtype=np.int64)
    top, bottom = pixels[2:12].mean((0, 1)), pixels[20:30].mean((0, 1))
    return top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def _rotated_jpeg(path: Path, orientation: int) -> Path:
    """The upright picture stored sideways with an EXIF tag saying how to turn it."""
    exif = Image.Exif()
    exif[images.EXIF_ORIENTATION] = orientation
    _upright().transpose(STORED_AS[orientation]).save(path, "JPEG", quality=95, exif=exif)
    return path


def _market_copy(tiny_reid, tmp_path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_reid, root)
    return root


def _bilevel_png(path: Path, width: int, height: int) -> Path:
    """A real, valid 1-bit PNG of any size in a few KB (rows of zeros compress ~1000x)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(row * height, 6)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _data(root, **kwargs):
    kwargs = {"height": 64, "width": 32, "batch_size": 4, "workers": 0, **kwargs}
    return build_reid_datamanager("folder", root, **kwargs)


def _gallery_paths(manager) -> list[str]:
    return [Path(p).name for p, *_ in manager.test_loader["folder"]["gallery"].dataset.data]


# ------------------------------------------------------------------ EXIF orientation
@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied_by_every_reader(orientation, tmp_path, extractor):
    path = _rotated_jpeg(tmp_path / "0001_c1s1_000001_00.jpg", orientation)
    with Image.open(path) as raw:  # stored sideways / upside down: the test means something
        assert not _is_upright(raw.convert("RGB"))
    assert _is_upright(read_image(path))
    with Image.open(path) as raw:  # a PIL image with the tag, given to the extractor
        assert _is_upright(to_rgb(raw.copy()))
        torch.testing.assert_close(extractor(raw), extractor(str(path)), rtol=0, atol=0)
    torch.testing.assert_close(
        extractor(str(path)), extractor(np.asarray(read_image(path))), rtol=0, atol=0
    )
    frame = extractor.crops(str(path), [[0, 0, 16, 32]])  # the whole upright frame
    torch.testing.assert_close(frame, extractor(str(path)), rtol=0, atol=0)


def test_training_items_are_upright(tiny_reid, tmp_path):
    root = _market_copy(tiny_reid, tmp_path)
    victim = sorted((root / "bounding_box_train").glob("*.jpg"))[0]
    _rotated_jpeg(victim, 6)
    dataset = MarketLayoutDataset(str(root), transform=None, mode="train", verbose=False)
    index = next(i for i, item in enumerate(dataset.train) if item[0] == str(victim))
    assert _is_upright(dataset[index]["img"])


# ----------------------------------------------------------- 16-bit and other modes
def test_16_bit_png_is_scaled_not_saturated(tmp_path):
    values = np.linspace(0, 65535, 16).round().astype(np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(np.tile(values, (8, 1))).save(path)
    with Image.open(path) as raw:
        assert raw.mode == "I;16"
    pixels = np.asarray(read_image(path))
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(pixels[0, :, 0], expected)
    assert (pixels[..., 0] == pixels[..., 2]).all() and pixels.min() == 0 and pixels.max() == 255
    wide = Image.fromarray(np.full((4, 4), 32768, np.int32))  # mode I: same 16-bit scale
    assert wide.mode == "I" and np.asarray(to_rgb(wide))[0, 0].tolist() == [128, 128, 128]


def test_other_modes_convert_to_rgb(tmp_path, extractor):
    la = tmp_path / "la.png"
    Image.new("LA", (8, 8), (100, 0)).save(la)  # alpha dropped, grey kept
    palette = tmp_path / "p.png"
    p = Image.new("P", (8, 8), 0)
    p.putpalette([200, 10, 20] + [0, 0, 0] * 255)
    p.save(palette, transparency=0)
    cmyk = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(cmyk, quality=95)  # magenta
    bilevel = tmp_path / "one.bmp"
    Image.new("1", (8, 8), 1).save(bilevel)
    expected = {la: (100, 100, 100), palette: (200, 10, 20), cmyk: (255, 0, 255),
                bilevel: (255, 255, 255)}  # fmt: skip
    for path, rgb in expected.items():
        img = read_image(path)
        assert img.mode == "RGB" and img.size == (8, 8), path
        np.testing.assert_allclose(np.asarray(img)[4, 4], rgb, atol=3, err_msg=str(path))
    floats = Image.fromarray(np.full((8, 8), 128.0, np.float32))  # mode F: PIL's 0-255
    assert np.asarray(to_rgb(floats))[0, 0].tolist() == [128, 128, 128]
    assert extractor([floats, str(la), str(cmyk)]).shape == (3, extractor.feature_dim)


# ------------------------------------------------------ bytes after the end marker
def _jpeg_bytes(tmp_path) -> bytes:
    """A real JPEG whose header holds an FF D9 pair (as an EXIF thumbnail's end does)."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    path = tmp_path / "src.jpg"
    Image.fromarray(pixels).save(path, quality=90, comment=b"thumbnail ends \xff\xd9 here")
    return path.read_bytes()


def test_trailing_bytes_are_accepted_and_cut_files_still_refused(tmp_path):
    data = _jpeg_bytes(tmp_path)
    trailer = b"camera maker notes " * 6  # no FF D9 in it
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data + trailer)
    assert b"\xff\xd9" not in padded.read_bytes()[-32:]  # the old check's window misses it
    assert image_problem(padded) is None
    np.testing.assert_array_equal(np.asarray(read_image(padded)), np.asarray(Image.open(padded)))
    for name, body in (("cut.jpg", data[: len(data) * 2 // 3]),
                       ("cut_then_padded.jpg", data[: len(data) * 2 // 3] + trailer)):  # fmt: skip
        cut = tmp_path / name
        cut.write_bytes(body)
        assert b"\xff\xd9" in body  # the header's pair: a whole-file search would pass it
        assert image_problem(cut) == "truncated (no JPEG end marker)", name
    png = tmp_path / "padded.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    whole = png.read_bytes()
    png.write_bytes(whole + trailer)
    assert image_problem(png) is None
    png.write_bytes(whole[:-20])
    assert image_problem(png) == "truncated (no PNG end chunk)"


def test_a_padded_jpeg_loads_with_its_data_set(tiny_reid, tmp_path):
    root = _market_copy(tiny_reid, tmp_path)
    victim = sorted((root / "bounding_box_test").glob("0*.jpg"))[-1]
    victim.write_bytes(victim.read_bytes() + b"\x00" * 100)
    assert victim.name in _gallery_paths(_data(root))


# ------------------------------------------------------------ the pixel limit
def test_images_over_max_image_pixels_are_bad_images(tiny_reid, tmp_path):
    root = _market_copy(tiny_reid, tmp_path)
    big = root / "bounding_box_test" / "0001_c1s1_009999_00.jpg"
    Image.new("RGB", (100, 60), (90, 90, 90)).save(big)  # 6000 pixels; the others 2048
    with pytest.raises(ValueError) as err:
        _data(root, max_image_pixels=4000)
    message = str(err.value)
    assert "1 unreadable" in message and big.name in message and "\n" not in message
    assert "100x60 = 6,000 pixels, over max_image_pixels 4,000" in message
    assert "raise data.max_image_pixels" in message and "data.skip_bad_images=true" in message
    with pytest.warns(UserWarning, match=f"leaving out 1 unreadable.*{big.name}"):
        assert big.name not in _gallery_paths(
            _data(root, max_image_pixels=4000, skip_bad_images=True)
        )
    assert big.name in _gallery_paths(_data(root, max_image_pixels=6000))


def test_max_image_pixels_is_a_checked_config_key(tiny_reid, tmp_path, capsys):
    from conftest import run_config

    from reid_dhm.runs.tasks import reid_data_kwargs

    cfg, _ = run_config("folder", [f"data.root={tiny_reid}", "data.max_image_pixels=4e3"], tmp_path)
    assert reid_data_kwargs(cfg)["max_image_pixels"] == 4000  # reaches the data manager
    assert run_config("folder", [], tmp_path)[0]["data"]["max_image_pixels"] == 89_478_485
    root = _market_copy(tiny_reid, tmp_path)
    Image.new("RGB", (100, 60)).save(root / "query" / "0001_c2s1_009999_00.jpg")
    argv = ["--dataset", "folder", "--root", str(root), "--output-dir", str(tmp_path / "run")]
    assert train_tool.main([*argv, *TINY, "data.max_image_pixels=0"]) == 2
    assert "data.max_image_pixels" in capsys.readouterr().err
    assert train_tool.main([*argv, *TINY, "data.max_image_pixels=4000"]) == 2  # at load
    err = capsys.readouterr().err.strip()
    assert "0001_c2s1_009999_00.jpg (too large: 100x60" in err and "\n" not in err


def test_a_real_decompression_bomb_is_a_bad_image_everywhere(tiny_reid, tmp_path, extractor):
    """20000x10000 (PIL's error size) at the default limit: no PIL warning or traceback."""
    bomb = _bilevel_png(tmp_path / "0002_c1s1_000001_00.png", 20000, 10000)
    assert bomb.stat().st_size < 100_000
    why = "too large: 20000x10000 = 200,000,000 pixels, over max_image_pixels 89,478,485"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning would fail here
        assert image_problem(bomb) == why
        with pytest.raises(ValueError, match=f"cannot read image {bomb}: {why}$"):
            read_image(bomb)
        with pytest.raises(ValueError, match=f"cannot read image {bomb}: {why}"):
            extractor([np.zeros((8, 8, 3), np.uint8), str(bomb)])
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # PIL's own guard is left as it was
    root = _market_copy(tiny_reid, tmp_path)
    shutil.copy(bomb, root / "bounding_box_test")
    with pytest.raises(ValueError, match=f"1 unreadable: bounding_box_test/{bomb.name} \\({why}"):
        _data(root)
    with pytest.warns(UserWarning, match="leaving out 1 unreadable"):
        assert bomb.name not in _gallery_paths(_data(root, skip_bad_images=True))


def test_retrieve_names_an_over_limit_image_in_one_line(tiny_reid, tmp_path, capsys):
    model = build_model("dhm_mobilenetv2", 3, pretrained=False)
    checkpoint = tmp_path / "c.pth"
    pre = Preprocessing(height=64, width=32)
    save_checkpoint(checkpoint, model, "dhm_mobilenetv2", 1, preprocessing=pre.to_dict())
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for path in sorted((tiny_reid / "bounding_box_test").glob("0*.jpg"))[:4]:
        shutil.copy(path, gallery)
    bomb = _bilevel_png(gallery / "0003_c2s1_000001_00.png", 20000, 10000)
    argv = ["--checkpoint", str(checkpoint), "--query", str(tiny_reid / "query"),
            "--gallery", str(gallery), "--output-dir", str(tmp_path / "out"),
            "--device", "cpu"]  # fmt: skip
    assert retrieve_tool.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cannot read image") and str(bomb) in err
    assert "too large: 20000x10000" in err and "\n" not in err


def test_a_large_allowed_image_is_named_once(tiny_reid, tmp_path, monkeypatch):
    root = _market_copy(tiny_reid, tmp_path)
    large = _bilevel_png(root / "bounding_box_test" / "0001_c1s1_009999_00.png", 10000, 10000)
    with pytest.raises(ValueError, match="10000x10000 = 100,000,000 pixels, over max_image"):
        _data(root)  # over PIL's limit: refused by default
    with pytest.warns(
        UserWarning, match=f"large image bounding_box_test/{large.name}: 10000x10000"
    ):
        assert large.name in _gallery_paths(_data(root, max_image_pixels=200_000_000))
    # Reading: warned by name (FeatureExtractor), not every epoch by the data sets.
    monkeypatch.setattr(images, "LARGE_IMAGE_PIXELS", 100)
    small = tmp_path / "small.png"
    Image.new("RGB", (20, 10)).save(small)
    with pytest.warns(UserWarning, match=f"large image {small}: 20x10 = 200 pixels"):
        read_image(small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(small, warn_large=False)


# ------------------------------------------------------------ ids and splits
def test_ids_beyond_int64_are_refused_at_load_naming_the_file(tiny_reid, tmp_path):
    with pytest.raises(ValueError, match="0001_c99999999999999999999s1.jpg: .*64-bit"):
        parse_name(Path("0001_c99999999999999999999s1.jpg"))
    assert parse_name(Path("9223372036854775807_c1s1.jpg")) == (2**63 - 1, 1)
    root = _market_copy(tiny_reid, tmp_path)
    name = "99999999999999999999_c1s1_000001_00.jpg"
    shutil.copy(sorted((root / "query").glob("*.jpg"))[0], root / "query" / name)
    with pytest.raises(ValueError) as err:
        _data(root)
    assert name in str(err.value) and "64-bit" in str(err.value) and "\n" not in str(err.value)
    assert parse_identity(name) == (-1, -1)  # retrieve: no identity, not an overflow later


def test_a_one_identity_training_split_is_refused(tiny_reid, tmp_path):
    root = _market_copy(tiny_reid, tmp_path)
    train = root / "bounding_box_train"
    keep = sorted(train.glob("*.jpg"))[0].name.split("_")[0]
    for path in train.glob("*.jpg"):
        if not path.name.startswith(keep + "_"):
            path.unlink()
    with pytest.raises(ValueError, match=f"{train}: .* only 1 identity; training needs at least 2"):
        _data(root, batch_size=1)
    assert _data(root, batch_size=1, training=False).num_train_pids == 1  # evaluation only


def test_an_all_junk_split_says_so(tiny_reid, tmp_path):
    root = _market_copy(tiny_reid, tmp_path)
    query = root / "query"
    files = sorted(query.glob("*.jpg"))
    for i, path in enumerate(files):
        path.rename(query / f"-1_c1s1_{i:06d}_00.jpg")
    with pytest.raises(ValueError, match=f"{query}: its {len(files)} images are all junk"):
        _data(root)
