"""ERL-Net (Entangled Representation Learning, ICCV 2019) as a BasicSR plugin.

Importing this package first applies the two fixes basicsr 1.4.2 needs to import and read LMDBs on
today's torchvision and py-lmdb (:mod:`erl_plugin.engine.compat`; BasicSR's classes stay upstream), then
registers the plugin's networks, datasets, losses, metrics and models into BasicSR's registries, and its
networks into a scoped child of mmengine's (:mod:`erl_plugin.registry`). Every registration is an explicit
import below. :func:`load` gives a :class:`Derainer` that derains from Python in one call
(:mod:`erl_plugin.evaluation.api`).
"""

from erl_plugin.engine import compat

compat.apply()

from erl_plugin import archs, data, losses, metrics, models, registry  # noqa: E402  (registers everything)
from erl_plugin.evaluation.api import Derainer, load  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Derainer", "load", "archs", "compat", "data", "losses", "metrics", "models", "registry", "__version__"]
