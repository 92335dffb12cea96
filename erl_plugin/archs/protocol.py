"""The encoder/decoder protocol through which the ERL wrapper entangles any U-Net.

ERL-Net (Sec. 3.2, Fig. 2) adds the output of a residual encoder branch to the main encoder's
features at every entanglement point: the bottleneck (CLGD) or the bottleneck and every skip
connection (MLGD). To wrap a network, the wrapper needs its encoder and decoder as two separate
calls and a description of the features passed between them. A network conforms when it offers:

``encode(x) -> (bottleneck, skips)``
    Runs the encoder. ``skips`` is ordered from the highest resolution down and may be empty
    (a U-Net without skip connections). The network may pad ``x`` internally.

``decode(bottleneck, skips, x) -> Tensor``
    Runs the decoder on (possibly modified) encoder features. ``x`` is the original, unpadded
    input, for networks with a global residual and for cropping the padding back off.

``feature_info: list[FeaturePoint]``
    One entry per entanglement point: the skips, highest resolution first, then the bottleneck
    last. ``feature_info[i].num_chs`` and ``feature_info[i].reduction`` equal the channel count
    and the stride (relative to the padded input) of the ``i``-th tensor of
    ``[*skips, bottleneck]``.

The contract that ties these together: ``forward(x) == decode(*encode(x), x)``.

Example:
    >>> bottleneck, skips = net.encode(x)
    >>> out = net.decode(bottleneck + residual, skips, x)
"""

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor


@dataclass(frozen=True)
class FeaturePoint:
    """One feature map handed from the encoder to the decoder (timm-style naming).

    Args:
        name (str): Identifier of the point, e.g. ``"skip0"`` or ``"bottleneck"``.
        num_chs (int): Number of channels of the feature map.
        reduction (int): Spatial stride of the feature map relative to the (padded) input.
    """

    name: str
    num_chs: int
    reduction: int


@runtime_checkable
class EncoderDecoder(Protocol):
    """A network split into ``encode`` and ``decode``; see the module docstring for the contract."""

    feature_info: list[FeaturePoint]

    def encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return ``(bottleneck, skips)``, skips ordered from the highest resolution down."""
        ...

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        """Return the network output for the given encoder features and original input ``x``."""
        ...


def implements_protocol(net: object) -> bool:
    """Tell whether ``net`` follows :class:`EncoderDecoder`.

    Stricter than ``isinstance(net, EncoderDecoder)``: ``encode`` and ``decode`` must be callable
    and ``feature_info`` must be a list of :class:`FeaturePoint`.
    """
    feature_info = getattr(net, "feature_info", None)
    return (
        callable(getattr(net, "encode", None))
        and callable(getattr(net, "decode", None))
        and isinstance(feature_info, list)
        and all(isinstance(point, FeaturePoint) for point in feature_info)
    )
