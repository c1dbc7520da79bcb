"""The typed output a DHM model returns in training mode."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class BranchOutputs:
    """Per-branch predictions of one forward pass.

    Both mappings are ordered the same way: ``main`` first, then the auxiliary
    branches from the deepest fork to the shallowest (``aux1``, ``aux2``, ``aux3``).
    Losses use that order as depth order (``top-down`` / ``bottom-up`` mimicking).

    Attributes:
        logits: branch name -> classifier logits, shape (B, num_classes).
        features: branch name -> globally pooled embedding before the classifier,
            shape (B, D_branch), e.g. D = 2048 for the ResNet-50 main branch.
    """

    logits: OrderedDict[str, Tensor]
    features: OrderedDict[str, Tensor]

    @property
    def branches(self) -> tuple[str, ...]:
        """Branch names in depth order, ``main`` first."""
        return tuple(self.logits)
