"""Tests for the MEMD network, the encoder/decoder protocol and the complexity counter."""

import pytest
import torch
from torch import nn

import erl_plugin  # noqa: F401  (applies the compat patches and registers MEMD)
from erl_plugin.archs import MEMD, EncoderDecoder, FeaturePoint, implements_protocol
from erl_plugin.archs.complexity import complexity

TINY = {"num_feat": 4, "growth_rate": 4, "num_dense_layers": 2}


def tiny(**overrides: object) -> MEMD:
    """A tiny MEMD, fast enough for every CPU test."""
    torch.manual_seed(0)
    return MEMD(**{**TINY, **overrides})


def num_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("shape", [(1, 3, 17, 23), (2, 3, 9, 8), (1, 3, 5, 5), (1, 3, 3, 2), (1, 3, 16, 16)])
def test_output_shape_matches_input_for_any_size(shape: tuple[int, int, int, int]) -> None:
    net = tiny(num_down=3)
    out = net(torch.rand(shape))
    assert out.shape == shape
    assert torch.isfinite(out).all()


def test_out_channels_without_global_residual() -> None:
    net = tiny(in_channels=1, out_channels=2, global_residual=False)
    assert net(torch.rand(1, 1, 10, 12)).shape == (1, 2, 10, 12)


@pytest.mark.parametrize(("skip", "fusion"), [(True, True), (True, False), (False, False)])
def test_forward_equals_decode_of_encode(skip: bool, fusion: bool) -> None:
    net = tiny(skip=skip, fusion=fusion).eval()
    x = torch.rand(2, 3, 13, 19)
    with torch.no_grad():
        assert torch.equal(net(x), net.decode(*net.encode(x), x))


@pytest.mark.parametrize(("skip", "fusion"), [(True, True), (True, False), (False, False)])
def test_encode_matches_feature_info(skip: bool, fusion: bool) -> None:
    net = tiny(skip=skip, fusion=fusion)
    x = torch.rand(1, 3, 13, 19)
    padded = (16, 24)  # the input padded to multiples of 2**num_down = 8
    with torch.no_grad():
        bottleneck, skips = net.encode(x)
    assert all(isinstance(point, FeaturePoint) for point in net.feature_info)
    tensors = [*skips, bottleneck]
    for tensor, point in zip(tensors, net.feature_info, strict=True):
        assert tensor.shape == (1, point.num_chs, padded[0] // point.reduction, padded[1] // point.reduction)
    expected_names = ["skip0", "skip1", "skip2"] if skip else []
    assert [point.name for point in net.feature_info] == [*expected_names, "bottleneck"]


def test_default_bottleneck_width_and_stride() -> None:
    # The rebuttal: a 320x320 input gives 40x40 maps with at least 225 channels at the bottleneck.
    bottleneck = MEMD().feature_info[-1]
    assert bottleneck == FeaturePoint("bottleneck", 256, 8)
    assert 320 // bottleneck.reduction == 40


def test_implements_protocol() -> None:
    net = tiny()
    assert implements_protocol(net)
    assert isinstance(net, EncoderDecoder)
    assert not implements_protocol(nn.Conv2d(3, 3, 3))
    assert not isinstance(nn.Conv2d(3, 3, 3), EncoderDecoder)


def test_implements_protocol_checks_feature_info_entries() -> None:
    class Bad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.feature_info = [{"num_chs": 4, "reduction": 1}]

        def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
            return x, []

        def decode(self, bottleneck: torch.Tensor, skips: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return bottleneck

    assert not implements_protocol(Bad())


def test_decode_rejects_wrong_number_of_skips() -> None:
    net = tiny()
    x = torch.rand(1, 3, 8, 8)
    bottleneck, skips = net.encode(x)
    with pytest.raises(ValueError, match="skips"):
        net.decode(bottleneck, skips[:-1], x)


def test_decoder_uses_modified_features() -> None:
    # The ERL wrapper relies on decode reading the features it is given, not cached ones.
    net = tiny().eval()
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        bottleneck, skips = net.encode(x)
        reference = net.decode(bottleneck, skips, x)
        assert not torch.equal(net.decode(bottleneck + 1, skips, x), reference)
        shifted = [skips[0] + 1, *skips[1:]]
        assert not torch.equal(net.decode(bottleneck, shifted, x), reference)


@pytest.mark.parametrize(("skip", "fusion"), [(True, True), (True, False), (False, False)])
def test_gradients_reach_every_parameter(skip: bool, fusion: bool) -> None:
    net = tiny(skip=skip, fusion=fusion)
    x, target = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 12, 10)
    nn.functional.l1_loss(net(x), target).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name


def test_default_net_stem_gradient_is_nonzero() -> None:
    torch.manual_seed(0)
    net = MEMD()
    x, target = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    nn.functional.l1_loss(net(x), target).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert net.stem[0].weight.grad.abs().sum() > 0


def test_ablation_variants() -> None:
    no_skip = tiny(skip=False, fusion=False)
    no_fusion = tiny(skip=True, fusion=False)
    full = tiny()
    assert no_skip.encode(torch.rand(1, 3, 8, 8))[1] == []
    assert [point.name for point in no_skip.feature_info] == ["bottleneck"]
    assert len(no_fusion.fusions) == len(full.fusions) == 3
    assert len(no_skip.fusions) == 0
    assert num_params(no_skip) < num_params(no_fusion) < num_params(full)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"skip": False, "fusion": True}, "fusion"),
        ({"num_feat": 0}, "num_feat"),
        ({"num_down": -1}, "num_down"),
        ({"growth_rate": 2.5}, "growth_rate"),
        ({"num_dense_layers": True}, "num_dense_layers"),
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 1, "global_residual": True}, "global_residual"),
        ({"negative_slope": -0.1}, "negative_slope"),
    ],
)
def test_invalid_arguments_raise_naming_the_argument(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        MEMD(**{**TINY, **kwargs})


def test_width_and_depth_change_parameter_count() -> None:
    base = num_params(tiny())
    assert num_params(tiny(num_feat=8)) > base
    assert num_params(tiny(growth_rate=8)) > base
    assert num_params(tiny(num_down=4)) > base
    assert num_params(tiny(num_down=2)) < base
    # One more dense layer adds a 3x3 conv (c + L*g -> g, with bias) to every dense block and g
    # input channels to its 1x1 fuse conv (c + L*g -> c).
    c, g, layers = TINY["num_feat"], TINY["growth_rate"], TINY["num_dense_layers"]
    block_widths = [c * 2**i for i in range(4)] + [c * 2**i for i in range(3)]
    added = sum((w + layers * g) * g * 9 + g + g * w for w in block_widths)
    assert num_params(tiny(num_dense_layers=layers + 1)) - base == added


def test_registry_and_build_network() -> None:
    from basicsr.archs import build_network
    from basicsr.utils.registry import ARCH_REGISTRY

    assert ARCH_REGISTRY.get("MEMD") is MEMD
    opt = {"type": "MEMD", **TINY, "fusion": False}
    net = build_network(opt)
    assert isinstance(net, MEMD)
    assert not net.fusion
    assert opt["type"] == "MEMD"  # options are read, not mutated


@pytest.mark.parametrize("global_residual", [True, False])
def test_global_residual_with_zeroed_head(global_residual: bool) -> None:
    net = tiny(global_residual=global_residual)
    nn.init.zeros_(net.head.weight)
    nn.init.zeros_(net.head.bias)
    x = torch.rand(1, 3, 11, 7)
    with torch.no_grad():
        out = net(x)
    assert torch.equal(out, x if global_residual else torch.zeros_like(x))


def test_init_is_xavier_with_zero_bias() -> None:
    net = tiny()
    conv = net.encoder_blocks[0].layers[0][0]
    fan_in, fan_out = conv.in_channels * 9, conv.out_channels * 9
    bound = (6 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.abs().max() <= bound
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            assert torch.count_nonzero(module.bias) == 0


def test_complexity_counts_params_and_scales_flops() -> None:
    net = tiny()
    small = complexity(net, (1, 3, 16, 16))
    large = complexity(net, (1, 3, 32, 32))
    assert small["params"] == large["params"] == num_params(net)
    assert small["flops"] > 0
    # Everything scales with H*W except the squeeze-excitation convs on 1x1 pooled maps.
    assert 3.9 < large["flops"] / small["flops"] <= 4.0


def test_complexity_of_a_single_conv() -> None:
    # fvcore convention: one multiply-add is one FLOP, biases are not counted.
    assert complexity(nn.Conv2d(3, 8, 1), (1, 3, 4, 4)) == {"params": 32, "flops": 3 * 8 * 16}
