"""Query-by-gallery distance blocks, one matrix product per block of queries.

Distances (float32):

* ``'euclidean'``: squared L2, ``|q|^2 + |g|^2 - 2 q.g`` computed in the same order as
  torchreid's ``compute_distance_matrix`` (same ranking as true L2).
* ``'cosine'``: ``1 - cos(q, g)``; a zero vector has cosine 0 to everything.

The gallery is never copied: its norms are precomputed once and each block is one
``torch.mm`` plus in-place elementwise passes, so a block costs ``4 * B * G`` bytes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .validate import check_metric, squared_norms

# Same floor as torch.nn.functional.normalize, so zero vectors map to distance 1.
_NORM_EPS = 1e-12


class DistanceBlocks:
    """Computes ``dist(queries, gallery)`` blocks against a fixed gallery.

    Args:
        gf: gallery features, (G, D) float32, on the compute device.
        metric: ``'euclidean'`` or ``'cosine'``.
        sq_norms: (G,) squared row norms of ``gf`` if already known.
    """

    def __init__(self, gf: Tensor, metric: str, sq_norms: Tensor | None = None):
        self.metric = check_metric(metric)
        self.gf = gf
        sq = squared_norms(gf) if sq_norms is None else sq_norms
        if self.metric == "euclidean":
            self._gterm = sq  # (G,) |g|^2
        else:
            # Scale the product's columns by 1/|g| instead of normalising a copy of the
            # gallery: a 500k x 2048 gallery would need another 4 GB otherwise.
            self._gterm = sq.sqrt().clamp_min(_NORM_EPS).reciprocal().neg_()  # (G,) -1/|g|

    def __call__(self, q: Tensor, out: Tensor | None = None) -> Tensor:
        """Distances of ``q`` (B, D) to the gallery: (B, G) float32 (written into ``out``)."""
        if out is not None:
            out = out[: q.shape[0]]
        if self.metric == "euclidean":
            # Same operation order as torchreid's compute_distance_matrix, (|q|^2 + |g|^2)
            # then addmm with alpha=-2, so the float32 distances match it bit for bit.
            qterm = squared_norms(q)[:, None]
            if out is None:
                out = torch.empty((q.shape[0], self.gf.shape[0]), device=q.device)
            torch.add(qterm, self._gterm[None, :], out=out)
            return out.addmm_(q, self.gf.T, beta=1.0, alpha=-2.0)
        qnorm = torch.linalg.vector_norm(q, dim=1, keepdim=True)
        qhat = q * qnorm.clamp_min(_NORM_EPS).reciprocal()
        s = torch.mm(qhat, self.gf.T, out=out)
        return s.mul_(self._gterm).add_(1.0)
