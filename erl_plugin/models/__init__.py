"""Models registered in BasicSR's ``MODEL_REGISTRY``."""

from erl_plugin.models.derain_model import DerainModel
from erl_plugin.models.erl_model import ERLModel

__all__ = ["DerainModel", "ERLModel"]
