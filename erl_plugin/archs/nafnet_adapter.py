"""NAFNet as an encoder/decoder, for wrapping a trained NAFNet with ERL.

NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022) is a U-Net of NAF blocks:
``intro`` (3x3 conv), then per level an ``encoders[i]`` stack whose output is the skip and a
``downs[i]`` stride-2 conv, ``middle_blks`` at the bottleneck, then per level ``ups[i]`` (1x1 conv and
pixel shuffle), the skip added, and ``decoders[i]``; ``ending`` (3x3 conv) plus the padded input, cropped
back to the input's size. Its forward pads the input on the right and bottom to a multiple of
``2 ** len(encoders)`` (``check_image_size``).

The adapter serves the networks named ``NAFNet``: spandrel's class (``backbone: {checkpoint: ...}``,
:mod:`erl_plugin.archs.pretrained`) and the NAFNet repository's, which has the same modules and forward.
"""

from typing import ClassVar

import torch
from torch import Tensor

from erl_plugin.archs.adapters import Adapter, evaluating, probe_input, register_adapter
from erl_plugin.archs.protocol import FeaturePoint, Inject


@register_adapter("NAFNet")
class NAFNetAdapter(Adapter):
    """NAFNet's ``intro``, ``encoders``, ``downs`` and ``middle_blks`` as ``encode``; ``ups``,
    ``decoders`` and ``ending`` as ``decode``.

    The skips are the outputs of the encoder levels (``width * 2**i`` channels at stride ``2**i``), the
    bottleneck the output of ``middle_blks``. ``encode`` pads ``x`` as the network does; ``decode`` pads
    the original ``x`` again for the global residual and crops the output back to its size, so any input
    size works, as it does for the network.
    """

    decoder_modules = ("ups", "decoders", "ending")
    padded_probe_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((37, 29),)
    """Probe sizes that are not multiples of the deepest stride (padded by different amounts in height and
    width): the network pads them and crops its output back, and so must the adapter."""

    def feature_points(self) -> list[FeaturePoint]:
        levels = len(self.encoders)
        if len(self.decoders) != levels or len(self.downs) != levels or len(self.ups) != levels:
            raise ValueError(
                f"NAFNetAdapter: {self.network_name} has {levels} encoder levels, {len(self.downs)} downs, "
                f"{len(self.ups)} ups and {len(self.decoders)} decoder levels; a U-Net needs as many of each"
            )
        width = self.intro.out_channels
        skips = [FeaturePoint(f"skip{level}", width * 2**level, 2**level) for level in range(levels)]
        return [*skips, FeaturePoint("bottleneck", width * 2**levels, 2**levels)]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        feature = self.intro(self.network.check_image_size(x))
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs, strict=True)):
            feature = encoder(feature)
            if inject is not None:
                feature = inject(level, feature)
            skips.append(feature)
            feature = down(feature)
        bottleneck = self.middle_blks(feature)
        if inject is not None:
            bottleneck = inject(len(skips), bottleneck)
        return bottleneck, skips

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        feature = bottleneck
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            feature = decoder(up(feature) + skip)
        out = self.ending(feature) + self.network.check_image_size(x)
        return out[:, :, : x.shape[-2], : x.shape[-1]]

    @torch.no_grad()
    def verify(self, atol: float = 1e-5) -> None:
        """:meth:`Adapter.verify`, then the same comparison of outputs on :attr:`padded_probe_sizes`.

        Raises:
            ValueError: naming the input shape where ``decode(*encode(x), x)`` differs from ``forward(x)``.
        """
        super().verify(atol)
        with evaluating(self):
            for height, width in self.padded_probe_sizes:
                x = probe_input(self, height, width)
                expected, actual = self.network(x), self(x)
                if actual.shape != expected.shape or not torch.allclose(actual, expected, atol=atol, rtol=0):
                    gap = (actual - expected).abs().max().item() if actual.shape == expected.shape else "shape"
                    raise ValueError(
                        f"NAFNetAdapter: decode(*encode(x), x) differs from {self.network_name}.forward(x) for an "
                        f"input of shape {tuple(x.shape)}, which the network pads: max |difference| {gap}, output "
                        f"shapes {tuple(actual.shape)} and {tuple(expected.shape)}"
                    )
