"""erl-export: TorchScript and ONNX models of MEMD and ERLNet that compute what PyTorch does, at any size."""

import contextlib
import io
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from unet_zoo import ShapeBranchingUNet, SkipConvUNet

import erl_plugin  # noqa: F401  (registers the networks)
from erl_plugin.archs import memd_arch
from erl_plugin.archs.erl_arch import ERLNet
from erl_plugin.archs.memd_arch import MEMD
from erl_plugin.cli.export import main
from erl_plugin.evaluation import export
from erl_plugin.evaluation.export import CHECK_SIZES, OPSET, TOLERANCE
from erl_plugin.utils.outputs import MARKER

BACKBONE = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}
MEMD_SKIPS = ["encoder_blocks.0", "encoder_blocks.1", "encoder_blocks.2"]
NETWORKS = {
    "memd": BACKBONE,
    # zero_init off and a random residual encoder: the residuals change the output, so a graph without them fails
    "erl_clgd": {"type": "ERLNet", "backbone": BACKBONE, "entangle": "clgd", "zero_init": False, "ren_init": "random"},
    "erl_mlgd": {"type": "ERLNet", "backbone": BACKBONE, "entangle": "mlgd", "zero_init": False, "ren_init": "random"},
    "erl_clgd_hooks": {
        "type": "ERLNet",
        "backbone": BACKBONE,
        "entangle": "clgd",
        "zero_init": False,
        "ren_init": "random",
        "entangle_at": {"bottleneck": "encoder_blocks.3"},
    },
    "erl_mlgd_hooks": {
        "type": "ERLNet",
        "backbone": BACKBONE,
        "entangle": "mlgd",
        "inject": "encoder",
        "zero_init": False,
        "ren_init": "random",
        "entangle_at": {"bottleneck": "encoder_blocks.3", "skips": MEMD_SKIPS},
    },
}
# Sizes the tool's own check does not use: tiny (replicate padding), odd, on the grid; batches of 3.
OTHER_SIZES = [(5, 3), (23, 90), (40, 48)]

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:FutureWarning")


def _build(network_g: dict) -> nn.Module:
    torch.manual_seed(0)
    kwargs = {key: value for key, value in network_g.items() if key != "type"}
    return (ERLNet(**kwargs) if network_g["type"] == "ERLNet" else MEMD(**kwargs)).eval()


def _save(folder: Path, network_g: dict) -> tuple[nn.Module, Path, Path]:
    """The network, its options file and its checkpoint, as training would leave them."""
    net = _build(network_g)
    opt, checkpoint = folder / "opt.yml", folder / "net_g_latest.pth"
    opt.write_text(yaml.safe_dump({"name": "export_test", "model_type": "SRModel", "network_g": network_g}))
    torch.save({"params": net.state_dict()}, checkpoint)
    return net, opt, checkpoint


def _run(argv: list[str]) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(argv)
    return status, stdout.getvalue(), stderr.getvalue()


@pytest.fixture(scope="module", params=sorted(NETWORKS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One export (both formats) per network kind."""
    folder = tmp_path_factory.mktemp(request.param)
    net, opt, checkpoint = _save(folder, NETWORKS[request.param])
    status, stdout, stderr = _run(["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(folder / "out")])
    return SimpleNamespace(kind=request.param, net=net, out=folder / "out", status=status, stdout=stdout, stderr=stderr)


def _inputs() -> list[Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 3, height, width, generator=generator) for height, width in OTHER_SIZES]


def _onnx_session(path: Path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_export_writes_both_models_and_prints_the_check(exported: SimpleNamespace) -> None:
    assert exported.status == 0, exported.stderr
    assert sorted(path.name for path in exported.out.iterdir()) == sorted(
        [MARKER, "net_g_latest.onnx", "net_g_latest.pt"]
    )
    assert f"ONNX opset {OPSET}" in exported.stdout
    assert f"max |difference| <= {TOLERANCE:.0e}" in exported.stdout
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in exported.stdout.splitlines()}
    for fmt in ("torchscript", "onnx"):
        for height, width in CHECK_SIZES:
            row = rows[fmt, f"{height}x{width}"]
            assert row.endswith("| ok |")
            assert float(row.split("|")[3]) <= TOLERANCE


def test_exported_models_compute_what_pytorch_does_at_other_sizes(exported: SimpleNamespace) -> None:
    traced = torch.jit.load(str(exported.out / "net_g_latest.pt"))
    session = _onnx_session(exported.out / "net_g_latest.onnx")
    for x in _inputs():
        with torch.no_grad():
            expected = exported.net(x)
            from_torchscript = traced(x)
        from_onnx = session.run(["output"], {"input": x.numpy()})[0]
        assert from_torchscript.shape == from_onnx.shape == expected.shape == x.shape
        assert (from_torchscript - expected).abs().max().item() <= TOLERANCE, tuple(x.shape)
        assert np.abs(from_onnx - expected.numpy()).max() <= TOLERANCE, tuple(x.shape)


@pytest.mark.parametrize("kind", [kind for kind in sorted(NETWORKS) if kind.startswith("erl_")])
def test_the_test_networks_entangle(kind: str) -> None:
    """ERLNet's output differs from its backbone's alone: a model that matches it carries the residual encoder."""
    net = _build(NETWORKS[kind])
    x = _inputs()[1]
    with torch.no_grad():
        assert (net(x) - net(x, entangled=False)).abs().max().item() > 100 * TOLERANCE


def test_onnx_graph_has_the_stated_opset_and_dynamic_axes(exported: SimpleNamespace) -> None:
    model = onnx.load(str(exported.out / "net_g_latest.onnx"))
    onnx.checker.check_model(model)
    assert [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")] == [OPSET]
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        assert [dim.dim_param for dim in dims] == ["batch", "", "height", "width"], value.name
        assert dims[1].dim_value == 3
    assert [value.name for value in model.graph.input] == ["input"]
    assert [value.name for value in model.graph.output] == ["output"]


def test_torchscript_model_records_no_device(exported: SimpleNamespace) -> None:
    """A trace that recorded the CPU as a constant would fail on a CUDA input; the padding follows the input."""
    graph = torch.jit.load(str(exported.out / "net_g_latest.pt")).inlined_graph
    devices = [str(node) for node in graph.findAllNodes("prim::Constant") if str(node.output().type()) == "Device"]
    assert devices == []


def test_one_format(tmp_path: Path) -> None:
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    status, stdout, stderr = _run([*argv, "--format", "onnx", "--name", "memd"])
    assert status == 0, stderr
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [MARKER, "memd.onnx"]
    assert "| torchscript |" not in stdout


def test_torchscript_needs_no_onnx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime then fails
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    status, _, stderr = _run(argv)
    assert status == 2
    assert stderr.startswith("error: ONNX export needs onnx and onnxruntime: pip install 'erl-plugin[export]'")
    assert not (tmp_path / "out").exists()
    status, _, stderr = _run([*argv, "--format", "torchscript"])
    assert status == 0, stderr
    assert (tmp_path / "out" / "net_g_latest.pt").is_file()


def _old_pad_to_multiple(x: Tensor, multiple: int) -> Tensor:
    """MEMD's padding before it was traceable: Python branches on the size, which a trace fixes."""
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if pad_w:
        x = F.pad(x, (0, pad_w, 0, 0), mode="reflect" if pad_w < width else "replicate")
    if pad_h:
        x = F.pad(x, (0, 0, 0, pad_h), mode="reflect" if pad_h < height else "replicate")
    return x


@pytest.mark.parametrize("multiple", [2, 8, 16])
def test_traceable_padding_gives_what_the_branching_one_gives(multiple: int) -> None:
    """MEMD's padding, eager and traced at one size, equals reflect (replicate for tiny sides) F.pad exactly."""
    traced = torch.jit.trace(lambda x: memd_arch.pad_to_multiple(x, multiple), torch.rand(1, 2, 16, 16))
    for height in range(1, 20):
        for width in (1, 2, 3, 7, 8, 9, 17):
            x = torch.rand(2, 2, height, width)
            expected = _old_pad_to_multiple(x, multiple)
            assert torch.equal(memd_arch.pad_to_multiple(x, multiple), expected), (height, width)
            assert torch.equal(traced(x), expected), (height, width)


def test_a_trace_that_fixes_the_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memd_arch, "pad_to_multiple", _old_pad_to_multiple)
    monkeypatch.setattr(export, "pad_to_multiple", _old_pad_to_multiple)
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    status, stdout, stderr = _run(["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")])
    assert status == 1
    assert stderr.count("\n") == 1 and stderr.startswith("error: MEMD (network_g of opt.yml) is not exported: ")
    assert "the onnx model fails on a 37x53 input" in stderr
    assert "the torchscript model fails on a 101x75 input" in stderr
    assert stderr.rstrip().endswith("nothing was written")
    assert "| onnx | 37x53 | did not run | REFUSED |" in stdout
    assert "| onnx | 64x64 |" in stdout  # on the traced grid: it runs
    assert not (tmp_path / "out").exists()


def test_a_difference_over_the_tolerance_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "TOLERANCE", 1e-12)  # float32 ONNX kernels differ from PyTorch's by ~1e-7
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--format", "onnx"]
    status, stdout, stderr = _run(argv)
    assert status == 1
    assert "the onnx model differs from PyTorch by " in stderr
    assert "on a 37x53 input (tolerance 1e-12)" in stderr
    assert "| onnx | 37x53 |" in stdout and "| REFUSED |" in stdout
    assert not (tmp_path / "out").exists()


def test_a_network_that_fails_on_a_check_size_itself_is_refused(tmp_path: Path) -> None:
    """ShapeBranchingUNet declares no grid and adds a skip to an upsampled map: odd sizes fail in PyTorch."""
    opt, checkpoint = tmp_path / "opt.yml", tmp_path / "net.pth"
    opt.write_text(yaml.safe_dump({"custom_imports": ["unet_zoo"], "network_g": {"type": "ShapeBranchingUNet"}}))
    torch.save({"params": ShapeBranchingUNet().state_dict()}, checkpoint)
    status, _, stderr = _run(["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")])
    assert status == 1
    assert stderr.startswith("error: the network itself fails on a 37x53 input: RuntimeError: ")
    assert stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_erlnet_hooked_exports_and_where_a_trace_fails_the_backbone_is_offered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SkipConvUNet's forward runs ``up`` (removed from the residual encoder) before ``skip_conv``, its last
    point: the hooked ERLNet traces and exports. Where a trace fails, the refusal offers the backbone alone."""
    network_g = {"type": "ERLNet", "backbone": {"type": "SkipConvUNet"}, "entangle": "mlgd"}
    network_g["entangle_at"] = {"bottleneck": "down", "skips": ["skip_conv"]}
    opt, checkpoint = tmp_path / "opt.yml", tmp_path / "net_g_latest.pth"
    opt.write_text(yaml.safe_dump({"custom_imports": ["unet_zoo"], "network_g": network_g}))
    torch.manual_seed(0)
    torch.save({"params": ERLNet(**{k: v for k, v in network_g.items() if k != "type"}).state_dict()}, checkpoint)
    status, _, stderr = _run(["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "hooked")])
    assert status == 0, stderr
    assert {"net_g_latest.pt", "net_g_latest.onnx"} <= {path.name for path in (tmp_path / "hooked").iterdir()}

    def trace_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Cannot insert a Tensor that requires grad as a constant")

    monkeypatch.setattr(torch.jit, "trace", trace_fails)
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]
    status, _, stderr = _run(argv)
    assert status == 1
    assert stderr.count("\n") == 1
    assert stderr.startswith("error: torchscript export of ERLNet (network_g of opt.yml) failed: RuntimeError: ")
    assert "ERLNet wrapped through entangle_at uses forward hooks that a trace cannot follow" in stderr
    assert "export the backbone alone (a SkipConvUNet checkpoint" in stderr
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()

    backbone = tmp_path / "skipconvunet_stage1.pth"
    torch.save({"params": SkipConvUNet().state_dict()}, backbone)
    status, stdout, stderr = _run(["--opt", str(opt), "--checkpoint", str(backbone), "--out", str(tmp_path / "out")])
    assert status == 0, stderr
    assert "exported SkipConvUNet alone (a backbone checkpoint under ERLNet options), not ERL-Net" in stdout
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == sorted(
        [MARKER, "skipconvunet_stage1.onnx", "skipconvunet_stage1.pt"]
    )


def test_a_missing_checkpoint_is_refused(tmp_path: Path) -> None:
    _, opt, _ = _save(tmp_path, BACKBONE)
    missing = tmp_path / "missing.pth"
    status, _, stderr = _run(["--opt", str(opt), "--checkpoint", str(missing), "--out", str(tmp_path / "out")])
    assert status == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and f"{missing}: no such file" in stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["file", "link"])
def test_a_file_of_yours_in_out_is_never_replaced(tmp_path: Path, kind: str) -> None:
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    out = tmp_path / "out"
    out.mkdir()
    yours = tmp_path / "yours.onnx"
    yours.write_bytes(b"yours")
    if kind == "file":
        (out / "net_g_latest.onnx").write_bytes(b"yours")
    else:
        (out / "net_g_latest.onnx").symlink_to(yours)
    for extra in ([], ["--overwrite"]):
        status, _, stderr = _run(["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(out), *extra])
        assert status == 2
        assert stderr.startswith("error: ") and "net_g_latest.onnx" in stderr
        assert ("symbolic link" if kind == "link" else "was not written by the tools") in stderr
        assert (out / "net_g_latest.onnx").read_bytes() == b"yours"
        assert yours.read_bytes() == b"yours"
        assert not (out / "net_g_latest.pt").exists()


def test_an_earlier_export_is_replaced_only_with_overwrite(tmp_path: Path) -> None:
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--format", "onnx"]
    assert _run(argv)[0] == 0
    status, _, stderr = _run(argv)
    assert status == 2 and "pass --overwrite to replace it" in stderr
    status, _, stderr = _run([*argv, "--overwrite"])
    assert status == 0, stderr


@pytest.mark.parametrize("name", ["a/b", ".hidden", ""])
def test_a_name_that_is_not_a_file_name_is_refused(tmp_path: Path, name: str) -> None:
    _, opt, checkpoint = _save(tmp_path, BACKBONE)
    argv = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), "--name", name]
    status, _, stderr = _run(argv)
    assert status == 2
    assert stderr.startswith(f"error: export name {name!r}: a plain file name is needed")
