"""ERL-Net (Entangled Representation Learning, ICCV 2019) as a BasicSR plugin.

Importing this package first applies the compatibility patches for basicsr 1.4.2 on today's
torch/torchvision/lmdb (see :mod:`erl_plugin.compat`), then registers the plugin's networks
into BasicSR's registries. Every registration is an explicit import below.
"""

from erl_plugin import compat

compat.apply()

from erl_plugin import archs, data, losses, models  # noqa: E402  (registers networks, datasets, losses, models)

__version__ = "0.1.0"

__all__ = ["archs", "compat", "data", "losses", "models", "__version__"]
