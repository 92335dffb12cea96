"""Networks registered in BasicSR's ``ARCH_REGISTRY``."""

from erl_plugin.archs.erl_arch import ERLNet
from erl_plugin.archs.memd_arch import MEMD
from erl_plugin.archs.protocol import EncoderDecoder, FeaturePoint, implements_protocol, protocol_problems

__all__ = ["ERLNet", "MEMD", "EncoderDecoder", "FeaturePoint", "implements_protocol", "protocol_problems"]
