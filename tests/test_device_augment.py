"""Tensor augmentation (data.augment=tensor) against torchreid's PIL train transform.

* paired: under the same per-sample seeds both paths make the same draws, and the
  batched device ops reproduce PIL's arithmetic, so images and per-pixel statistics
  over many samples are identical; dropping any augmentation or changing any
  probability on the tensor side breaks that (checked here for each);
* unpaired: with independent seeds the per-pixel means and standard deviations of the
  two paths differ no more than two PIL runs differ from each other, while dropping an
  augmentation shows clearly at the same sample size;
* the loader: ``reid_train_loader(augment='tensor')`` yields the batches the PIL
  loader yields.
"""

import contextlib
import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Compose

from reid_dhm.data.device_augment import (
    BatchAugment,
    WorkerTransform,
    _resample,
    enlarged,
    pil_bilinear_taps,
    resolve_augment,
    torchreid_train_steps,
)
from reid_dhm.engines.seeding import sample_seed

H, W = 32, 16
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
ALL = ["random_flip", "random_crop", "random_patch", "color_jitter", "random_erase"]
NO_PATCH = [n for n in ALL if n != "random_patch"]


def base_images():
    """Four asymmetric, structured RGB images (40x20, resized to 32x16 by the path)."""
    yy, xx = np.mgrid[0:40, 0:20]
    images = []
    for k in range(4):
        a = np.stack([(xx * 12 + 30 * k) % 256, (yy * 6) % 256, ((xx + yy) * 5 + 60 * k) % 256])
        images.append(Image.fromarray(a.transpose(1, 2, 0).astype(np.uint8)))
    return images


BASE = base_images()


def seed_sample(run: int, i: int) -> None:
    s = sample_seed(run, 0, i)  # what EpochSeededDataset does around each sample
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)


def pil_path(run: int, n: int, names=NO_PATCH) -> torch.Tensor:
    steps = torchreid_train_steps(H, W, names, MEAN, STD)
    transform = Compose(list(steps.values()))  # torchreid's own train transform
    out = []
    for i in range(n):
        seed_sample(run, i)
        out.append(transform(BASE[i % 4].copy()))
    return torch.stack(out)


def tensor_path(run: int, n: int, names=NO_PATCH, mutate=None) -> torch.Tensor:
    steps = torchreid_train_steps(H, W, names, MEAN, STD)
    worker, batch = WorkerTransform(steps), BatchAugment(steps)
    if mutate is not None:
        mutate(worker, batch)
    images, params = [], []
    for i in range(n):
        seed_sample(run, i)
        u8, p = worker(BASE[i % 4].copy())
        assert u8.dtype == torch.uint8 and u8.shape == (3, H, W)
        images.append(u8)
        params.append(p)
    return batch(torch.stack(images), torch.stack(params))


def pixel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x.mean(0), x.std(0)


def stats_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean |difference| of the per-pixel means plus that of the per-pixel stds."""
    (ma, sa), (mb, sb) = pixel_stats(a), pixel_stats(b)
    return float((ma - mb).abs().mean() + (sa - sb).abs().mean())


def _set(obj, name, value):
    setattr(obj, name, value)


# Each breaks one augmentation on the tensor side only (torchreid's objects are shared
# by nothing: every path builds its own).
MUTATIONS = {
    "flip dropped": lambda w, b: _set(b, "flip", False),
    "flip p 0.4": lambda w, b: _set(w.flip, "p", 0.4),
    "crop dropped": lambda w, b: _set(b, "crop", False),
    "crop p 0.4": lambda w, b: _set(w.crop, "p", 0.4),
    "jitter dropped": lambda w, b: _set(b, "jitter", False),
    "jitter range": lambda w, b: _set(w.jitter, "brightness", [0.7, 1.3]),
    "erase dropped": lambda w, b: _set(b, "fill", None),
    "erase p 0.4": lambda w, b: _set(w.erase, "probability", 0.4),
}
PATCH_MUTATIONS = {
    "patch dropped": lambda w, b: _set(w, "pil_steps", w.pil_steps[:-1]),
    "patch p 0.3": lambda w, b: _set(w.patch, "prob_happen", 0.3),
}


@pytest.mark.parametrize("names", [NO_PATCH, ALL], ids=["no-patch", "with-patch"])
def test_paired_paths_identical(names):
    n = 200 if "random_patch" in names else 100  # the patch pool pastes from 100 patches on
    pil, ten = pil_path(0, n, names), tensor_path(0, n, names)
    assert torch.equal(pil, ten)
    (pm, ps), (tm, ts) = pixel_stats(pil), pixel_stats(ten)
    assert torch.equal(pm, tm) and torch.equal(ps, ts)
    # Any change to one augmentation shows in the per-pixel statistics.
    mutations = {**MUTATIONS, **PATCH_MUTATIONS} if "random_patch" in names else MUTATIONS
    if "random_patch" in names:  # flip and crop run on PIL then: their switches are moot
        mutations = {k: v for k, v in mutations.items() if k.split()[0] not in ("flip", "crop")}
    for name, mutate in mutations.items():
        changed = tensor_path(0, n, names, mutate)
        assert stats_distance(pil, changed) > 1e-3, name


@pytest.mark.slow
def test_unpaired_statistics_match():
    n = 800
    pil_a, pil_b = pil_path(1, n), pil_path(2, n)
    noise = stats_distance(pil_a, pil_b)  # what sampling alone gives at this size
    assert stats_distance(pil_a, tensor_path(3, n)) < 1.3 * noise
    for name in ("flip dropped", "crop dropped", "jitter dropped", "erase dropped"):
        assert stats_distance(pil_a, tensor_path(3, n, mutate=MUTATIONS[name])) > 1.7 * noise, name


@pytest.mark.parametrize("size", [(32, 16), (256, 128), (7, 5)])
def test_crop_taps_are_pils_resize(size):
    height, width = size
    big_h, big_w = enlarged(height, width)
    rng = np.random.default_rng(height)
    img = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    want = torch.from_numpy(np.asarray(img.resize((big_w, big_h), Image.BILINEAR)).copy())
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).to(torch.int32)[None]
    for dim, (n, big) in ((3, (width, big_w)), (2, (height, big_h))):
        idx, coef = pil_bilinear_taps(n, big)
        assert coef.sum(1).min() >= 2**22 - 3 and coef.sum(1).max() <= 2**22 + 3
        x = _resample(x, dim, torch.from_numpy(idx), torch.from_numpy(coef),
                      torch.arange(big)[None])  # fmt: skip
    assert torch.equal(x[0].permute(1, 2, 0).to(torch.uint8), want)


def test_resolve_augment():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_augment("auto", cpu) == "pil" and resolve_augment("auto", cuda) == "tensor"
    assert resolve_augment("tensor", cpu) == "tensor"
    with pytest.raises(ValueError, match=r"unknown data.augment 'gpu'; valid ones are"):
        resolve_augment("gpu", cpu)


def test_loader_tensor_path_equals_pil_path(tiny_reid):
    from reid_dhm.data.reid_manager import build_reid_datamanager
    from reid_dhm.engines.prefetch import DeviceLoader
    from reid_dhm.engines.reid_loaders import reid_train_loader

    batches = {}
    for augment in ("pil", "tensor"):
        with contextlib.redirect_stdout(io.StringIO()):
            manager = build_reid_datamanager(
                "folder", tiny_reid, 32, 16, transforms=NO_PATCH, batch_size=4, workers=0
            )
        sampler = reid_train_loader(manager, 4, seed=5, augment=augment, device="cpu")
        sampler.set_epoch(1)
        loader = manager.train_loader
        assert isinstance(loader, DeviceLoader) == (augment == "tensor")
        assert len(loader) == len(manager.train_loader.sampler) // 4
        batches[augment] = [b["img"] for b in loader]
    assert len(batches["pil"]) == len(batches["tensor"]) > 1
    for a, b in zip(batches["pil"], batches["tensor"]):
        assert b.dtype == torch.float32 and b.shape == a.shape == (4, 3, 32, 16)
        assert torch.equal(a, b)


def test_training_run_with_tensor_augmentation(tiny_reid, tmp_path, monkeypatch):
    from reid_dhm.config import resolve_config
    from reid_dhm.runs import train

    calls = []
    original = BatchAugment.__call__

    def counted(self, images, params):
        calls.append(images.dtype)
        return original(self, images, params)

    monkeypatch.setattr(BatchAugment, "__call__", counted)

    overrides = [
        "model.name=mobilenetv2", "loss.mode=baseline", "model.pretrained=false",
        "train.fixbase_epoch=0", "train.max_epoch=1", "train.device=cpu", "data.workers=0",
        "data.height=64", "data.width=32", "data.batch_size=8", "test.vis_queries=0",
        "data.augment=tensor", f"data.transforms={ALL}",
    ]  # fmt: skip
    cfg = resolve_config("folder", None, [*overrides, f"data.root={tiny_reid}"])
    cfg["output_dir"] = str(tmp_path / "run")
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg)
    record = result.history[-1]
    assert calls and set(calls) == {torch.uint8}  # every training batch took the tensor path
    assert record["epoch"] == 1 and np.isfinite(record["loss"])
    assert 0 <= result.results["folder"]["main"]["mAP"] <= 1
