"""Networks registered in BasicSR's ``ARCH_REGISTRY``."""

from erl_plugin.archs.memd_arch import MEMD
from erl_plugin.archs.protocol import EncoderDecoder, FeaturePoint, implements_protocol

__all__ = ["MEMD", "EncoderDecoder", "FeaturePoint", "implements_protocol"]
