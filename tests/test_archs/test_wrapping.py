"""Wrapping networks we do not own: adapters, the module-path fallback, and what each refuses."""

import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import Tensor, nn
from unet_zoo import NAF_PATHS, UNET_SN, WRAPPED, TinyNAFNet, TinyNAFNetAdapter, plain_network

from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.archs.adapters import ADAPTERS, UNetDiscriminatorSNAdapter
from erl_plugin.archs.erl_arch import build_backbone
from erl_plugin.archs.protocol import FeaturePoint, RemovedModule


@pytest.mark.parametrize("entangle", ["clgd", "mlgd"])
@pytest.mark.parametrize("case", WRAPPED)
def test_zero_init_wrapper_equals_the_unwrapped_network_exactly(case: str, entangle: str) -> None:
    backbone, extra, channels = WRAPPED[case]
    torch.manual_seed(0)
    net = ERLNet(backbone, entangle=entangle, ren_init="random", **extra).eval()  # eval: spectral norm's state
    plain = plain_network(backbone).eval()
    plain.load_state_dict(net.backbone_state_dict())  # the wrapped backbone keeps the network's own names
    x = torch.rand(2, channels, 32, 40)
    with torch.no_grad():
        assert torch.equal(net(x), plain(x))
        # The residual encoder really contributes once the projections are not zero.
        for projection in net.projections:
            projection.weight.normal_(0, 0.5)
        assert not torch.equal(net(x), plain(x))


@pytest.mark.parametrize("case", WRAPPED)
def test_residual_encoder_has_only_parameters_that_reach_the_points(case: str) -> None:
    backbone, extra, channels = WRAPPED[case]
    torch.manual_seed(0)
    net = ERLNet(backbone, entangle="mlgd", **extra)
    for projection in net.projections:
        nn.init.normal_(projection.weight)
    out, features = net(torch.rand(2, channels, 32, 32), return_features=True)
    (out.mean() + sum(f.mean() for f in features)).backward()
    # DDP would fail on a parameter without gradient: every one takes part.
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    decoder = set(net.backbone.decoder_modules)
    assert decoder and all(isinstance(net.residual_encoder.get_submodule(path), RemovedModule) for path in decoder)
    main = {id(p) for p in net.branch_parameters("main_encoder")}
    assert main.isdisjoint(id(p) for p in net.branch_parameters("decoder"))
    assert len(main) + len(list(net.branch_parameters("decoder"))) == len(list(net.backbone.parameters()))


def test_unet_discriminator_adapter_keeps_spectral_norm_and_the_names() -> None:
    assert ADAPTERS["UNetDiscriminatorSN"] is ADAPTERS["UNetDiscriminatorSN_basicsr"] is UNetDiscriminatorSNAdapter
    torch.manual_seed(0)
    plain = plain_network(UNET_SN)
    checkpoint = {k: v.clone() for k, v in plain.state_dict().items()}
    assert "conv1.weight_orig" in checkpoint and "conv1.weight_u" in checkpoint
    net = ERLNet(UNET_SN, entangle="mlgd")
    net.load_state_dict(checkpoint)  # a checkpoint of the plain network loads as it is
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in checkpoint.items())
    assert [p.num_chs for p in net.backbone.feature_info] == [4, 8, 16, 32]
    # Training mode runs spectral norm's power iteration on the main and the residual encoder alike.
    before = net.backbone.conv1.weight_u.clone()
    net.train()(torch.rand(1, 1, 16, 16))
    assert not torch.equal(before, net.backbone.conv1.weight_u)


def test_a_checkpoint_whose_keys_do_not_match_names_them() -> None:
    net = ERLNet(UNET_SN)
    checkpoint = plain_network(UNET_SN).state_dict()
    checkpoint["conv10.weight"] = checkpoint.pop("conv9.weight")
    with pytest.raises(
        ValueError, match=r"UNetDiscriminatorSN checkpoint does not match.*conv9\.weight.*conv10\.weight"
    ):
        net.load_state_dict(checkpoint)


def test_hooks_refuse_mlgd_into_the_decoder_where_a_skip_feeds_the_deeper_encoder() -> None:
    with pytest.raises(ValueError) as error:
        ERLNet({"type": "TinyNAFNet"}, entangle="mlgd", inject="decoder", entangle_at=NAF_PATHS)
    message = str(error.value)
    assert "'encoders.0' also reaches 'encoders.1', 'middle_blks'" in message and "inject: encoder" in message
    # CLGD needs the bottleneck only: a module output, so hooks are correct with either inject.
    ERLNet({"type": "TinyNAFNet"}, entangle="clgd", inject="decoder", entangle_at=NAF_PATHS)


def test_hooks_add_to_a_skip_alone_where_it_feeds_the_decoder_only() -> None:
    torch.manual_seed(0)
    net = ERLNet({"type": "SkipConvUNet"}, entangle="mlgd", inject="decoder", **WRAPPED["skip_conv_hooks"][1])
    for projection in net.projections:
        nn.init.normal_(projection.weight)
    seen: list[Tensor] = []
    net.backbone.down.register_forward_hook(lambda module, args, output: seen.append(args[0]))
    x = torch.rand(1, 3, 16, 16)
    _, (skip, bottleneck) = net(x, return_features=True)
    plain_skip = net.backbone.skip_conv(net.backbone.stem(x))
    residual_bottleneck, (residual_skip,) = net.residual_encoder.encode(x)
    assert torch.allclose(skip, plain_skip + net.projections[0](residual_skip))
    assert torch.equal(seen[0], net.backbone.stem(x))  # the encoder below the skip never sees a residual


def test_the_residual_encoder_runs_only_modules_it_owns() -> None:
    """SkipConvUNet runs ``up`` (a decoder module, removed from the residual encoder) before its last point,
    ``skip_conv``: the network's own forward must run the removed stand-in, not the rebuilt network's ``up``,
    whose weights nothing owns (never trained, saved, nor moved with ``.to()``)."""
    net = ERLNet({"type": "SkipConvUNet"}, entangle="mlgd", inject="decoder", **WRAPPED["skip_conv_hooks"][1])
    residual = net.residual_encoder
    assert residual.network.up is residual.up and not list(residual.up.parameters())
    net.double()  # an unowned module would keep float32 weights and fail on a float64 input
    assert net(torch.rand(1, 3, 16, 16, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize(
    ("entangle_at", "message"),
    [
        (
            {"bottleneck": "middle_blk"},
            r"entangle_at.bottleneck: 'middle_blk' is not a module of TinyNAFNet; close matches: middle_blks",
        ),
        (
            {"bottleneck": "middle_blks", "skips": ["encoders.7"]},
            r"entangle_at.skips\[0\]: 'encoders.7' is not a module",
        ),
        ({"bottleneck": "middle_blks", "skips": "encoders.0"}, r"entangle_at.skips must be a list of module paths"),
        (
            {"bottleneck": "middle_blks", "skip": ["encoders.0"]},
            r"entangle_at must be a mapping with keys bottleneck and skips",
        ),
        # LayerNorm runs channels-last inside the block: not an (N, C, H, W) feature map.
        (
            {"bottleneck": "encoders.0.0.norm1.norm"},
            r"'encoders.0.0.norm1.norm' gives shape \(1, 64, 64, 4\) for a \(1, 3, 64, 64\) input",
        ),
    ],
)
def test_bad_module_paths_are_named(entangle_at: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ERLNet({"type": "TinyNAFNet"}, entangle="clgd", entangle_at=entangle_at)


def test_an_adapter_whose_feature_info_disagrees_with_the_tensors_names_the_shapes() -> None:
    class WrongWidths(TinyNAFNetAdapter):
        def feature_points(self) -> list[FeaturePoint]:
            *skips, bottleneck = super().feature_points()
            return [*skips, FeaturePoint("bottleneck", bottleneck.num_chs * 2, bottleneck.reduction)]

    with pytest.raises(
        ValueError,
        match=r"bottleneck has shape \(1, 16, 8, 12\) for an input of 32x48, but "
        r"feature_info says 32 channels at stride 4",
    ):
        WrongWidths(TinyNAFNet()).verify()


def test_an_adapter_that_cannot_follow_a_shape_branch_is_refused_naming_the_shape() -> None:
    with pytest.raises(
        ValueError,
        match=r"differs from ShapeBranchingUNet.forward\(x\) for an input of shape "
        r"\(1, 3, 80, 64\) \(it agrees at \(1, 3, 32, 48\)\)",
    ):
        ERLNet({"type": "ShapeBranchingUNet"})


def test_a_network_with_neither_protocol_nor_adapter_is_told_both_ways() -> None:
    with pytest.raises(TypeError, match=r"SkipConvUNet does not implement.*no adapter.*entangle_at"):
        build_backbone({"type": "SkipConvUNet"})


def test_module_path_backbones_come_from_the_options_for_the_teacher_too() -> None:
    net = ERLNet({"type": "TinyRestormer"}, entangle="clgd", entangle_at={"bottleneck": "latent"})
    teacher = net.new_backbone()
    assert set(teacher.state_dict()) == set(plain_network({"type": "TinyRestormer"}).state_dict())
    bottleneck, skips = teacher.encode(torch.rand(1, 3, 16, 16))
    assert bottleneck.shape == (1, 16, 4, 4) and skips == []


def test_a_residual_whose_shape_disagrees_with_the_point_names_both_shapes() -> None:
    net = ERLNet({"type": "TinyNAFNet"}, entangle="clgd", entangle_at={"bottleneck": "middle_blks"})
    # A residual encoder of another width, as a mismatched rebuild would give.
    net.residual_encoder = ERLNet({"type": "TinyNAFNet", "width": 8}, entangle="clgd").residual_encoder
    net.projections = None
    with pytest.raises(
        ValueError,
        match=r"bottleneck \(module 'middle_blks'\): the backbone's feature has shape "
        r"\(1, 16, 4, 4\) but the residual encoder gives \(1, 8, 16, 16\) \(feature_info: 16 channels at stride 4\)",
    ):
        net(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("case", ["nafnet", "nafnet_hooks"])
def test_compiled_wrapper_computes_what_the_eager_one_does(case: str) -> None:
    backbone, extra, channels = WRAPPED[case]
    torch.manual_seed(0)
    net = ERLNet(backbone, entangle="mlgd", **extra)  # the hooks exist before torch.compile sees the network
    for projection in net.projections:
        nn.init.normal_(projection.weight, 0, 0.1)
    x = torch.rand(2, channels, 32, 32)
    compiled = torch.compile(net, backend="aot_eager")  # dynamo and autograd tracing, no C++ compiler needed
    out, features = compiled(x, return_features=True)
    assert torch.allclose(out, net(x), atol=1e-6)
    (out.mean() + sum(f.mean() for f in features)).backward()
    assert all(p.grad is not None for p in net.residual_encoder.parameters())


@ARCH_REGISTRY.register()
class TimmStyleMEMD(MEMD):
    """MEMD declaring ``feature_info`` as timm does: dicts of ``num_chs`` and ``reduction``."""

    def __init__(self, keys: tuple[str, ...] = ("num_chs", "reduction"), **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_info = [
            {key: getattr(point, key) for key in keys} | ({"module": point.name} if index == 0 else {})
            for index, point in enumerate(self.feature_info)
        ]


def test_timm_style_feature_info_is_accepted_and_anything_else_refused() -> None:
    tiny = {"num_feat": 4, "num_down": 2, "num_dense_layers": 1, "growth_rate": 4}
    torch.manual_seed(0)
    net = ERLNet({"type": "TimmStyleMEMD", **tiny}, entangle="mlgd").eval()
    points = net.backbone.feature_info
    assert all(isinstance(p, FeaturePoint) for p in points)
    assert [p.name for p in points][1:] == [f"point{i}" for i in range(1, len(points))]
    assert points[0].name == MEMD(**tiny).feature_info[0].name
    torch.manual_seed(0)
    plain = MEMD(**tiny).eval()
    x = torch.rand(1, 3, 16, 16)
    plain.load_state_dict(net.backbone.state_dict())
    assert torch.equal(net(x), plain(x))  # zero_init: the wrapper computes what its backbone does
    with pytest.raises(TypeError, match="feature_info is not a list of FeaturePoint .or of timm-style dicts"):
        build_backbone({"type": "TimmStyleMEMD", "keys": ("num_chs",), **tiny})
