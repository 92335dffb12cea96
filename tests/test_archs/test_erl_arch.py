"""ERLNet: exactness with zero_init, where residuals go, the residual encoder, branches, checkpoints."""

import pytest
import torch
from basicsr.archs import build_network
from torch import Tensor

from erl_plugin.archs import MEMD, ERLNet
from erl_plugin.archs.erl_arch import BRANCHES

BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}
DECODER = ("ups.", "fusions.", "decoder_blocks.", "head.")


def _memd_like(net: ERLNet) -> MEMD:
    plain = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"})
    plain.load_state_dict(net.backbone_state_dict())
    return plain


def _randomise_projections(net: ERLNet) -> None:
    with torch.no_grad():
        for projection in net.projections:
            projection.weight.normal_(0, 0.5)


@pytest.mark.parametrize("entangle", ["clgd", "mlgd"])
@pytest.mark.parametrize("inject", ["decoder", "encoder"])
def test_zero_init_wrapper_equals_backbone_exactly(entangle: str, inject: str) -> None:
    torch.manual_seed(0)
    net = ERLNet(BACKBONE, entangle=entangle, inject=inject, ren_init="random")
    x = torch.rand(2, 3, 19, 26)
    assert torch.equal(net(x), _memd_like(net)(x))


def _spy_decode(net: ERLNet) -> list[list[Tensor]]:
    calls: list[list[Tensor]] = []
    decode = net.backbone.decode

    def spy(bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        calls.append([*skips, bottleneck])
        return decode(bottleneck, skips, x)

    net.backbone.decode = spy
    return calls


@pytest.mark.parametrize(("entangle", "changed"), [("clgd", [False, False, False, True]), ("mlgd", [True] * 4)])
def test_clgd_touches_the_bottleneck_only_and_mlgd_every_point(entangle: str, changed: list[bool]) -> None:
    torch.manual_seed(0)
    net = ERLNet(BACKBONE, entangle=entangle)
    _randomise_projections(net)
    x = torch.rand(1, 3, 16, 16)
    bottleneck, skips = net.backbone.encode(x)
    calls = _spy_decode(net)
    _, features = net(x, return_features=True)
    (handed,) = calls
    assert [not torch.equal(a, b) for a, b in zip(handed, [*skips, bottleneck], strict=True)] == changed
    assert len(features) == sum(changed) and net.feature_names[-1] == "bottleneck"
    assert all(
        torch.equal(f, h) for f, h in zip(features, [h for h, c in zip(handed, changed, strict=True) if c], strict=True)
    )


@pytest.mark.parametrize(("inject", "main_path_untouched"), [("decoder", True), ("encoder", False)])
def test_inject_decoder_leaves_the_main_encoder_path_alone(inject: str, main_path_untouched: bool) -> None:
    torch.manual_seed(0)
    net = ERLNet(BACKBONE, entangle="mlgd", inject=inject)
    _randomise_projections(net)
    x = torch.rand(1, 3, 16, 16)
    seen: list[Tensor] = []
    net.backbone.encoder_blocks[-1].register_forward_hook(lambda module, args, output: seen.append(args[0]))
    net(x)
    net(x, entangled=False)
    # What enters the deepest encoder block: with inject=decoder the main encoder never sees a residual.
    assert torch.equal(seen[0], seen[1]) is main_path_untouched


def test_residual_encoder_is_the_encoder_only_and_starts_from_main() -> None:
    net = ERLNet(BACKBONE, ren_init="main")
    names = [name for name, _ in net.residual_encoder.named_parameters()]
    assert names and not any(name.startswith(DECODER) for name in names)
    main = dict(net.backbone.named_parameters())
    assert all(torch.equal(p, main[n]) for n, p in net.residual_encoder.named_parameters())
    assert sum(p.numel() for p in net.residual_encoder.parameters()) == sum(
        p.numel() for p in net.branch_parameters("main_encoder")
    )
    torch.manual_seed(1)
    random = ERLNet(BACKBONE, ren_init="random")
    assert not torch.equal(random.residual_encoder.stem[0].weight, random.backbone.stem[0].weight)


def test_branches_partition_the_parameters() -> None:
    net = ERLNet(BACKBONE)
    groups = {name: {id(p) for p in net.branch_parameters(name)} for name in BRANCHES}
    assert sum(len(g) for g in groups.values()) == len({id(p) for p in net.parameters()})
    assert all(groups[a].isdisjoint(groups[b]) for a in BRANCHES for b in BRANCHES if a != b)
    with pytest.raises(ValueError, match="branch='encoder' is not allowed; choose one of main_encoder, decoder"):
        list(net.branch_parameters("encoder"))


def test_plain_backbone_checkpoint_loads_in_and_exports_back() -> None:
    torch.manual_seed(0)
    memd = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"})
    net = build_network({"type": "ERLNet", "backbone": BACKBONE, "zero_init": False, "ren_init": "main"})
    net.load_state_dict(memd.state_dict())
    x = torch.rand(1, 3, 12, 12)
    assert torch.equal(net(x, entangled=False), memd(x))
    assert torch.equal(net.residual_encoder.stem[0].weight, memd.stem[0].weight)
    exported = MEMD(**{k: v for k, v in BACKBONE.items() if k != "type"})
    exported.load_state_dict(net.backbone_state_dict())
    assert torch.equal(exported(x), memd(x))
    roundtrip = ERLNet(BACKBONE, zero_init=False)
    roundtrip.load_state_dict(net.state_dict())
    assert torch.equal(roundtrip(x), net(x))


def test_mismatched_backbone_checkpoint_is_refused() -> None:
    wider = MEMD(num_feat=8, num_dense_layers=1, growth_rate=4)
    with pytest.raises(ValueError, match="a plain MEMD checkpoint does not match network_g"):
        ERLNet(BACKBONE).load_state_dict(wider.state_dict())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"backbone": {"type": "EDSR", "num_in_ch": 3, "num_out_ch": 3}},
            "EDSR does not implement the encoder/decoder",
        ),
        ({"backbone": {"type": "NoSuchNet"}}, "'NoSuchNet' is not a registered network"),
        ({"backbone": BACKBONE, "entangle": "both"}, "entangle='both' is not allowed; choose one of clgd, mlgd"),
        ({"backbone": BACKBONE, "inject": "skip"}, "inject='skip' is not allowed"),
        ({"backbone": BACKBONE, "ren_init": "copy"}, "ren_init='copy' is not allowed"),
    ],
)
def test_bad_arguments_name_the_key(kwargs: dict, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        ERLNet(**kwargs)
