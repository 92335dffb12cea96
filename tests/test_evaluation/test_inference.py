"""Tiled inference and the derain tool: tiles match whole images, formats survive, bad files are skipped."""

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_python

from erl_plugin.archs import MEMD
from erl_plugin.engine.options import OptionsError
from erl_plugin.evaluation.inference import derain_paths, derain_tiled, resolve_precision, tiled_forward
from erl_plugin.utils.outputs import MARKER

TINY = {"num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


def tiny_memd(identity: bool = False) -> MEMD:
    """A tiny random MEMD; with ``identity`` its head is zeroed, so the global residual returns the input."""
    torch.manual_seed(0)
    net = MEMD(**TINY, global_residual=identity).eval()
    if identity:
        torch.nn.init.zeros_(net.head.weight)
    return net


def scene(height: int, width: int, dtype: type = np.uint8, seed: int = 0) -> np.ndarray:
    """A smooth BGR image (upsampled noise) of the given size and pixel type."""
    noise = np.random.default_rng(seed).random((height // 8, width // 8, 3)).astype(np.float32)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    return np.rint(smooth * np.iinfo(dtype).max).astype(dtype)


def as_float(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / np.iinfo(image.dtype).max


def test_tile_covering_the_image_equals_whole() -> None:
    net, image = tiny_memd(), scene(96, 80, np.uint16)
    whole = as_float(derain_tiled(net, image, tile=None))
    assert np.abs(as_float(derain_tiled(net, image, tile=96, overlap=32)) - whole).max() < 1e-3
    x = torch.rand(1, 3, 96, 80)
    with torch.inference_mode():
        assert (tiled_forward(net, x, tile=96) - net(x)).abs().max() < 1e-3


def test_tiles_reproduce_a_pointwise_network_exactly() -> None:
    net, x = tiny_memd(identity=True), torch.rand(1, 3, 1003, 757)
    with torch.inference_mode():
        assert (tiled_forward(net, x, tile=256, overlap=32) - x).abs().max() < 1e-6
    image = scene(1003, 757)
    np.testing.assert_array_equal(derain_tiled(net, image, tile=256, overlap=32), image)


def test_tiles_stay_close_to_whole_image_and_feathering_helps(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "big.png"), scene(1003, 757, np.uint16))
    outputs = {}
    for name, tile, overlap in (("whole", None, 32), ("tiles", 256, 32), ("seams", 256, 0)):
        derain_paths(tiny_memd(), [tmp_path / "big.png"], tmp_path / name, tile=tile, overlap=overlap, progress=False)
        outputs[name] = as_float(cv2.imread(str(tmp_path / name / "big.png"), cv2.IMREAD_UNCHANGED))
    difference = np.abs(outputs["tiles"] - outputs["whole"])
    # Measured for this network and image: max 0.012, mean 3.0e-4 (no overlap: max 0.84, mean 4.5e-3).
    assert outputs["tiles"].shape == (1003, 757, 3)
    assert difference.max() < 0.05 and difference.mean() < 1e-3
    assert difference.mean() < np.abs(outputs["seams"] - outputs["whole"]).mean() / 5


def test_formats_are_kept(tmp_path: Path) -> None:
    images = {
        "photo.jpg": scene(40, 56),
        "eight.png": scene(40, 56),
        "sixteen.png": scene(40, 56, np.uint16),
        "gray.png": scene(40, 56)[..., 0],
        "alpha.png": np.dstack([scene(40, 56), scene(40, 56, seed=1)[..., :1]]),
    }
    (tmp_path / "in").mkdir()
    for name, image in images.items():
        cv2.imwrite(str(tmp_path / "in" / name), image)
    derain_paths(tiny_memd(), [tmp_path / "in"], tmp_path / "out", progress=False)
    for name, image in images.items():
        out = cv2.imread(str(tmp_path / "out" / name), cv2.IMREAD_UNCHANGED)
        assert (out.shape, out.dtype) == (image.shape, image.dtype), name
    alpha = cv2.imread(str(tmp_path / "out/alpha.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(alpha[..., 3], images["alpha.png"][..., 3])
    assert not np.array_equal(alpha[..., :3], images["alpha.png"][..., :3])  # colour went through the net


def test_gray_and_16_bit_values_survive_the_round_trip() -> None:
    net = tiny_memd(identity=True)
    for image in (scene(40, 56)[..., 0], scene(40, 56, np.uint16), scene(40, 56)[..., :1]):
        np.testing.assert_array_equal(derain_tiled(net, image, tile=16, overlap=4), image)


def test_unreadable_files_are_skipped_and_reported(tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "d.png"):
        cv2.imwrite(str(source / name), scene(32, 32))
    (source / "b.png").write_bytes(b"")
    (source / "c.jpg").write_text("not an image")
    (source / "e.png").write_bytes((source / "a.png").read_bytes()[:200])
    report = derain_paths(tiny_memd(), [source], tmp_path / "out", progress=False)
    assert sorted(path.name for path in report.written) == ["a.png", "d.png"]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [MARKER, "a.png", "d.png"]
    reasons = {path.name: reason for path, reason in report.skipped}
    assert set(reasons) == {"b.png", "c.jpg", "e.png"}
    assert "empty" in reasons["b.png"] and "corrupt" in reasons["e.png"]
    assert report.summary().splitlines()[0] == "2 derained, 3 skipped (device cpu, precision fp32)"
    assert f"skipped {source / 'c.jpg'}: " in report.summary()


def test_outputs_replace_only_the_tools_own_files_never_through_a_link(tmp_path: Path) -> None:
    """A rerun needs --overwrite; a file of the user's, or a link, where an output goes stops the run before
    any image is derained, and every file stays as it was."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(source / name), scene(32, 32))
    derain_paths(tiny_memd(), [source], tmp_path / "out", progress=False)
    with pytest.raises(FileExistsError, match="an earlier run's"):
        derain_paths(tiny_memd(), [source], tmp_path / "out", progress=False)
    assert len(derain_paths(tiny_memd(), [source], tmp_path / "out", progress=False, overwrite=True).written) == 2

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/a.png").write_bytes(b"the user's photo")
    (tmp_path / "linked").mkdir()
    (tmp_path / "precious.pth").write_bytes(b"weights")
    (tmp_path / "linked/b.png").symlink_to(tmp_path / "precious.pth")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="a.png exists and was not written by the tools"):
        derain_paths(tiny_memd(), [source], tmp_path / "mine", progress=False, overwrite=True)
    with pytest.raises(FileExistsError, match="b.png is a symbolic link"):
        derain_paths(tiny_memd(), [source], tmp_path / "linked", progress=False, overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["a.png"]  # nothing written beside it


@pytest.mark.parametrize(
    ("inputs", "output", "message"),
    [
        (["."], "sub/..", "is the input"),
        (["a.png"], "sub/..", "holds the input"),
        (["."], "derained", "lies inside the input"),
        (["photos"], ".", "holds the input"),
        (["photos/b.png"], ".", "holds the input"),
    ],
)
def test_an_output_folder_that_is_holds_or_lies_in_an_input_is_refused(
    tmp_path: Path, inputs: list[str], output: str, message: str
) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), scene(32, 32))
    (tmp_path / "photos").mkdir()
    cv2.imwrite(str(tmp_path / "photos/b.png"), scene(32, 32))
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.png")}
    with pytest.raises(ValueError, match=message):
        derain_paths(tiny_memd(), [tmp_path / i for i in inputs], tmp_path / output, progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_dir()) == ["photos"]  # no output folder made


def test_fp16_on_cpu_warns_and_runs_fp32(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), scene(32, 32, np.uint16))
    with pytest.warns(RuntimeWarning, match="fp16 needs CUDA"):
        report = derain_paths(tiny_memd(), [tmp_path / "a.png"], tmp_path / "half", precision="fp16", progress=False)
    derain_paths(tiny_memd(), [tmp_path / "a.png"], tmp_path / "full", progress=False)
    assert report.precision == "fp32"
    assert (tmp_path / "half/a.png").read_bytes() == (tmp_path / "full/a.png").read_bytes()


def test_unknown_precision_lists_the_allowed_ones() -> None:
    with pytest.raises(ValueError, match="'fp8'.*fp32, bf16, fp16"):
        resolve_precision("fp8", "cpu")


def write_model(folder: Path, num_feat: int = 4) -> tuple[Path, Path]:
    """An options file with the tiny MEMD and a checkpoint of a MEMD with ``num_feat`` features."""
    opt = folder / "opt.yml"
    opt.write_text(yaml.safe_dump({"network_g": {"type": "MEMD", **TINY}}))
    checkpoint = folder / f"memd{num_feat}.pth"
    torch.manual_seed(0)
    torch.save({"params": MEMD(**{**TINY, "num_feat": num_feat}).state_dict()}, checkpoint)
    return opt, checkpoint


def test_tool_derains_whole_and_tiled_with_comparison(tmp_path: Path) -> None:
    opt, checkpoint = write_model(tmp_path)
    cv2.imwrite(str(tmp_path / "big.png"), scene(1003, 757))
    outputs = {}
    for name, tiling in (("whole", ["--no-tile"]), ("tiles", ["--tile", "256", "--overlap", "32", "--compare"])):
        args = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--input", "big.png", "--output", name]
        result = run_python([str(REPO / "tools/derain.py"), *args, "--no-progress", *tiling], tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[:2] == [
            f"de-raining with MEMD (network_g of {opt.name}), from {checkpoint}",
            "1 derained, 0 skipped (device cpu, precision fp32)",
        ]
        outputs[name] = as_float(cv2.imread(str(tmp_path / name / "big.png")))
    assert np.abs(outputs["tiles"] - outputs["whole"]).mean() < 1e-3
    assert cv2.imread(str(tmp_path / "tiles/big_compare.png")).shape == (1003, 2 * 757, 3)
    assert not (tmp_path / "whole/big_compare.png").exists()


def test_tool_names_a_checkpoint_that_does_not_fit(tmp_path: Path) -> None:
    opt, checkpoint = write_model(tmp_path, num_feat=8)
    cv2.imwrite(str(tmp_path / "a.png"), scene(32, 32))
    args = ["--opt", str(opt), "--checkpoint", str(checkpoint), "--input", "a.png", "--output", "out"]
    result = run_python([str(REPO / "tools/derain.py"), *args], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert str(checkpoint) in result.stderr and "does not fit" in result.stderr
    assert not (tmp_path / "out").exists()


def test_tool_takes_the_checkpoint_from_the_options_as_basicsr_test_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("derain_tool", REPO / "tools/derain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    opt, checkpoint = write_model(tmp_path)
    torch.save({"params_ema": torch.load(checkpoint)["params"]}, tmp_path / "ema.pth")
    cv2.imwrite(str(tmp_path / "in.png"), scene(32, 32))
    options = {"network_g": {"type": "MEMD", **TINY}, "path": {"pretrain_network_g": str(tmp_path / "ema.pth")}}
    (tmp_path / "from_options.yml").write_text(
        yaml.safe_dump({**options, "path": {**options["path"], "param_key_g": "params_ema"}})
    )
    common = ["--input", str(tmp_path / "in.png"), "--no-progress", "--device", "cpu"]
    assert tool.main(["--opt", str(tmp_path / "from_options.yml"), *common, "--output", str(tmp_path / "a")]) == 0
    assert (
        tool.main(["--opt", str(opt), "--checkpoint", str(checkpoint), *common, "--output", str(tmp_path / "b")]) == 0
    )
    assert (tmp_path / "a/in.png").read_bytes() == (tmp_path / "b/in.png").read_bytes()
    capsys.readouterr()
    assert tool.main(["--opt", str(opt), *common, "--output", str(tmp_path / "c")]) == 2
    assert "no checkpoint: give --checkpoint FILE, or set path.pretrain_network_g" in capsys.readouterr().err


def test_the_python_api_derains_an_array_and_a_folder_from_a_checkpoint(tmp_path: Path) -> None:
    """``erl_plugin.Derainer`` is the network of the options and checkpoint, as the tools load it."""
    from erl_plugin import Derainer

    net = tiny_memd()
    torch.save({"params": net.state_dict()}, tmp_path / "net.pth")
    network = {"type": "MEMD", **TINY, "global_residual": False}
    (tmp_path / "net.yml").write_text(yaml.safe_dump({"network_g": network}))
    derainer = Derainer(tmp_path / "net.yml", tmp_path / "net.pth", tile=16, overlap=4)
    image = scene(40, 56)
    assert np.array_equal(derainer(image), derain_tiled(net.eval(), image, 16, 4))
    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in/a.png"), image)
    report = derainer.derain_paths([tmp_path / "in"], tmp_path / "out")
    assert [p.name for p in report.written] == ["a.png"] and not report.skipped


def test_erl_plugin_load_takes_a_run_s_checkpoint_alone_and_derains_tensors(tmp_path: Path) -> None:
    """``erl_plugin.load(checkpoint)`` finds the options erl-train keeps beside ``models/``; tensors in, tensors out."""
    import erl_plugin

    net = tiny_memd()
    models = tmp_path / "experiments/run/models"
    models.mkdir(parents=True)
    torch.save({"params": net.state_dict()}, models / "net_g_latest.pth")
    network = {"type": "MEMD", **TINY, "global_residual": False}
    (tmp_path / "experiments/run/run.yml").write_text(yaml.safe_dump({"network_g": network}))
    derainer = erl_plugin.load(models / "net_g_latest.pth", tile=16, overlap=4)
    batch = torch.rand(2, 3, 40, 56)
    with torch.no_grad():
        expected = tiled_forward(net.eval(), batch, 16, 4).clamp(0, 1)
    assert torch.equal(derainer(batch), expected)
    assert derainer(batch[0]).shape == (3, 40, 56) and derainer(batch[0]).dtype == torch.float32
    image = scene(40, 56)
    assert np.array_equal(erl_plugin.load(tmp_path / "experiments/run/run.yml", models / "net_g_latest.pth")(image),
                          derain_tiled(net, image, 512, 32))  # fmt: skip
    with pytest.raises(ValueError, match=r"float RGB in \[0, 1\], \(3, H, W\) or \(N, 3, H, W\); got torch.uint8"):
        derainer(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    (tmp_path / "loose.pth").write_bytes((models / "net_g_latest.pth").read_bytes())
    with pytest.raises(OptionsError, match=r"loose\.pth: no options to build its network from .* found none"):
        erl_plugin.load(tmp_path / "loose.pth")
