"""torchreid's training augmentations, batched on the training device.

torchreid's train transform (``build_transforms``) runs per image in the loader
workers, on PIL images: Resize -> random_flip -> random_crop -> random_patch ->
color_jitter -> ToTensor -> Normalize -> random_erase. On a GPU the workers then set
the pace. Here the work is split:

* in the workers (:class:`WorkerTransform`): the image, already read by the one image
  reader (``utils.images.read_image``), is resized by torchvision's ``Resize`` (the
  same pixels as torchreid's) and returned as a uint8 (3, H, W) tensor, a quarter of
  the float32 bytes to pin and copy, with a (P,) vector of the random parameters of
  every later augmentation. The parameters are drawn from the global RNGs in exactly
  torchreid's order (flip: ``torch.rand``; crop, erasing: ``random``; jitter:
  ``ColorJitter.get_params``), so under the per-sample seeding of
  ``engines.seeding.EpochSeededDataset`` a sample gets the same decisions as on the
  PIL path. ``random_patch`` keeps a per-worker pool of patches of earlier images and
  stays on PIL: with it, flip, crop and patch run in the worker (torchreid's own
  objects, in its order) and only the later steps are batched;
* on the device (:class:`BatchAugment`), for a whole (B, 3, H, W) batch with no host
  read: flip; crop (PIL's 1.125x bilinear enlargement in its own fixed-point integer
  arithmetic, two 8-bit passes, evaluated only at the cropped window); colour jitter
  (PIL's brightness and contrast blends, truncation included, in each sample's drawn
  order); /255 and normalisation; random erasing (filled with the normalisation mean,
  torchreid's choice).

For the same draws the result is bit-identical to torchreid's PIL pipeline, so the
distributions are torchreid's: the run's own transform objects supply every
probability and range. ``tests/test_device_augment.py`` compares both paths sample by
sample and by per-pixel statistics over many samples.
"""

from __future__ import annotations

import contextlib
import io
import math
import random

import numpy as np
import torch
from torch import Tensor

# data.augment: where training augmentation runs. pil: torchreid's transforms in the
# loader workers (bit-identical to torchreid); tensor: workers decode to uint8 and this
# module's batched ops run on the training device; auto: tensor on CUDA, else pil.
AUGMENT_MODES = ("auto", "pil", "tensor")
# torchreid's Random2DTranslation enlarges by this factor before its crop.
CROP_ENLARGE = 1.125
# Layout of the per-sample parameter vector.
FLIP, CROP, CROP_X, CROP_Y, BRIGHT, CONTRAST, BRIGHT_FIRST = range(7)
ERASE, ERASE_TOP, ERASE_LEFT, ERASE_H, ERASE_W = range(7, 12)
NUM_PARAMS = 12
# PIL's RGB -> L weights (Convert.c: L24), in 1/65536.
_L_WEIGHTS = (19595, 38470, 7471)


def resolve_augment(mode: str, device: torch.device) -> str:
    """``data.augment`` for ``device``: 'pil' or 'tensor'."""
    if mode not in AUGMENT_MODES:
        raise ValueError(f"unknown data.augment {mode!r}; valid ones are {list(AUGMENT_MODES)}")
    if mode == "auto":
        return "tensor" if device.type == "cuda" else "pil"
    return mode


def train_steps(compose) -> dict:
    """The steps of torchreid's train transform (a torchvision ``Compose``), by type name."""
    return {type(t).__name__: t for t in compose.transforms}


def torchreid_train_steps(height, width, transforms, mean, std) -> dict:
    """``train_steps`` of the transform torchreid's ``build_transforms`` makes (silenced)."""
    from torchreid.reid.data.transforms import build_transforms

    with contextlib.redirect_stdout(io.StringIO()):
        train, _ = build_transforms(height, width, list(transforms), list(mean), list(std))
    return train_steps(train)


def _input_size(steps: dict) -> tuple[int, int]:
    size = steps["Resize"].size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


class WorkerTransform:
    """PIL image -> (uint8 (3, H, W) tensor, (NUM_PARAMS,) float32 parameters).

    The training dataset's ``transform`` in the loader workers, made from the steps of
    torchreid's train transform (``train_steps``): every probability and range is read
    from torchreid's own objects.
    """

    def __init__(self, steps: dict):
        self.size = _input_size(steps)
        self.resize = steps["Resize"]
        self.flip = steps.get("RandomHorizontalFlip")
        self.crop = steps.get("Random2DTranslation")
        self.patch = steps.get("RandomPatch")
        self.jitter = steps.get("ColorJitter")
        self.erase = steps.get("RandomErasing")
        # With random_patch, everything up to it stays on PIL, in torchreid's order.
        self.pil_steps = [s for s in (self.flip, self.crop, self.patch) if s] if self.patch else []

    def __call__(self, img) -> tuple[Tensor, Tensor]:
        img = self.resize(img)
        params = np.zeros(NUM_PARAMS, dtype=np.float32)
        for step in self.pil_steps:
            img = step(img)
        if not self.patch:
            if self.flip is not None:
                params[FLIP] = float(torch.rand(1) < self.flip.p)
            if self.crop is not None:
                self._draw_crop(params)
        if self.jitter is not None:
            self._draw_jitter(params)
        if self.erase is not None:
            self._draw_erase(params)
        pixels = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
        return pixels.permute(2, 0, 1).contiguous(), torch.from_numpy(params)

    def _draw_crop(self, params) -> None:
        # Random2DTranslation.__call__'s draws: crop when uniform(0, 1) <= p.
        if random.uniform(0, 1) > self.crop.p:
            return
        big_h, big_w = enlarged(*self.size)
        params[CROP] = 1
        params[CROP_X] = int(round(random.uniform(0, big_w - self.size[1])))
        params[CROP_Y] = int(round(random.uniform(0, big_h - self.size[0])))

    def _draw_jitter(self, params) -> None:
        j = self.jitter
        order, bright, contrast, _, _ = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
        order = order.tolist()
        params[BRIGHT] = 1.0 if bright is None else bright
        params[CONTRAST] = 1.0 if contrast is None else contrast
        params[BRIGHT_FIRST] = float(order.index(0) < order.index(1))

    def _draw_erase(self, params) -> None:
        # RandomErasing.__call__'s draws, on an (H, W) image: x1 is the row.
        e, (height, width) = self.erase, self.size
        if random.uniform(0, 1) > e.probability:
            return
        for _ in range(100):
            target = random.uniform(e.sl, e.sh) * height * width
            aspect = random.uniform(e.r1, 1 / e.r1)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                params[ERASE] = 1
                params[ERASE_TOP] = random.randint(0, height - h)
                params[ERASE_LEFT] = random.randint(0, width - w)
                params[ERASE_H], params[ERASE_W] = h, w
                return


def enlarged(height: int, width: int) -> tuple[int, int]:
    """Random2DTranslation's enlarged size (height, width)."""
    return int(round(height * CROP_ENLARGE)), int(round(width * CROP_ENLARGE))


class BatchAugment:
    """The batched remainder of torchreid's train transform, on any device.

    Args:
        steps: ``train_steps`` of the run's torchreid train transform (input size,
            which augmentations, normalisation, the erasing fill, which is torchreid's
            ``mean``).

    Call with ``images`` (B, 3, H, W) uint8 and ``params`` (B, NUM_PARAMS) from
    :class:`WorkerTransform`, both on the device: returns (B, 3, H, W) float32, the
    values torchreid's transform gives for the same draws.
    """

    def __init__(self, steps: dict):
        self.size = _input_size(steps)
        patch = "RandomPatch" in steps  # then the workers already flipped and cropped
        self.flip = "RandomHorizontalFlip" in steps and not patch
        self.crop = "Random2DTranslation" in steps and not patch
        self.jitter = "ColorJitter" in steps
        norm = steps["Normalize"]
        self.mean = torch.tensor(norm.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(norm.std, dtype=torch.float32).view(1, 3, 1, 1)
        erase = steps.get("RandomErasing")
        self.fill = None
        if erase is not None:
            self.fill = torch.tensor(erase.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._device_cache: dict = {}  # device copies of constants and crop taps

    def __call__(self, images: Tensor, params: Tensor) -> Tensor:
        x = images.float()
        p = params.to(device=x.device, dtype=torch.float32)
        if self.flip:
            x = torch.where(p[:, FLIP, None, None, None] > 0, x.flip(3), x)
        if self.crop:
            x = self._crop(x, p)
        if self.jitter:
            x = self._jitter(x, p)
        mean, std, fill = self._constants(x.device)
        x = x.div_(255).sub_(mean).div_(std)  # ToTensor, then Normalize
        if fill is not None:
            x = self._erase(x, p, fill)
        return x

    def _constants(self, device) -> tuple:
        """mean, std and the erasing fill on ``device``, copied there once (a copy from
        pageable host memory every batch would be a host sync every batch)."""
        key = ("constants", str(device))
        if key not in self._device_cache:
            fill = None if self.fill is None else self.fill.to(device)
            self._device_cache[key] = (self.mean.to(device), self.std.to(device), fill)
        return self._device_cache[key]

    def _crop(self, x: Tensor, p: Tensor) -> Tensor:
        """Random2DTranslation on the samples that drew it: PIL's bilinear enlargement
        (two 8-bit passes, horizontal first, its fixed-point taps: bit-identical), only
        at the cropped window, then the crop."""
        height, width = self.size
        rows = torch.arange(height, device=x.device)[None, :] + p[:, CROP_Y, None].long()
        cols = torch.arange(width, device=x.device)[None, :] + p[:, CROP_X, None].long()
        big_h, big_w = enlarged(height, width)
        x8 = x.to(torch.int32)
        wide = _resample(x8, 3, *self._taps(width, big_w, x.device), cols)  # (B, 3, H, W)
        out = _resample(wide, 2, *self._taps(height, big_h, x.device), rows)
        return torch.where(p[:, CROP, None, None, None] > 0, out.float(), x)

    def _taps(self, size: int, big: int, device) -> tuple[Tensor, Tensor]:
        key = (size, big, str(device))
        if key not in self._device_cache:
            idx, coef = pil_bilinear_taps(size, big)
            self._device_cache[key] = (torch.from_numpy(idx).to(device),
                                    torch.from_numpy(coef).to(device))  # fmt: skip
        return self._device_cache[key]

    def _jitter(self, x: Tensor, p: Tensor) -> Tensor:
        """ColorJitter(brightness, contrast) as PIL computes it, in each sample's order."""
        bright = p[:, BRIGHT, None, None, None]
        contrast = p[:, CONTRAST, None, None, None]
        first = p[:, BRIGHT_FIRST, None, None, None] > 0
        b_then_c = _contrast(_brightness(x, bright), contrast)
        c_then_b = _brightness(_contrast(x, contrast), bright)
        return torch.where(first, b_then_c, c_then_b)

    def _erase(self, x: Tensor, p: Tensor, fill: Tensor) -> Tensor:
        height, width = self.size
        rows = torch.arange(height, device=x.device)[None, :, None]
        cols = torch.arange(width, device=x.device)[None, None, :]
        top, left = p[:, ERASE_TOP, None, None], p[:, ERASE_LEFT, None, None]
        inside = (
            (p[:, ERASE, None, None] > 0)
            & (rows >= top)
            & (rows < top + p[:, ERASE_H, None, None])
            & (cols >= left)
            & (cols < left + p[:, ERASE_W, None, None])
        )  # (B, H, W)
        return torch.where(inside[:, None], fill, x)


# PIL's fixed-point resampling precision (Resample.c: PRECISION_BITS = 32 - 8 - 2).
_PRECISION_BITS = 22


def pil_bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PIL's bilinear resampling taps from ``in_size`` to ``out_size`` (>= in_size) pixels:
    (out_size, 3) int64 source indices and int32 fixed-point weights (Resample.c's
    precompute_coeffs and normalize_coeffs_8bpc; unused taps have weight 0)."""
    if out_size < in_size:
        raise ValueError(f"enlargement only: {in_size} -> {out_size} pixels")
    scale = in_size / out_size
    support = 1.0 * max(scale, 1.0)
    idx = np.zeros((out_size, 3), dtype=np.int64)
    coef = np.zeros((out_size, 3), dtype=np.int32)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # C casts truncate toward zero
        count = min(int(center + support + 0.5), in_size) - xmin
        w = np.array([max(0.0, 1.0 - abs((x + xmin - center + 0.5) / max(scale, 1.0)))
                      for x in range(count)])  # fmt: skip
        if w.sum() != 0:
            w = w / w.sum()
        fixed = np.where(w < 0, -0.5 + w * (1 << _PRECISION_BITS), 0.5 + w * (1 << _PRECISION_BITS))
        idx[xx, :count] = xmin + np.arange(count)
        coef[xx, :count] = fixed.astype(np.int64)  # truncation, as (int) in C
    return idx, coef


def _resample(x: Tensor, dim: int, idx: Tensor, coef: Tensor, pick: Tensor) -> Tensor:
    """One PIL 8-bit resampling pass along ``dim`` (2: rows, 3: columns) of int32 ``x``
    (B, 3, H, W), evaluated only at the output positions ``pick`` (B, N) of each sample:
    sum of taps in int32 (weights sum to 2^22, so no overflow), rounded, clipped."""
    taps = idx[pick]  # (B, N, 3)
    weights = coef[pick]
    if dim == 3:
        src = torch.gather(
            x[..., None].expand(*x.shape, 3),
            3,
            taps[:, None, None].expand(x.shape[0], x.shape[1], x.shape[2], -1, -1),
        )
        acc = (src * weights[:, None, None]).sum(-1)
    else:
        src = torch.gather(
            x[..., None].expand(*x.shape, 3).transpose(2, 3),
            3,
            taps[:, None, None].expand(x.shape[0], x.shape[1], x.shape[3], -1, -1),
        )  # (B, 3, W, N, 3)
        acc = (src * weights[:, None, None]).sum(-1).transpose(2, 3)
    return ((acc + (1 << (_PRECISION_BITS - 1))) >> _PRECISION_BITS).clamp_(0, 255)


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """PIL's ``Image.blend(degenerate, x, factor)`` on 8-bit values: float32
    ``d + factor (x - d)``, truncated and clipped to [0, 255]."""
    return (degenerate + factor * (x - degenerate)).trunc_().clamp_(0, 255)


def _brightness(x: Tensor, factor: Tensor) -> Tensor:
    return _blend(torch.zeros((), device=x.device), x, factor)


def _contrast(x: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean grey level (PIL: int(mean of convert('L') + 0.5))."""
    r, g, b = (x[:, c].to(torch.int32) * w for c, w in enumerate(_L_WEIGHTS))
    grey = (r + g + b + 0x8000) >> 16  # (B, H, W) PIL's L
    mean = (grey.double().mean(dim=(1, 2)) + 0.5).floor().float()[:, None, None, None]
    return _blend(mean, x, factor)


__all__ = [
    "AUGMENT_MODES",
    "NUM_PARAMS",
    "BatchAugment",
    "WorkerTransform",
    "resolve_augment",
    "torchreid_train_steps",
    "train_steps",
]
