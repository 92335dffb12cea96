"""Losses registered in BasicSR's ``LOSS_REGISTRY``."""

from erl_plugin.losses.feature_loss import FeatureReconstructionLoss

__all__ = ["FeatureReconstructionLoss"]
