"""Turning images into embeddings with a trained model: loaders, files, pipelines."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from .data.preprocessing import IMAGE_EXTENSIONS, INTERPOLATIONS, Preprocessing
from .models import MAIN, DHMNet
from .models.checkpoint import model_from_checkpoint
from .utils.checkpoint import load_checkpoint, unwrap
from .utils.device import resolve_device
from .utils.images import read_image, to_rgb
from .utils.options import DEFAULT_MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS
from .utils.progress import Progress


@torch.no_grad()
def extract_loader_features(
    model: nn.Module, loader, branches: Sequence[str] = (MAIN,), progress: str | None = None
) -> tuple[OrderedDict[str, Tensor], np.ndarray, np.ndarray, list[str]]:
    """Embeddings of every image a torchreid test loader yields.

    ``progress``: what a progress display calls the work (``query features``): a bar
    on a terminal, else a line every 30 s; None shows nothing.

    Returns:
        (features by branch, each (N, D_b) float32 on CPU; pids (N,); camids (N,); paths).
    """
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    device = next(bare.parameters()).device
    feats = OrderedDict((b, []) for b in branches)
    pids, camids, paths = [], [], []
    dataset = getattr(loader, "dataset", None)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    shown = Progress(total, progress or "", "images", enabled=progress is not None)
    try:
        for data in loader:
            imgs = data["img"].to(device, non_blocking=True)
            if branches == (MAIN,) or list(branches) == [MAIN]:
                feats[MAIN].append(bare(imgs).float().cpu())
            else:
                out = bare.branch_embeddings(imgs, branches)
                for b in branches:
                    feats[b].append(out[b].float().cpu())
            pids.extend(int(p) for p in data["pid"])
            camids.extend(int(c) for c in data["camid"])
            paths.extend(data["impath"])
            shown.update(len(imgs))
    finally:
        shown.close()
        bare.train(was_training)
    # An empty loader (a DDP shard of a query set smaller than the process count) still
    # gives (0, D) matrices, which gather and concatenate with the other shards.
    dims = bare.branch_feature_dims()
    stacked = OrderedDict(
        (b, torch.cat(v) if v else torch.zeros(0, dims[b], dtype=torch.float32))
        for b, v in feats.items()
    )
    return stacked, np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64), paths


def trained_image_limit(ckpt: Mapping) -> int:
    """The pixel limit a checkpoint's run read images with (``data.max_image_pixels``)."""
    data = (ckpt.get("config") or {}).get("data") or {}
    return data.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS)


def list_images(source: str | os.PathLike | Iterable) -> list[str]:
    """Image files from a file, a folder (sorted, non-recursive) or an iterable of paths."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {path}")
            return files
        if path.is_file():
            return [str(path)]
        raise FileNotFoundError(f"no such image file or folder: {path}")
    return [str(p) for p in source]


class FeatureExtractor:
    """Images in, (N, D) embeddings out: the deployed model in a user's pipeline.

    Args:
        model: a reid_dhm model, or a checkpoint path (see :meth:`from_checkpoint`).
        preprocessing: input size, interpolation and normalisation (a
            :class:`Preprocessing` or its dict); ``from_checkpoint`` takes the
            checkpoint's own. ``image_size``, ``mean``, ``std`` and ``interpolation``
            override single fields.
        batch_size: images per forward pass.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda:1'``, ...
        branch: which branch embeds (``'main'``: the deployed model).
        normalize: L2-normalise the embeddings (for cosine / inner-product search).
        bgr: default channel order of numpy arrays (True for OpenCV frames).
        max_image_pixels: image files with more pixels are refused (one ValueError
            naming the file) before decoding; ``from_checkpoint`` takes the training
            run's ``data.max_image_pixels`` (default: PIL's limit, 89,478,485).

    Accepted images, one or a list (a list may mix kinds):

    * a file path (a folder: its images, sorted), a PIL image;
    * a numpy uint8 array HxW (grey), HxWx1, HxWx3 (RGB, or BGR with ``bgr=True``) or
      HxWx4 (RGBA / BGRA), or NxHxWxC for N images;
    * a torch uint8 tensor 3xHxW or Nx3xHxW (RGB), preprocessed like an array;
    * a torch float tensor 3xHxW or Nx3xHxW: already model input (resized and
      normalised), passed through as it is.

    Conversion rule: files and PIL images are turned upright by their EXIF
    orientation; greyscale is replicated to three channels (16-bit grey scaled to
    8 bits), an alpha channel is dropped (colour values kept, not composited),
    palette images are expanded.
    Every image is resized to the input size with the stored interpolation (PIL),
    scaled to [0, 1] and normalised. The same picture in any of these forms gives the
    same embedding, and embedding in batches gives what one-by-one gives (up to
    float rounding). Returns a float32 CPU tensor (N, D).
    """

    def __init__(
        self,
        model: DHMNet | str | os.PathLike,
        image_size: tuple[int, int] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        branch: str = MAIN,
        normalize: bool = False,
        interpolation: str | None = None,
        preprocessing: Preprocessing | Mapping | None = None,
        bgr: bool = False,
        max_image_pixels: int | None = None,
    ):
        if isinstance(model, (str, os.PathLike)):
            ckpt = load_checkpoint(model)
            model = model_from_checkpoint(ckpt)
            if preprocessing is None:
                preprocessing = Preprocessing.from_checkpoint(ckpt)
            if max_image_pixels is None:
                max_image_pixels = trained_image_limit(ckpt)
        bare = unwrap(model)
        if not isinstance(bare, DHMNet):
            raise TypeError(
                "FeatureExtractor needs a reid_dhm model or a checkpoint's path (a run's "
                f"checkpoint.pth), got {'None' if bare is None else type(bare).__name__}"
            )
        if branch not in bare.branch_names:
            raise ValueError(f"unknown branch {branch!r}; this model has {list(bare.branch_names)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(preprocessing, Mapping):
            preprocessing = Preprocessing.from_dict(preprocessing)
        fields = (preprocessing or Preprocessing()).to_dict()
        if image_size is not None:
            fields["height"], fields["width"] = (int(image_size[0]), int(image_size[1]))
        for key, value in (("mean", mean), ("std", std), ("interpolation", interpolation)):
            if value is not None:
                fields[key] = value
        self.preprocessing = Preprocessing.from_dict(fields)
        self.device = resolve_device(device)
        deployed = bare.deploy() if branch == MAIN else bare
        # A timm model deploys to timm's own class (no embed()); its main-branch embedding
        # is the same, so the model itself embeds (the aux branches are never run).
        self.model = (deployed if isinstance(deployed, DHMNet) else bare).to(self.device).eval()
        self.batch_size = batch_size
        self.branch = branch
        self.normalize = normalize
        self.bgr = bool(bgr)
        if max_image_pixels is None:
            max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
        self.max_image_pixels = MAX_IMAGE_PIXELS.check(max_image_pixels, "max_image_pixels")
        pre = self.preprocessing
        self._filter = INTERPOLATIONS[pre.interpolation]
        self._mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(pre.std, dtype=torch.float32).view(1, 3, 1, 1)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | Mapping, **kwargs) -> FeatureExtractor:
        """Build from a reid_dhm checkpoint (a file, or one already loaded), with the
        preprocessing stored in it."""
        ckpt = path if isinstance(path, Mapping) else load_checkpoint(path)
        kwargs.setdefault("preprocessing", Preprocessing.from_checkpoint(ckpt))
        kwargs.setdefault("max_image_pixels", trained_image_limit(ckpt))
        return cls(model_from_checkpoint(ckpt), **kwargs)

    @property
    def image_size(self) -> tuple[int, int]:
        return self.preprocessing.size

    @property
    def mean(self) -> list[float]:
        return list(self.preprocessing.mean)

    @property
    def std(self) -> list[float]:
        return list(self.preprocessing.std)

    @property
    def feature_dim(self) -> int:
        return self.model.branch_feature_dims()[self.branch]

    # ------------------------------------------------------------- preprocessing
    def _pil(self, image, bgr: bool) -> Image.Image:
        """One image of any accepted kind -> RGB PIL image (conversion rule above)."""
        if isinstance(image, (str, os.PathLike)):
            return read_image(image, self.max_image_pixels)
        if isinstance(image, Image.Image):
            return to_rgb(image)
        if isinstance(image, Tensor):
            if image.dtype != torch.uint8 or image.ndim != 3 or image.shape[0] not in (1, 3, 4):
                raise ValueError(
                    "a tensor image to preprocess must be uint8 CxHxW (C = 1, 3 or 4), got "
                    f"{image.dtype} of shape {tuple(image.shape)}"
                )
            return self._pil(image.permute(1, 2, 0).cpu().numpy(), bgr=False)
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8:
                raise ValueError(
                    f"array images must be uint8 (0-255), got {image.dtype}; convert with "
                    "(x * 255).round().astype(np.uint8) if yours are floats in [0, 1]"
                )
            if image.ndim == 3 and image.shape[2] == 1:
                image = image[:, :, 0]
            if image.ndim == 2:
                return Image.fromarray(image, "L").convert("RGB")
            if image.ndim != 3 or image.shape[2] not in (3, 4):
                raise ValueError(
                    f"array images must be HxW, HxWx1, HxWx3 or HxWx4, got shape {image.shape}"
                )
            rgb = image[:, :, :3]
            if bgr:
                rgb = rgb[:, :, ::-1]
            return Image.fromarray(np.ascontiguousarray(rgb), "RGB")
        raise TypeError(
            f"cannot embed a {type(image).__name__}; give paths, PIL images, numpy arrays or "
            "tensors"
        )

    def _pixels(self, image, bgr: bool) -> np.ndarray:
        """(H, W, 3) uint8 RGB at the model's input size."""
        img = self._pil(image, bgr)
        h, w = self.preprocessing.size
        if img.size != (w, h):
            img = img.resize((w, h), self._filter)
        return np.asarray(img, dtype=np.uint8)

    def _normalise(self, pixels: np.ndarray) -> Tensor:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) normalised float32, in one pass."""
        # Contiguous NCHW whatever the source: a channels-last view would make the
        # convolutions take other kernels, and the same picture a slightly other embedding.
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
        return x.sub_(self._mean).div_(self._std)

    def preprocess(self, image, bgr: bool | None = None) -> Tensor:
        """One image -> (3, H, W) model input (resized, normalised float32)."""
        bgr = self.bgr if bgr is None else bgr
        return self._normalise(np.stack([self._pixels(image, bgr)]))[0]

    def _items(self, images) -> list:
        """The call's images as a flat list of single images (float tensors: batches)."""
        if isinstance(images, (str, os.PathLike)):
            return list_images(images)
        if isinstance(images, (Image.Image,)):
            return [images]
        if isinstance(images, np.ndarray):
            return list(images) if images.ndim == 4 else [images]
        if isinstance(images, Tensor):
            if images.dtype == torch.uint8:
                return list(images) if images.ndim == 4 else [images]
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[1] != 3:
                raise ValueError(
                    f"float tensors are model input and must be 3xHxW or Nx3xHxW, got shape "
                    f"{tuple(images.shape)}"
                )
            return [images]
        items = []
        for x in images:
            if isinstance(x, Tensor) and x.is_floating_point():
                items.append(x[None] if x.ndim == 3 else x)
            else:
                items.append(x)
        return items

    def _batches(self, items: list, bgr: bool) -> Iterator[Tensor]:
        """Model-input batches of at most ``batch_size`` images, in order."""
        pending: list[np.ndarray] = []
        for item in items:
            if isinstance(item, Tensor) and item.is_floating_point():
                if pending:
                    yield self._normalise(np.stack(pending))
                    pending = []
                for i in range(0, len(item), self.batch_size):
                    yield item[i : i + self.batch_size].contiguous()
                continue
            pending.append(self._pixels(item, bgr))
            if len(pending) == self.batch_size:
                yield self._normalise(np.stack(pending))
                pending = []
        if pending:
            yield self._normalise(np.stack(pending))

    # ------------------------------------------------------------------- embedding
    @torch.inference_mode()
    def _embed(self, batches: Iterator[Tensor]) -> Tensor:
        out = []
        # Decoding and resizing (PIL releases the GIL) of the next batch overlap the
        # forward pass of the current one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            future = pool.submit(next, batches, None)
            while True:
                batch = future.result()
                if batch is None:
                    break
                future = pool.submit(next, batches, None)
                batch = batch.to(self.device, dtype=torch.float32, non_blocking=True)
                emb = self.model.embed(batch, self.branch)
                if self.normalize:
                    emb = torch.nn.functional.normalize(emb, dim=1)
                out.append(emb.float().cpu())
        if not out:
            return torch.zeros(0, self.feature_dim)
        return torch.cat(out)

    def __call__(self, images, bgr: bool | None = None) -> Tensor:
        """Embed one image or many (see the class docstring); returns (N, D)."""
        bgr = self.bgr if bgr is None else bgr
        return self._embed(self._batches(self._items(images), bgr))

    def crops(self, frame, boxes_xyxy, bgr: bool | None = None) -> Tensor:
        """Embed the boxes ``(N, 4)`` [x1, y1, x2, y2] (pixels) cut from one frame.

        Boxes are rounded to whole pixels and clipped to the frame (as trackers such as
        BoxMOT do); a box that is empty or entirely outside the frame is a ValueError
        naming it. ``frame``: an HxWx3 uint8 array (BGR with ``bgr=True``), a PIL image
        or an image path. Returns (N, D); (0, D) for no boxes.
        """
        bgr = self.bgr if bgr is None else bgr
        if isinstance(frame, (str, os.PathLike)):
            frame, bgr = np.asarray(read_image(frame, self.max_image_pixels)), False
        elif isinstance(frame, Image.Image):
            frame, bgr = np.asarray(to_rgb(frame)), False
        if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3):
            raise ValueError("crops() needs one frame: an HxWx3 uint8 array, a PIL image or a path")
        boxes = np.asarray(boxes_xyxy, dtype=np.float64)
        if boxes.size == 0:
            return torch.zeros(0, self.feature_dim)
        if boxes.ndim == 1:
            boxes = boxes[None]
        if boxes.ndim != 2 or boxes.shape[1] < 4 or not np.isfinite(boxes[:, :4]).all():
            raise ValueError(
                f"boxes must be (N, 4) finite [x1, y1, x2, y2], got shape {boxes.shape}"
            )
        h, w = frame.shape[:2]
        cuts = []
        for i, box in enumerate(boxes[:, :4]):
            x1, y1, x2, y2 = np.round(box).astype(np.int64)
            cx1, cy1, cx2, cy2 = max(0, x1), max(0, y1), min(w, x2), min(h, y2)
            if cx2 <= cx1 or cy2 <= cy1:
                raise ValueError(
                    f"box {i} {box.tolist()} is empty or outside the {w}x{h} frame after clipping"
                )
            cuts.append(frame[cy1:cy2, cx1:cx2])
        return self(cuts, bgr=bgr)
