"""Third-party-style U-Nets for the wrapping tests, and the adapters a user would write for them.

Written here from their papers' descriptions, as networks we do not own: neither follows the
encoder/decoder protocol. Imported by the tests and, through ``custom_imports: [unet_zoo]``, by
training subprocesses.

- ``TinyNAFNet`` (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022): blocks of
  LayerNorm, 1x1 conv, 3x3 depthwise conv, SimpleGate (split the channels, multiply the halves),
  simplified channel attention, 1x1 conv, with learned residual scales; strided-conv
  downsampling, 1x1 conv + pixel-shuffle upsampling, skips added, a global residual, and padding
  to a multiple of the deepest stride.
- ``TinyRestormer`` (Zamir et al., "Restormer", CVPR 2022): transformer blocks of multi-Dconv
  head transposed attention (attention across channels, not pixels) and a gated-Dconv
  feed-forward network; pixel-unshuffle down, pixel-shuffle up, skips concatenated and reduced by
  a 1x1 conv, refinement blocks and a global residual; an odd number of blocks per level.
- ``ShapeBranchingUNet``: a U-Net whose forward takes another path for wide inputs.
"""

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn

from erl_plugin.archs.adapters import Adapter, register_adapter
from erl_plugin.archs.protocol import FeaturePoint, Inject


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of an (N, C, H, W) tensor."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def simple_gate(x: Tensor) -> Tensor:
    first, second = x.chunk(2, dim=1)
    return first * second


class NAFBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.expand = nn.Conv2d(channels, 2 * channels, 1)
        self.depthwise = nn.Conv2d(2 * channels, 2 * channels, 3, padding=1, groups=2 * channels)
        self.attention = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, channels, 1))
        self.project = nn.Conv2d(channels, channels, 1)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn_in = nn.Conv2d(channels, 2 * channels, 1)
        self.ffn_out = nn.Conv2d(channels, channels, 1)
        self.beta = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))
        self.gamma = nn.Parameter(torch.full((1, channels, 1, 1), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        y = simple_gate(self.depthwise(self.expand(self.norm1(x))))
        x = x + self.beta * self.project(y * self.attention(y))
        return x + self.gamma * self.ffn_out(simple_gate(self.ffn_in(self.norm2(x))))


@ARCH_REGISTRY.register()
class TinyNAFNet(nn.Module):
    def __init__(self, width: int = 4, enc_blocks: tuple = (1, 1), middle_blocks: int = 1) -> None:
        super().__init__()
        self.intro = nn.Conv2d(3, width, 3, padding=1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        channels = width
        for count in enc_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(count))))
            self.downs.append(nn.Conv2d(channels, 2 * channels, 2, stride=2))
            channels *= 2
        self.middle_blks = nn.Sequential(*(NAFBlock(channels) for _ in range(middle_blocks)))
        for count in reversed(enc_blocks):
            self.ups.append(nn.Sequential(nn.Conv2d(channels, 2 * channels, 1, bias=False), nn.PixelShuffle(2)))
            channels //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(channels) for _ in range(count))))
        self.ending = nn.Conv2d(width, 3, 3, padding=1)
        self.padder_size = 2 ** len(enc_blocks)

    def forward(self, inp: Tensor) -> Tensor:
        height, width = inp.shape[-2:]
        padded = F.pad(inp, (0, -width % self.padder_size, 0, -height % self.padder_size))
        x = self.intro(padded)
        skips = []
        for encoder, down in zip(self.encoders, self.downs, strict=True):
            x = encoder(x)
            skips.append(x)
            x = down(x)
        x = self.middle_blks(x)
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            x = decoder(up(x) + skip)
        return (self.ending(x) + padded)[..., :height, :width]


class TransposedAttention(nn.Module):
    """Multi-Dconv head transposed attention: a (C/heads x C/heads) attention map per head."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.qkv_dw = nn.Conv2d(3 * channels, 3 * channels, 3, padding=1, groups=3 * channels)
        self.project = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = (t.reshape(n, self.heads, c // self.heads, h * w) for t in self.qkv_dw(self.qkv(x)).chunk(3, dim=1))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attention = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attention @ v).reshape(n, c, h, w))


class GatedFeedForward(nn.Module):
    def __init__(self, channels: int, expansion: int = 2) -> None:
        super().__init__()
        hidden = channels * expansion
        self.expand = nn.Conv2d(channels, 2 * hidden, 1)
        self.depthwise = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.project = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.depthwise(self.expand(x)).chunk(2, dim=1)
        return self.project(F.gelu(gate) * value)


class TransformerBlock(nn.Module):
    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.norm1, self.attention = ChannelLayerNorm(channels), TransposedAttention(channels, heads)
        self.norm2, self.ffn = ChannelLayerNorm(channels), GatedFeedForward(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _blocks(count: int, channels: int, heads: int) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(channels, heads) for _ in range(count)))


@ARCH_REGISTRY.register()
class TinyRestormer(nn.Module):
    def __init__(self, dim: int = 4, num_blocks: tuple = (1, 3, 1), num_refinement: int = 1) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 3, padding=1)
        self.encoder_level1 = _blocks(num_blocks[0], dim, 1)
        self.down1_2 = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1), nn.PixelUnshuffle(2))
        self.encoder_level2 = _blocks(num_blocks[1], 2 * dim, 2)
        self.down2_3 = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.PixelUnshuffle(2))
        self.latent = _blocks(num_blocks[2], 4 * dim, 2)
        self.up3_2 = nn.Sequential(nn.Conv2d(4 * dim, 8 * dim, 3, padding=1), nn.PixelShuffle(2))
        self.reduce_chan_level2 = nn.Conv2d(4 * dim, 2 * dim, 1)
        self.decoder_level2 = _blocks(num_blocks[1], 2 * dim, 2)
        self.up2_1 = nn.Sequential(nn.Conv2d(2 * dim, 4 * dim, 3, padding=1), nn.PixelShuffle(2))
        self.decoder_level1 = _blocks(num_blocks[0], 2 * dim, 1)
        self.refinement = _blocks(num_refinement, 2 * dim, 1)
        self.output = nn.Conv2d(2 * dim, 3, 3, padding=1)

    def forward(self, inp: Tensor) -> Tensor:
        level1 = self.encoder_level1(self.patch_embed(inp))
        level2 = self.encoder_level2(self.down1_2(level1))
        latent = self.latent(self.down2_3(level2))
        x = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(latent), level2], dim=1)))
        x = self.decoder_level1(torch.cat([self.up2_1(x), level1], dim=1))
        return self.output(self.refinement(x)) + inp


@ARCH_REGISTRY.register()
class ShapeBranchingUNet(nn.Module):
    """One skip; inputs wider than 48 pixels skip the bottleneck's second conv."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.down = nn.Conv2d(width, width, 2, stride=2)
        self.bottom = nn.Conv2d(width, width, 3, padding=1)
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        skip = self.stem(x)
        bottom = self.down(skip)
        if x.shape[-1] <= 48:
            bottom = self.bottom(bottom)
        return self.head(self.up(bottom) + skip)


# ------------------------------------------------------------------ adapters, as a user writes them
@register_adapter("TinyNAFNet")
class TinyNAFNetAdapter(Adapter):
    decoder_modules = ("ups", "decoders", "ending")

    def feature_points(self) -> list[FeaturePoint]:
        widths = [encoder[0].norm1.norm.normalized_shape[0] for encoder in self.encoders]
        skips = [FeaturePoint(f"skip{i}", width, 2**i) for i, width in enumerate(widths)]
        return [*skips, FeaturePoint("bottleneck", 2 * widths[-1], self.padder_size)]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        height, width = x.shape[-2:]
        feat = self.intro(F.pad(x, (0, -width % self.padder_size, 0, -height % self.padder_size)))
        skips = []
        for level, (encoder, down) in enumerate(zip(self.encoders, self.downs, strict=True)):
            feat = encoder(feat)
            feat = inject(level, feat) if inject else feat
            skips.append(feat)
            feat = down(feat)
        bottleneck = self.middle_blks(feat)
        return (inject(len(skips), bottleneck) if inject else bottleneck), skips

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        feat = bottleneck
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            feat = decoder(up(feat) + skip)
        padded = F.pad(x, (0, -width % self.padder_size, 0, -height % self.padder_size))
        return (self.ending(feat) + padded)[..., :height, :width]


@register_adapter("TinyRestormer")
class TinyRestormerAdapter(Adapter):
    decoder_modules = (
        "up3_2",
        "reduce_chan_level2",
        "decoder_level2",
        "up2_1",
        "decoder_level1",
        "refinement",
        "output",
    )

    def feature_points(self) -> list[FeaturePoint]:
        dim = self.patch_embed.out_channels
        return [
            FeaturePoint("skip0", dim, 1),
            FeaturePoint("skip1", 2 * dim, 2),
            FeaturePoint("bottleneck", 4 * dim, 4),
        ]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        inject = inject or (lambda index, feature: feature)
        level1 = inject(0, self.encoder_level1(self.patch_embed(x)))
        level2 = inject(1, self.encoder_level2(self.down1_2(level1)))
        return inject(2, self.latent(self.down2_3(level2))), [level1, level2]

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        level1, level2 = skips
        feat = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(bottleneck), level2], dim=1)))
        feat = self.decoder_level1(torch.cat([self.up2_1(feat), level1], dim=1))
        return self.output(self.refinement(feat)) + x


@register_adapter("ShapeBranchingUNet")
class ShapeBranchingUNetAdapter(Adapter):
    """Follows the narrow-input path only."""

    decoder_modules = ("up", "head")

    def feature_points(self) -> list[FeaturePoint]:
        width = self.stem.out_channels
        return [FeaturePoint("skip0", width, 1), FeaturePoint("bottleneck", width, 2)]

    def encode(self, x: Tensor, inject: Inject | None = None) -> tuple[Tensor, list[Tensor]]:
        inject = inject or (lambda index, feature: feature)
        skip = inject(0, self.stem(x))
        return inject(1, self.bottom(self.down(skip))), [skip]

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        return self.head(self.up(bottleneck) + skips[0])


@ARCH_REGISTRY.register()
class SkipConvUNet(nn.Module):
    """Its skip passes through a module of its own (``skip_conv``) that only the decoder reads."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.skip_conv = nn.Conv2d(width, width, 1)
        self.down = nn.Conv2d(width, 2 * width, 2, stride=2)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.head = nn.Conv2d(width, 3, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.stem(x)
        bottleneck = self.down(feat)
        return self.head(self.up(bottleneck) + self.skip_conv(feat)) + x


# ------------------------------------------------------------- the wrapping cases the tests share
UNET_SN = {"type": "UNetDiscriminatorSN", "num_in_ch": 1, "num_feat": 4}
NAF_PATHS = {"bottleneck": "middle_blks", "skips": ["encoders.0", "encoders.1"]}
RESTORMER_PATHS = {"bottleneck": "latent", "skips": ["encoder_level1", "encoder_level2"]}

# (backbone, extra ERLNet options, input channels): the four backbones of the done-when, each through
# its adapter (MEMD natively), then through the module-path fallback where hooks are correct.
WRAPPED = {
    "memd": ({"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}, {}, 3),
    "unet_sn": (UNET_SN, {}, 1),
    "nafnet": ({"type": "TinyNAFNet"}, {}, 3),
    "restormer": ({"type": "TinyRestormer"}, {}, 3),
    "nafnet_hooks": ({"type": "TinyNAFNet"}, {"entangle_at": NAF_PATHS, "inject": "encoder"}, 3),
    "restormer_hooks": ({"type": "TinyRestormer"}, {"entangle_at": RESTORMER_PATHS, "inject": "encoder"}, 3),
    "skip_conv_hooks": ({"type": "SkipConvUNet"}, {"entangle_at": {"bottleneck": "down", "skips": ["skip_conv"]}}, 3),
}


def plain_network(backbone: dict) -> nn.Module:
    name = backbone["type"] if backbone["type"] in ARCH_REGISTRY else f"{backbone['type']}_basicsr"
    return ARCH_REGISTRY.get(name)(**{k: v for k, v in backbone.items() if k != "type"})
