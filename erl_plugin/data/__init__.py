"""Data: folders and LMDBs of rainy/clean pairs, rain rendered on the fly, synthetic rain, LMDB writing."""

from erl_plugin.data.derain_dataset import DerainPairedDataset
from erl_plugin.data.synthetic_dataset import SyntheticRainDataset

__all__ = ["DerainPairedDataset", "SyntheticRainDataset"]
