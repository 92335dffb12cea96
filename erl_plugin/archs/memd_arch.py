"""MEMD, the basic model of ERL-Net: a U-Net of densely connected blocks.

From the paper (Sec. 3.2, Sec. 4.2 and Table 2): dense blocks stacked under a U-Net, skip
connections, a feature fusion layer (FUS) right after each skip connection in the decoder, and the
two ablation variants without FUS and without skip connections. From the authors' rebuttal
(its erratum to Fig. 2 and the feature maps published with it): the "Down Layer" is pooling, the
"Up Layer" a transposed convolution, and a 320x320 input gives 40x40 maps with at least 225
channels at the bottleneck, i.e. 3 downsamplings.

Reconstructions where nothing public settles the design, exposed as options where they are
choices (several follow the first author's later deraining code): no
normalisation, LeakyReLU(0.1), Xavier initialisation, a 7x7 stem, dense blocks of 3x3 conv +
LeakyReLU fused by a 1x1 conv and added back to the block input, a squeeze-excitation style
recalibration in FUS, a channel width that doubles per level (``num_feat * 2**i``), a 1x1 conv
after each pooling to change the width, and direct image output (``global_residual: false``; the paper
does not say whether the network predicts the image or the rain layer, and ERL-Net's clean-to-clean
teacher needs the image).
"""

import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from erl_plugin.archs.protocol import FeaturePoint, Inject


def _check_int(name: str, value: object, minimum: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _padding_index(like: Tensor, size: int | Tensor, pad: int | Tensor) -> Tensor:
    """Indices that extend a dimension of ``size`` by ``pad`` at the end: reflect, or replicate where
    reflection would run past the start (``pad >= size``, tiny inputs); on ``like``'s device.

    Tensor ops only, so that a trace (TorchScript, ONNX) keeps them dynamic in ``size`` and follows the
    input's device (``new_ones``, not ``arange(device=...)``, which a trace records as a constant device).
    """
    index = like.new_ones(size + pad, dtype=torch.long).cumsum(0) - 1
    reflected = torch.where(index < size, index, 2 * (size - 1) - index)
    return torch.where(reflected.min() >= 0, reflected, index.clamp(max=size - 1))


def pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """Pad the bottom and right of ``x`` (reflect; replicate where a side is not longer than its pad) so that
    its height and width divide by ``multiple``.

    Rows and columns are gathered by index: exactly the values of ``torch.nn.functional.pad`` (``reflect``,
    else ``replicate``), in a form that traces (TorchScript, ONNX) with the input's size left dynamic.
    """
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not torch.jit.is_tracing() and not (pad_h or pad_w):
        return x
    x = x.index_select(-1, _padding_index(x, width, pad_w))
    return x.index_select(-2, _padding_index(x, height, pad_h))


class DenseBlock(nn.Module):
    """Densely connected 3x3 conv layers, fused by a 1x1 conv and added to the block input.

    Args:
        channels (int): Channel number of the block input and output.
        growth_rate (int): Channel number produced by each 3x3 conv layer.
        num_layers (int): Number of 3x3 conv layers.
        negative_slope (float): Negative slope of the LeakyReLUs.
    """

    def __init__(self, channels: int, growth_rate: int, num_layers: int, negative_slope: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels + i * growth_rate, growth_rate, 3, padding=1),
                nn.LeakyReLU(negative_slope),
            )
            for i in range(num_layers)
        )
        self.fuse = nn.Conv2d(channels + num_layers * growth_rate, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Return ``x`` plus the fused dense features, same shape as ``x``."""
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fuse(torch.cat(features, dim=1))


class FeatureFusion(nn.Module):
    """The feature fusion layer (FUS) applied after each skip connection.

    Recalibrates the channels of ``cat(skip, up)`` squeeze-excitation style, reduces them to the
    level width with a 1x1 conv and adds the upsampled decoder feature back as a residual.

    Args:
        channels (int): Channel number of the skip and of the upsampled feature (the level width).
        negative_slope (float): Negative slope of the LeakyReLU in the excitation.
    """

    def __init__(self, channels: int, negative_slope: float) -> None:
        super().__init__()
        concat = 2 * channels
        hidden = max(concat // 4, 8)
        self.excitation = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(concat, hidden, 1),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(hidden, concat, 1),
            nn.Sigmoid(),
        )
        self.reduce = nn.Conv2d(concat, channels, 1)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        """Fuse a skip feature with the upsampled decoder feature of the same shape."""
        concat = torch.cat([skip, up], dim=1)
        return up + self.reduce(concat * self.excitation(concat))


class SkipConcat(nn.Module):
    """Skip connection without FUS: concatenation followed by a 1x1 conv to the level width.

    Args:
        channels (int): Channel number of the skip and of the upsampled feature (the level width).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, skip: Tensor, up: Tensor) -> Tensor:
        """Merge a skip feature with the upsampled decoder feature of the same shape."""
        return self.reduce(torch.cat([skip, up], dim=1))


@ARCH_REGISTRY.register()
class MEMD(nn.Module):
    """MEMD: U-Net of dense blocks with feature fusion layers (ERL-Net's basic model).

    Level ``i`` (``0 <= i <= num_down``) works at ``1 / 2**i`` of the (padded) input resolution
    with ``num_feat * 2**i`` channels; the deepest level's dense block output is the bottleneck.
    Inputs of any size are padded to a multiple of ``2**num_down`` and the output is cropped back.
    The network follows :class:`erl_plugin.archs.protocol.EncoderDecoder`.

    Table 2 variants: ``MEMD()`` is MEMD, ``MEMD(fusion=False)`` removes the feature fusion
    layers and ``MEMD(skip=False, fusion=False)`` also removes the skip connections.

    Args:
        in_channels (int): Channel number of inputs. Default: 3.
        out_channels (int): Channel number of outputs. Default: 3.
        num_feat (int): Channel number at full resolution; level ``i`` has ``num_feat * 2**i``.
            Default: 32 (256 channels at the bottleneck with 3 downsamplings).
        num_down (int): Number of 2x downsamplings (2x2 average pooling). Default: 3, as the
            rebuttal's 40x40 bottleneck maps for 320x320 inputs imply.
        num_dense_layers (int): Number of 3x3 conv layers in each dense block. Default: 4.
        growth_rate (int): Channel number produced by each dense layer. Default: 32.
        skip (bool): Use U-Net skip connections. Default: True.
        fusion (bool): Merge skips with the feature fusion layer (FUS) instead of a plain 1x1 conv
            after concatenation. Requires ``skip=True``. Default: True.
        global_residual (bool): Add the input to the output, so the network predicts a residual
            (the paper does not say; the author's later code outputs the image directly). Requires
            ``in_channels == out_channels``. ERL-Net's feature loss refuses it: a clean-to-clean
            teacher with the input added back learns the identity, and its clean embedding then
            means "nothing to remove" (docs/study.md). Default: False.
        negative_slope (float): Negative slope of every LeakyReLU. Default: 0.1.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        num_feat: int = 32,
        num_down: int = 3,
        num_dense_layers: int = 4,
        growth_rate: int = 32,
        skip: bool = True,
        fusion: bool = True,
        global_residual: bool = False,
        negative_slope: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("num_feat", num_feat),
            ("num_down", num_down),
            ("num_dense_layers", num_dense_layers),
            ("growth_rate", growth_rate),
        ):
            _check_int(name, value, minimum=1)
        if fusion and not skip:
            raise ValueError(f"fusion={fusion!r} requires skip=True, got skip={skip!r}")
        if global_residual and in_channels != out_channels:
            raise ValueError(
                f"global_residual=True requires in_channels == out_channels, got {in_channels} and {out_channels}"
            )
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) or negative_slope < 0:
            raise ValueError(f"negative_slope must be a number >= 0, got {negative_slope!r}")

        self.num_down = num_down
        self.skip = skip
        self.fusion = fusion
        self.global_residual = global_residual
        widths = [num_feat * 2**i for i in range(num_down + 1)]

        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, num_feat, 7, padding=3),
            nn.LeakyReLU(negative_slope),
        )
        self.encoder_blocks = nn.ModuleList(
            DenseBlock(width, growth_rate, num_dense_layers, negative_slope) for width in widths
        )
        # downs[i] and ups[i] connect level i and level i + 1.
        self.downs = nn.ModuleList(
            nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(widths[i], widths[i + 1], 1), nn.LeakyReLU(negative_slope))
            for i in range(num_down)
        )
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2),
                nn.LeakyReLU(negative_slope),
            )
            for i in range(num_down)
        )
        if not skip:
            self.fusions = nn.ModuleList()
        elif fusion:
            self.fusions = nn.ModuleList(FeatureFusion(widths[i], negative_slope) for i in range(num_down))
        else:
            self.fusions = nn.ModuleList(SkipConcat(widths[i]) for i in range(num_down))
        self.decoder_blocks = nn.ModuleList(
            DenseBlock(widths[i], growth_rate, num_dense_layers, negative_slope) for i in range(num_down)
        )
        self.head = nn.Conv2d(num_feat, out_channels, 3, padding=1)

        self.decoder_modules = ("ups", "fusions", "decoder_blocks", "head")
        skip_points = [FeaturePoint(f"skip{i}", widths[i], 2**i) for i in range(num_down)] if skip else []
        self.feature_info: list[FeaturePoint] = [
            *skip_points,
            FeaturePoint("bottleneck", widths[-1], 2**num_down),
        ]
        self._init_weights()

    def _init_weights(self) -> None:
        """Xavier-uniform weights and zero biases for every (transposed) convolution."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        """Pad ``x`` and run the encoder.

        Args:
            x (Tensor): Input of shape (N, in_channels, H, W), any H and W.
            inject (Inject | None): Called on each feature of ``feature_info`` as soon as it
                exists; its result replaces the feature downstream and in the outputs.

        Returns:
            tuple[Tensor, list[Tensor]]: The bottleneck and the skips (highest resolution first;
            empty when ``skip=False``), shaped as described by ``feature_info``.
        """
        feat = self.stem(pad_to_multiple(x, 2**self.num_down))
        skips = []
        for level, down in enumerate(self.downs):
            feat = self.encoder_blocks[level](feat)
            if self.skip and inject is not None:
                feat = inject(level, feat)
            skips.append(feat)
            feat = down(feat)
        bottleneck = self.encoder_blocks[-1](feat)
        if inject is not None:
            bottleneck = inject(len(self.feature_info) - 1, bottleneck)
        return bottleneck, skips if self.skip else []

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        """Run the decoder, crop to ``x``'s size and add ``x`` if ``global_residual``.

        Args:
            bottleneck (Tensor): Bottleneck feature as returned by :meth:`encode`.
            skips (list[Tensor]): Skip features as returned by :meth:`encode`.
            x (Tensor): The original, unpadded input.

        Returns:
            Tensor: Output of shape (N, out_channels, H, W).
        """
        expected = len(self.feature_info) - 1
        if len(skips) != expected:
            raise ValueError(f"skips must hold {expected} tensors, got {len(skips)}")
        feat = bottleneck
        for level in reversed(range(self.num_down)):
            feat = self.ups[level](feat)
            if self.skip:
                feat = self.fusions[level](skips[level], feat)
            feat = self.decoder_blocks[level](feat)
        out = self.head(feat)[..., : x.shape[-2], : x.shape[-1]]
        return out + x if self.global_residual else out

    def forward(self, x: Tensor) -> Tensor:
        """Restore ``x``: ``decode(*encode(x), x)``."""
        return self.decode(*self.encode(x), x)
