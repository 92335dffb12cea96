"""FeatureReconstructionLoss (Eq. 4): values, weights, reduction, and errors."""

import pytest
import torch
from basicsr.losses import build_loss

from erl_plugin.losses import FeatureReconstructionLoss


def test_default_is_lambda_001_times_mean_l1_summed_over_points() -> None:
    features = [torch.ones(1, 2, 4, 4), torch.zeros(1, 4, 2, 2)]
    targets = [torch.zeros(1, 2, 4, 4), torch.full((1, 4, 2, 2), 3.0)]
    loss = build_loss({"type": "FeatureReconstructionLoss"})
    assert loss(features, targets).item() == pytest.approx(0.01 * (1.0 + 3.0))


def test_level_weights_and_sum_reduction() -> None:
    features = [torch.ones(1, 1, 2, 2), torch.ones(1, 1, 1, 1)]
    targets = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 1)]
    weighted = FeatureReconstructionLoss(loss_weight=1.0, level_weights=[0.5, 2.0])
    assert weighted(features, targets).item() == pytest.approx(0.5 * 1 + 2.0 * 1)
    summed = FeatureReconstructionLoss(loss_weight=1.0, reduction="sum")
    assert summed(features, targets).item() == pytest.approx(4 + 1)


def test_gradients_reach_the_features_not_the_targets() -> None:
    feature = torch.zeros(1, 1, 2, 2, requires_grad=True)
    target = torch.ones(1, 1, 2, 2, requires_grad=True)
    FeatureReconstructionLoss()([feature], [target]).backward()
    assert feature.grad is not None and target.grad is None


def test_errors_name_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="reduction='max' is not allowed"):
        FeatureReconstructionLoss(reduction="max")
    with pytest.raises(ValueError, match="level_weights has 1 entries but the network has 2"):
        FeatureReconstructionLoss(level_weights=[1.0])([torch.ones(1)] * 2, [torch.ones(1)] * 2)
    with pytest.raises(ValueError, match="2 features but 1 teacher targets"):
        FeatureReconstructionLoss()([torch.ones(1)] * 2, [torch.ones(1)])
