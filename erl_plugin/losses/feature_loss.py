"""The feature reconstruction loss of ERL-Net (Eq. 4) and how it joins the pixel loss (Eq. 5).

``L_fre = sum_k w_k * l1(Phi(x_r)_k + R(x_r)_k, Phi_teacher(x_c)_k)`` over the entanglement points
``k``: one term for CLGD (the bottleneck), one per skip plus the bottleneck for MLGD. The paper
writes an l1 norm; here each term is the *mean* absolute difference over its elements (the
reduction of the first author's later code), so the loss does not grow with the feature size and
``lambda_fre = 0.01`` (Eq. 5) keeps its meaning. ``reduction: sum`` gives the plain l1 norm, which
changes the effective lambda by the number of feature elements.

``L_ERL = L_pre + lambda_fre * L_fre``: ``L_pre`` is BasicSR's ``L1Loss`` (``pixel_opt``) and
``lambda_fre`` this loss's ``loss_weight`` (``feature_opt``).
"""

from collections.abc import Sequence

import torch
from basicsr.utils.registry import LOSS_REGISTRY
from torch import Tensor, nn

REDUCTIONS = ("mean", "sum")


@LOSS_REGISTRY.register()
class FeatureReconstructionLoss(nn.Module):
    """l1 distance between entangled features and a frozen teacher's encoder features (Eq. 4).

    Args:
        loss_weight (float): ``lambda_fre`` of Eq. 5. Default: 0.01 (the paper's).
        level_weights (list[float] | None): Weight of each entanglement point, in the order the
            network returns them (skips from the highest resolution down, then the bottleneck).
            None weighs every point 1. Default: None.
        reduction (str): ``mean`` (mean absolute difference per point) or ``sum``. Default: mean.
    """

    def __init__(
        self, loss_weight: float = 0.01, level_weights: Sequence[float] | None = None, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is not allowed; choose one of {', '.join(REDUCTIONS)}")
        self.loss_weight = float(loss_weight)
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]
        self.reduction = reduction

    def forward(self, features: Sequence[Tensor], targets: Sequence[Tensor]) -> Tensor:
        """Weighted sum over points of the l1 distance between ``features`` and ``targets``."""
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} features but {len(targets)} teacher targets")
        weights = self.level_weights if self.level_weights is not None else [1.0] * len(features)
        if len(weights) != len(features):
            raise ValueError(
                f"level_weights has {len(weights)} entries but the network has {len(features)} entanglement points"
            )
        total = torch.zeros((), device=features[0].device, dtype=features[0].dtype)
        for weight, feature, target in zip(weights, features, targets, strict=True):
            distance = (feature - target.detach()).abs()
            total = total + weight * (distance.mean() if self.reduction == "mean" else distance.sum())
        return self.loss_weight * total
