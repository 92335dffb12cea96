"""Data: synthetic rain, LMDB writing and shared LMDB environments."""

from erl_plugin.data.derain_dataset import DerainPairedDataset

__all__ = ["DerainPairedDataset"]
