"""Turning images into embeddings with a trained model: loaders, files, pipelines."""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor, nn
from tqdm import tqdm

from .data.reid_datasets import IMAGE_EXTENSIONS, read_image
from .models import MAIN, DHMNet
from .utils.checkpoint import load_checkpoint, model_from_checkpoint, unwrap
from .utils.device import resolve_device

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@torch.no_grad()
def extract_loader_features(
    model: nn.Module, loader, branches: Sequence[str] = (MAIN,), progress: str | None = None
) -> tuple[OrderedDict[str, Tensor], np.ndarray, np.ndarray, list[str]]:
    """Embeddings of every image a torchreid test loader yields.

    Returns:
        (features by branch, each (N, D_b) float32 on CPU; pids (N,); camids (N,); paths).
    """
    bare = unwrap(model)
    was_training = bare.training
    bare.eval()
    device = next(bare.parameters()).device
    feats = OrderedDict((b, []) for b in branches)
    pids, camids, paths = [], [], []
    try:
        for data in tqdm(loader, desc=progress, disable=progress is None, leave=False):
            imgs = data["img"].to(device, non_blocking=True)
            if branches == (MAIN,) or list(branches) == [MAIN]:
                feats[MAIN].append(bare(imgs).float().cpu())
            else:
                out = bare.forward_branches(imgs, branches)
                for b in branches:
                    feats[b].append(out.features[b].float().cpu())
            pids.extend(int(p) for p in data["pid"])
            camids.extend(int(c) for c in data["camid"])
            paths.extend(data["impath"])
    finally:
        bare.train(was_training)
    # An empty loader (a DDP shard of a query set smaller than the process count) still
    # gives (0, D) matrices, which gather and concatenate with the other shards.
    dims = bare.branch_feature_dims()
    stacked = OrderedDict(
        (b, torch.cat(v) if v else torch.zeros(0, dims[b], dtype=torch.float32))
        for b, v in feats.items()
    )
    return stacked, np.asarray(pids, dtype=np.int64), np.asarray(camids, dtype=np.int64), paths


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
        image_size: (H, W) the model was trained at.
        mean, std: input normalisation (ImageNet's by default, as in training).
        batch_size: images per forward pass.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda:1'``, ...
        branch: which branch embeds (``'main'``: the deployed model).
        normalize: L2-normalise the embeddings (for cosine / inner-product search).

    Calling it with image paths, a folder, PIL images, HxWx3 uint8 arrays or a
    (N, 3, H, W) float tensor already normalised returns a float32 CPU tensor (N, D).
    """

    def __init__(
        self,
        model: DHMNet | str | os.PathLike,
        image_size: tuple[int, int] = (256, 128),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        batch_size: int = 64,
        device: str | torch.device = "auto",
        branch: str = MAIN,
        normalize: bool = False,
    ):
        if isinstance(model, (str, os.PathLike)):
            model = model_from_checkpoint(model)
        bare = unwrap(model)
        if not isinstance(bare, DHMNet):
            raise TypeError(f"FeatureExtractor needs a reid_dhm model, got {type(bare).__name__}")
        if branch not in bare.branch_names:
            raise ValueError(f"unknown branch {branch!r}; this model has {list(bare.branch_names)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.device = resolve_device(device)
        self.model = (bare if branch != MAIN else bare.deploy()).to(self.device).eval()
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.mean, self.std = list(mean), list(std)
        self.batch_size = batch_size
        self.branch = branch
        self.normalize = normalize

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> FeatureExtractor:
        """Build from a reid_dhm checkpoint; image size and normalisation come from its config."""
        ckpt = load_checkpoint(path)
        data = (ckpt.get("config") or {}).get("data") or {}
        if "height" in data and "width" in data:
            kwargs.setdefault("image_size", (data["height"], data["width"]))
        if "norm_mean" in data:
            kwargs.setdefault("mean", data["norm_mean"])
            kwargs.setdefault("std", data["norm_std"])
        return cls(model_from_checkpoint(ckpt), **kwargs)

    @property
    def feature_dim(self) -> int:
        return self.model.branch_feature_dims()[self.branch]

    def preprocess(self, image: Image.Image | np.ndarray | str) -> Tensor:
        """One image -> (3, H, W) normalised float tensor."""
        if isinstance(image, (str, os.PathLike)):
            image = read_image(str(image))
        elif isinstance(image, np.ndarray):
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"array images must be HxWx3, got shape {image.shape}")
            image = Image.fromarray(image.astype(np.uint8))
        elif not isinstance(image, Image.Image):
            raise TypeError(f"cannot embed a {type(image).__name__}; give paths, PIL or arrays")
        image = image.convert("RGB").resize(self.image_size[::-1], Image.BILINEAR)
        return TF.normalize(TF.to_tensor(image), self.mean, self.std)

    @torch.no_grad()
    def __call__(self, images) -> Tensor:
        if isinstance(images, Tensor):
            batches = [
                images[i : i + self.batch_size] for i in range(0, len(images), self.batch_size)
            ]
        else:
            if isinstance(images, (str, os.PathLike)):
                items = list_images(images)
            elif isinstance(images, (Image.Image, np.ndarray)):
                items = [images]
            else:
                items = list(images)
            batches = (
                torch.stack([self.preprocess(x) for x in items[i : i + self.batch_size]])
                for i in range(0, len(items), self.batch_size)
            )
        out = []
        for batch in batches:
            batch = batch.to(self.device, dtype=torch.float32)
            emb = self.model.embed(batch, self.branch)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, dim=1)
            out.append(emb.float().cpu())
        if not out:
            return torch.zeros(0, self.feature_dim)
        return torch.cat(out)
