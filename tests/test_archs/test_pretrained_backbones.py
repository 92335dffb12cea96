"""Pretrained restorers as ERL backbones (``backbone: {checkpoint: PATH}``): spandrel recognises the architecture,
the NAFNet adapter reproduces the network exactly, the wrapper starts as the pretrained network, stage I can be
skipped, and what cannot be wrapped is refused naming the file and the architecture."""

import copy
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_options
from safetensors.torch import save_file
from spandrel.architectures.DnCNN import DnCNN
from spandrel.architectures.DRUNet import DRUNet
from spandrel.architectures.NAFNet import NAFNet
from test_models.test_erl_training import erl_options
from torch import Tensor, nn

from erl_plugin.archs import ERLNet, NAFNetAdapter
from erl_plugin.archs.erl_arch import build_backbone
from erl_plugin.archs.pretrained import SPANDREL_MISSING, load_pretrained
from erl_plugin.engine.options import OptionsError, scale_iterations, validate_options
from erl_plugin.models.stages import StageError, parse_stages
from erl_plugin.train import main as run_erl_train
from erl_plugin.utils.checkpoint import safe_load

ODD_SIZES = [(37, 29), (17, 63), (1, 1)]
"""Input sizes NAFNet pads (to multiples of 4 here) and crops back."""


def tiny_nafnet(seed: int = 0) -> NAFNet:
    """spandrel's NAFNet, width 8, two levels; every weight drawn at random, so that no NAF block is the identity
    (NAFNet initialises its blocks' residual scales beta and gamma to zero)."""
    torch.manual_seed(seed)
    net = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1])
    with torch.no_grad():
        for param in net.parameters():
            param.normal_(0, 0.2)
    return net.eval()


def saved(net: nn.Module, path: Path) -> str:
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture
def nafnet_checkpoint(tmp_path: Path) -> tuple[NAFNet, str]:
    net = tiny_nafnet()
    return net, saved(net, tmp_path / "nafnet.pth")


def equal_states(first: dict[str, Tensor], second: dict[str, Tensor]) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------ recognition
@pytest.mark.parametrize(
    ("layout", "suffix"),
    [("plain", ".pth"), ("params", ".pth"), ("params_ema", ".pth"), ("module.", ".ckpt"), ("plain", ".safetensors")],
)
def test_spandrel_recognises_the_checkpoint_and_its_weights_load(tmp_path: Path, layout: str, suffix: str) -> None:
    net = tiny_nafnet()
    state = net.state_dict()
    path = tmp_path / f"nafnet{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    elif layout == "module.":  # a DataParallel checkpoint
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state if layout == "plain" else {layout: state}, path)
    architecture, loaded = load_pretrained({"checkpoint": str(path)})
    assert architecture == "NAFNet" and type(loaded) is NAFNet
    assert loaded.hyperparameters == {
        "img_channel": 3, "width": 8, "middle_blk_num": 1, "enc_blk_nums": [1, 2], "dec_blk_nums": [1, 1],
    }  # fmt: skip
    assert equal_states(loaded.state_dict(), state)
    fresh = load_pretrained({"checkpoint": str(path)}, weights=False)[1]
    assert fresh.state_dict().keys() == state.keys() and not torch.equal(fresh.intro.weight, state["intro.weight"])


# ----------------------------------------------------------------------------------------- the adapter
def test_nafnet_adapter_reproduces_the_network_exactly_on_every_size(nafnet_checkpoint: tuple[NAFNet, str]) -> None:
    net, path = nafnet_checkpoint
    adapted = build_backbone({"checkpoint": path}).eval()
    assert type(adapted) is NAFNetAdapter
    assert [(p.num_chs, p.reduction) for p in adapted.feature_info] == [(8, 1), (16, 2), (32, 4)]
    assert equal_states(adapted.state_dict(), net.state_dict())  # the network's own names
    with torch.no_grad():
        for height, width in [*ODD_SIZES, (32, 48)]:
            x = torch.rand(2, 3, height, width)
            bottleneck, skips = adapted.encode(x)
            padded = (-(-height // 4) * 4, -(-width // 4) * 4)
            assert [tuple(s.shape[-2:]) for s in skips] == [padded, (padded[0] // 2, padded[1] // 2)]
            out = adapted.decode(bottleneck, skips, x)
            assert out.shape == x.shape
            assert torch.equal(out, net(x)), (height, width)  # bit for bit: the same operations in the same order


class UncroppedNAFNetAdapter(NAFNetAdapter):
    """A faulty adapter that forgets NAFNet's crop: right on multiples of 4, wrong on any other size."""

    def decode(self, bottleneck: Tensor, skips: list[Tensor], x: Tensor) -> Tensor:
        feature = bottleneck
        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips), strict=True):
            feature = decoder(up(feature) + skip)
        return self.ending(feature) + self.network.check_image_size(x)


def test_the_probe_checks_sizes_the_network_pads() -> None:
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 37, 29\), which the network pads.*\(1, 3, 40, 32\)"):
        UncroppedNAFNetAdapter(tiny_nafnet()).verify()


def test_nafnet_adapter_refuses_levels_that_do_not_pair() -> None:
    net = NAFNet(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1])
    with pytest.raises(ValueError, match="2 encoder levels, 2 downs, 1 ups and 1 decoder levels"):
        NAFNetAdapter(net)


# --------------------------------------------------------------------------------------------- the wrapper
@pytest.mark.parametrize(("entangle", "inject"), [("mlgd", "decoder"), ("mlgd", "encoder"), ("clgd", "decoder")])
def test_zero_init_wrapper_starts_as_the_pretrained_network(
    nafnet_checkpoint: tuple[NAFNet, str], entangle: str, inject: str
) -> None:
    net, path = nafnet_checkpoint
    torch.manual_seed(1)
    erl = ERLNet({"checkpoint": path}, entangle=entangle, inject=inject).eval()
    assert erl.backbone_options == {"checkpoint": path, "type": "NAFNet"}  # the recognised architecture
    assert equal_states(erl.backbone_state_dict(), net.state_dict())  # the checkpoint's weights
    with torch.no_grad():
        for height, width in ODD_SIZES[:2]:
            x = torch.rand(1, 3, height, width)
            assert torch.equal(erl(x), net(x))
        for projection in erl.projections:  # the residual encoder really takes part once they are not zero
            projection.weight.normal_(0, 0.5)
        assert not torch.equal(erl(x), net(x))


def test_copies_of_the_backbone_start_fresh_unless_they_copy_it(nafnet_checkpoint: tuple[NAFNet, str]) -> None:
    net, path = nafnet_checkpoint
    encoder_keys = [k for k in net.state_dict() if not k.startswith(("ups.", "decoders.", "ending."))]
    main = ERLNet({"checkpoint": path, "type": "NAFNet"}, ren_init="main")
    assert all(torch.equal(main.residual_encoder.state_dict()[k], net.state_dict()[k]) for k in encoder_keys)
    random = ERLNet({"checkpoint": path}, ren_init="random")
    assert not torch.equal(random.residual_encoder.intro.weight, net.intro.weight)
    teacher = random.new_backbone(weights=False)  # what ERLModel's teacher starts as
    assert type(teacher) is NAFNetAdapter and teacher.state_dict().keys() == net.state_dict().keys()
    assert not torch.equal(teacher.intro.weight, net.intro.weight)
    assert equal_states(random.new_backbone().state_dict(), net.state_dict())


def test_type_and_other_keys_next_to_the_checkpoint(nafnet_checkpoint: tuple[NAFNet, str]) -> None:
    _, path = nafnet_checkpoint
    assert type(build_backbone({"type": "erl_plugin.NAFNet", "checkpoint": path})) is NAFNetAdapter
    with pytest.raises(
        ValueError, match=rf"backbone.type: 'Restormer', but spandrel recognises .*{re.escape(path)}' as NAFNet"
    ):
        ERLNet({"type": "Restormer", "checkpoint": path})
    with pytest.raises(ValueError, match="backbone: width next to checkpoint: the checkpoint fixes the architecture"):
        build_backbone({"checkpoint": path, "width": 16})


def test_architecture_without_adapter_is_refused_naming_it(tmp_path: Path) -> None:
    path = saved(DnCNN(in_nc=3, out_nc=3, nc=8, nb=8, act_mode="R"), tmp_path / "dncnn.pth")
    with pytest.raises(TypeError) as error:
        ERLNet({"checkpoint": path})
    message = str(error.value)
    assert message.startswith(f"backbone.checkpoint: {path!r} holds a DnCNN (spandrel's name), which does not")
    assert "has no adapter (adapters exist for NAFNet" in message and "register one for 'DnCNN'" in message
    assert "network_g.entangle_at: {bottleneck: ..., skips: [...]} (its top-level modules: model;" in message


def test_architecture_without_adapter_is_wrapped_at_entangle_at(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = DRUNet(in_nc=3, out_nc=3, nc=[4, 8, 16, 32], nb=2).eval()
    path = saved(net, tmp_path / "drunet.pth")
    paths = {"bottleneck": "m_body", "skips": ["m_head", "m_down1", "m_down2", "m_down3"]}
    erl = ERLNet({"checkpoint": path}, inject="encoder", entangle_at=paths).eval()
    assert equal_states(erl.backbone_state_dict(), net.state_dict())
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(erl(x), net(x))
        out, features = erl(x, return_features=True)
    assert [f.shape[1] for f in features] == [4, 8, 16, 32, 32]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"conv.weight": torch.zeros(4, 3, 3, 3)}, r"spandrel \S+ does not recognise the architecture of '{path}' "
         r"\(keys: conv.weight\)\. For a network of your own, register it"),
        (b"not a checkpoint", r"backbone.checkpoint: '{path}' cannot be read as a checkpoint"),
        ({}, r"does not recognise the architecture of '{path}' \(keys: none\)"),
    ],
)  # fmt: skip
def test_an_unrecognised_checkpoint_is_refused_naming_the_file(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "mystery.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ValueError, match=message.format(path=re.escape(str(path)))):
        ERLNet({"checkpoint": str(path)})


def test_a_checkpoint_that_is_no_file_or_of_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"backbone.checkpoint: 'missing.pth' is not a file \(a relative path is read"):
        build_backbone({"checkpoint": "missing.pth"})
    (tmp_path / "weights.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match=r"weights.onnx': spandrel reads .pth, .pt, .ckpt, .safetensors files"):
        build_backbone({"checkpoint": str(tmp_path / "weights.onnx")})


def test_without_spandrel_the_error_names_the_extra(
    nafnet_checkpoint: tuple[NAFNet, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "spandrel", None)  # import spandrel now raises ImportError
    with pytest.raises(ImportError) as error:
        build_backbone({"checkpoint": nafnet_checkpoint[1]})
    assert str(error.value) == SPANDREL_MISSING
    assert "pip install 'erl-plugin[backbones]'" in SPANDREL_MISSING


# ------------------------------------------------------------------------------------------ skipping stage I
def _stage_opt(stage_iters: list[int], backbone: dict | None = None, **train: object) -> dict:
    return {
        "network_g": {"type": "ERLNet", "backbone": backbone or {"type": "MEMD"}},
        "path": {},
        "train": {
            "strategy": "MA_D",
            "stage_iters": stage_iters,
            "total_iter": sum(stage_iters),
            "feature_opt": {"type": "FeatureReconstructionLoss"},
            **train,
        },
    }


def test_zero_iterations_skip_stage_one_of_a_trained_backbone() -> None:
    stages = parse_stages(_stage_opt([2, 0, 3, 1], {"checkpoint": "nafnet.pth"}))
    assert [(s.name, s.first, s.last, s.entangled) for s in stages] == [
        ("teacher", 1, 2, False),
        ("stage2", 3, 5, True),
        ("stage3", 6, 6, True),
    ]
    loaded = _stage_opt([2, 0, 3, 1])
    loaded["path"]["pretrain_network_g"] = "memd_stage1.pth"
    assert [s.name for s in parse_stages(loaded)] == ["teacher", "stage2", "stage3"]
    aligned = parse_stages(_stage_opt([0, 2, 3, 1], {"checkpoint": "n.pth"}, teacher_mode="aligned"))
    assert [(s.name, s.train) for s in aligned][0] == ("teacher", ("teacher_encoder",))  # through the trained decoder


@pytest.mark.parametrize(
    ("stage_iters", "backbone", "strategy", "message"),
    [
        ([2, 0, 3, 1], None, "MA_D", "stage1 has 0 iterations, but nothing has trained the backbone: skipping stage I"),
        ([2, 1, 0, 1], {"checkpoint": "n.pth"}, "MA_D", "stage2 has 0 iterations; only stage1 (the basic model) may"),
        ([0, 1, 3, 1], {"checkpoint": "n.pth"}, "MA_D", "a trained teacher is loaded with path.pretrain_network_t"),
        ([2, 0], {"checkpoint": "n.pth"}, "DT", "joint has 0 iterations; only stage1"),
        ([2, -1, 3, 1], {"checkpoint": "n.pth"}, "MA_D", "stage 'stage1'.iters: -1 must be a positive integer"),
    ],
)
def test_skipping_anything_else_is_refused(
    stage_iters: list, backbone: dict | None, strategy: str, message: str
) -> None:
    with pytest.raises(StageError, match=re.escape(message)):
        parse_stages(_stage_opt(stage_iters, backbone, strategy=strategy))


def test_scaled_iterations_keep_stage_one_skipped() -> None:
    scaled = scale_iterations(_stage_opt([200, 0, 300, 100], {"checkpoint": "n.pth"}), 0.01)
    assert scaled["train"]["stage_iters"] == [2, 0, 3, 1] and scaled["train"]["total_iter"] == 6


def pretrained_erl_options(data: dict[str, str], name: str, checkpoint: str, stage_iters: list[int]) -> dict:
    opt = erl_options(data, name, stage_iters)
    opt["network_g"]["backbone"] = {"checkpoint": checkpoint}
    opt["val"]["val_freq"] = sum(stage_iters)
    return opt


def test_the_options_check_refuses_a_bad_checkpoint_naming_the_key(tmp_path: Path, tiny_lmdb: dict[str, str]) -> None:
    opt = pretrained_erl_options(tiny_lmdb, "checked", str(tmp_path / "absent.pth"), [1, 0, 1, 1])
    with pytest.raises(OptionsError, match=r"x.yml: network_g: backbone.checkpoint: '.*absent.pth' is not a file"):
        validate_options(copy.deepcopy(opt), "x.yml", is_train=True)
    opt["network_g"]["backbone"]["checkpoint"] = ""
    with pytest.raises(OptionsError, match="x.yml: network_g.backbone.checkpoint: '' must be a non-empty string"):
        validate_options(opt, "x.yml", is_train=True)


def test_a_pretrained_nafnet_trains_with_stage_one_skipped(
    tmp_path: Path, tiny_lmdb: dict[str, str], monkeypatch: pytest.MonkeyPatch, nafnet_checkpoint: tuple[NAFNet, str]
) -> None:
    net, checkpoint = nafnet_checkpoint
    monkeypatch.chdir(tmp_path)
    opt = pretrained_erl_options(tiny_lmdb, "pretrained", checkpoint, [1, 0, 2, 1])
    threads = torch.get_num_threads()
    try:
        assert run_erl_train(["-opt", str(write_options(tmp_path, opt)), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    experiment = tmp_path / "experiments/pretrained"
    (log,) = experiment.glob("train_pretrained_*.log")
    text = log.read_text()
    assert re.findall(r"Stage \d/\d '\w+', iterations \d+-\d+", text) == [
        "Stage 1/3 'teacher', iterations 1-1",
        "Stage 2/3 'stage2', iterations 2-3",
        "Stage 3/3 'stage3', iterations 4-4",
    ]
    assert "Stage 'stage2': the residual encoder starts as a copy of the main encoder" in text
    assert not list((experiment / "models").glob("*stage1*"))
    final = safe_load(str(experiment / "models/net_g_latest.pth"))["params"]
    pretrained = net.state_dict()
    decoder = ("ups.", "decoders.", "ending.")
    # MA_D after stage I: stage2 trains the residual encoder, stage3 it and the decoder; the main encoder stays.
    for key, value in pretrained.items():
        assert torch.equal(final[f"backbone.{key}"], value) != key.startswith(decoder), key
    assert not torch.equal(final["residual_encoder.intro.weight"], pretrained["intro.weight"])
