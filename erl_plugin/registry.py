"""The plugin's networks in mmengine's registry, as a scoped child of mmengine's ``MODELS``.

BasicSR's ``ARCH_REGISTRY`` stays the source of truth; this registry holds the same classes under
the scope ``erl_plugin``, so mmengine-based code builds the very networks BasicSR builds, and nothing
is added to mmengine's root registry.

Example:
    >>> from mmengine.registry import MODELS
    >>> net = MODELS.build(dict(type="erl_plugin.ERLNet", backbone=dict(type="erl_plugin.MEMD")))
"""

from basicsr.utils.registry import ARCH_REGISTRY
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

NETWORKS = ("MEMD", "ERLNet")

MODELS = Registry("model", parent=MMENGINE_MODELS, scope="erl_plugin", locations=["erl_plugin"])
"""``erl_plugin``'s child of mmengine's ``MODELS``: build with ``type='erl_plugin.<name>'``."""

for _name in NETWORKS:
    MODELS.register_module(name=_name, module=ARCH_REGISTRY.get(_name))
