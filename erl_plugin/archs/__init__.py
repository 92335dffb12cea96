"""Networks registered in BasicSR's ``ARCH_REGISTRY``, and what wraps networks we do not own."""

from erl_plugin.archs.adapters import Adapter, register_adapter
from erl_plugin.archs.erl_arch import ERLNet
from erl_plugin.archs.memd_arch import MEMD
from erl_plugin.archs.nafnet_adapter import NAFNetAdapter
from erl_plugin.archs.protocol import EncoderDecoder, FeaturePoint, implements_protocol, protocol_problems

__all__ = [
    "Adapter",
    "ERLNet",
    "MEMD",
    "NAFNetAdapter",
    "EncoderDecoder",
    "FeaturePoint",
    "implements_protocol",
    "protocol_problems",
    "register_adapter",
]
