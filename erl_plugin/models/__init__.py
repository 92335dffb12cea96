"""Models registered in BasicSR's ``MODEL_REGISTRY``."""

from erl_plugin.models.erl_model import ERLModel

__all__ = ["ERLModel"]
