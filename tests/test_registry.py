"""mmengine's registry builds the networks BasicSR's registry builds, from a scoped child only."""

import torch
from basicsr.archs import build_network
from mmengine.registry import MODELS

from erl_plugin import registry

MEMD_OPTIONS = {"num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def _state(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return net.state_dict()


def test_mmengine_builds_the_same_erlnet_as_basicsr() -> None:
    torch.manual_seed(0)
    ours = MODELS.build({"type": "erl_plugin.ERLNet", "backbone": {"type": "erl_plugin.MEMD", **MEMD_OPTIONS}})
    torch.manual_seed(0)
    theirs = build_network({"type": "ERLNet", "backbone": {"type": "MEMD", **MEMD_OPTIONS}})
    assert type(ours) is type(theirs)
    a, b = _state(ours), _state(theirs)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(ours(x), theirs(x))
    assert ours.backbone_options["type"] == "MEMD"


def test_only_the_scoped_child_holds_the_names() -> None:
    assert registry.MODELS.scope == "erl_plugin" and registry.MODELS.parent is MODELS
    for name in registry.NETWORKS:
        assert name in registry.MODELS.module_dict
        assert name not in MODELS.module_dict
