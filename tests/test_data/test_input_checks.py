"""Weights and images checked where they enter: a checkpoint with NaN or infinite weights is refused,
an EXIF-rotated photo is read upright, a file declaring gigapixels is refused before decoding, and a
symlink loop in a folder neither repeats images nor hangs; the same wherever the file is read."""

import importlib.util
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import REPO, run_python, tiny_options, write_options
from PIL import Image, ImageFile, ImageOps

from erl_plugin.archs import MEMD
from erl_plugin.data import DerainPairedDataset, images
from erl_plugin.data.convert import ConversionError, convert_dataset
from erl_plugin.data.dataset_check import check_dataset
from erl_plugin.data.images import MAX_IMAGE_PIXELS, ImageFileError, read_image, read_image_size
from erl_plugin.data.layouts import find_pairs, scan_images
from erl_plugin.engine.options import OptionsError, validate_options
from erl_plugin.evaluation.evaluate import load_network
from erl_plugin.evaluation.inference import collect_images, derain_paths
from erl_plugin.models.reliable import ReliableTraining
from erl_plugin.utils.checkpoint import CheckpointError, load_weights, safe_load

TINY = {"num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}


# ------------------------------------------------------------------------------------------ checkpoints
def _poisoned(path: Path, value: float = float("nan"), index: int = 3) -> str:
    """Save a tiny MEMD checkpoint whose ``index``-th floating tensor holds one ``value``; return its key."""
    torch.manual_seed(0)
    params = MEMD(**TINY).state_dict()
    key = [name for name, tensor in params.items() if tensor.is_floating_point()][index]
    params[key].view(-1)[1] = value
    torch.save({"params": params}, path)
    return key


@pytest.mark.parametrize(("value", "counts"), [(float("nan"), "1 NaN and 0 infinite"), (-float("inf"), "0 NaN and 1")])
def test_a_non_finite_checkpoint_is_refused_naming_the_file_and_tensor(
    tmp_path: Path, value: float, counts: str
) -> None:
    key = _poisoned(tmp_path / "bad.pth", value)
    with pytest.raises(CheckpointError) as caught:
        load_weights(str(tmp_path / "bad.pth"))
    message = str(caught.value)
    assert message.startswith(f"network {tmp_path / 'bad.pth'}: tensor params.{key} holds {counts}")
    assert "use an earlier checkpoint" in message


def test_the_first_bad_tensor_is_named_and_integers_are_not_checked(tmp_path: Path) -> None:
    state = {
        "iter": torch.tensor(7),
        "optimizers": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.tensor([0.0, float("inf")])}}}],
        "later": torch.tensor([float("nan")]),
    }
    torch.save(state, tmp_path / "7.state")
    with pytest.raises(CheckpointError, match=r"training state .*7\.state: tensor optimizers\.0\.state\.0\.exp_avg "):
        safe_load(str(tmp_path / "7.state"), "training state")
    fine = {"counts": torch.tensor([2**62, -1]), "params": {"w": torch.ones(2, dtype=torch.float16)}}
    torch.save(fine, tmp_path / "fine.pth")
    assert torch.equal(load_weights(str(tmp_path / "fine.pth"))["w"], torch.ones(2, dtype=torch.float16))


def test_every_loader_refuses_a_non_finite_checkpoint(tmp_path: Path) -> None:
    """The tools' loader, the options check (pretrain_network_g and _t) and the models' load_network."""
    key = _poisoned(tmp_path / "nan.pth")
    network = {"type": "MEMD", **TINY}
    (tmp_path / "net.yml").write_text(yaml.safe_dump({"network_g": network}))
    with pytest.raises(CheckpointError, match=rf"nan\.pth: tensor params\.{key} "):
        load_network(str(tmp_path / "net.yml"), str(tmp_path / "nan.pth"))  # derain.py, evaluate.py
    opt = {"name": "n", "model_type": "SRModel", "network_g": network, "datasets": {"val": {"type": "X"}}}
    opt["path"] = {"pretrain_network_g": str(tmp_path / "nan.pth")}
    with pytest.raises(OptionsError, match=rf"path\.pretrain_network_g: .*nan\.pth: tensor params\.{key} "):
        validate_options(opt, "opt.yml", is_train=False)
    model = ReliableTraining.__new__(ReliableTraining)  # the models' load_network: training, resume, the teacher
    with pytest.raises(CheckpointError, match=rf"tensor params\.{key} "):
        model.load_network(MEMD(**TINY), str(tmp_path / "nan.pth"))


# ------------------------------------------------------------------------------------------ EXIF orientation
def _photo(height: int = 48, width: int = 80) -> np.ndarray:
    """An RGB image of flat 16-pixel blocks (JPEG keeps them nearly exact), no two blocks alike."""
    blocks = np.random.default_rng(0).integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return np.kron(blocks, np.ones((16, 16, 1), np.uint8))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path: Path) -> None:
    path = tmp_path / "camera.jpg"
    Image.fromarray(_photo()).save(path, "JPEG", quality=95, exif=_exif(6))  # 6: turn 90 degrees clockwise
    stored = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED)  # OpenCV ignores EXIF here
    assert stored.shape == (48, 80, 3)
    upright = np.rot90(stored, -1)
    np.testing.assert_array_equal(read_image(path), upright)
    np.testing.assert_array_equal(read_image(path, cv2.IMREAD_COLOR), upright)
    np.testing.assert_array_equal(read_image(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), stored)
    assert read_image_size(path) == (80, 48)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_reads_as_pillow_turns_it(tmp_path: Path, orientation: int) -> None:
    for name, kwargs in (("a.png", {}), ("a.webp", {"lossless": True})):
        Image.fromarray(_photo()).save(tmp_path / name, exif=_exif(orientation), **kwargs)
        with Image.open(tmp_path / name) as image:
            expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))[..., ::-1]
        np.testing.assert_array_equal(read_image(tmp_path / name), expected)
        assert read_image_size(tmp_path / name) == expected.shape[:2]
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_photo()).save(tmp_path / "a.tif", exif=exif)  # TIFF readers turn it themselves
    assert read_image(tmp_path / "a.tif").shape[:2] == read_image_size(tmp_path / "a.tif") == expected.shape[:2]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_rotation_keeps_16_bit_and_alpha(tmp_path: Path) -> None:
    stored = np.random.default_rng(1).integers(0, 65536, (6, 10, 4), dtype=np.uint16)
    encoded = cv2.imencode(".png", stored)[1].tobytes()
    exif = _png_chunk(b"eXIf", _exif(8).removeprefix(b"Exif\x00\x00"))  # 8: turn 90 degrees anticlockwise
    (tmp_path / "deep.png").write_bytes(encoded[:33] + exif + encoded[33:])  # after the signature and IHDR
    image = read_image(tmp_path / "deep.png")
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image, np.rot90(stored, 1))


def _identity() -> torch.nn.Module:
    net = torch.nn.Conv2d(3, 3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(3)[:, :, None, None])
    return net


def test_one_rotated_file_gives_the_same_pixels_in_training_lmdb_and_inference(tmp_path: Path) -> None:
    for side, seed in (("input", 1), ("target", 2)):
        (tmp_path / "src" / side).mkdir(parents=True)
        photo = np.random.default_rng(seed).integers(0, 256, (24, 40, 3), dtype=np.uint8)
        Image.fromarray(photo).save(tmp_path / "src" / side / "a.png", exif=_exif(6))
    upright = read_image(tmp_path / "src/input/a.png")
    assert upright.shape == (40, 24, 3)
    expected = torch.from_numpy(upright[..., ::-1].transpose(2, 0, 1).astype(np.float32) / 255)

    folders = {"dataroot_lq": str(tmp_path / "src/input"), "dataroot_gt": str(tmp_path / "src/target")}
    from_folder = DerainPairedDataset({**folders, "io_backend": {"type": "disk"}, "phase": "val"})[0]
    convert_dataset("pairs", tmp_path / "src", tmp_path / "lmdb", progress=False)
    lmdb = {"dataroot_lq": str(tmp_path / "lmdb/lq.lmdb"), "dataroot_gt": str(tmp_path / "lmdb/gt.lmdb")}
    from_lmdb = DerainPairedDataset({**lmdb, "io_backend": {"type": "lmdb"}, "phase": "val"})[0]
    assert torch.equal(from_folder["lq"], expected) and torch.equal(from_lmdb["lq"], expected)
    assert torch.equal(from_folder["gt"], from_lmdb["gt"])

    derain_paths(_identity(), [tmp_path / "src/input"], tmp_path / "out", progress=False)
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "out/a.png"), cv2.IMREAD_UNCHANGED), upright)


# ------------------------------------------------------------------------------------------ decompression bombs
def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header declaring ``width`` x ``height`` RGB pixels, with (almost) no pixel data."""
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    data = _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + header + data + _png_chunk(b"IEND", b"")


def _jpeg_declaring(width: int, height: int) -> bytes:
    """The markers of a grayscale baseline JPEG declaring ``width`` x ``height``, up to its scan."""
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    scan = b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + frame + scan + b"\x00" * 16 + b"\xff\xd9"


@pytest.mark.parametrize(
    ("name", "data", "declared"),
    [
        ("bomb.png", png_declaring(100_000, 100_000), "100000x100000"),
        ("wide.png", png_declaring(20_000, 20_000), "20000x20000"),  # within OpenCV's own limit
        ("bomb.jpg", _jpeg_declaring(65_535, 65_535), "65535x65535"),
    ],
)
def test_a_decompression_bomb_is_refused_before_decoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, data: bytes, declared: str
) -> None:
    (tmp_path / name).write_bytes(data)

    def decode(*_: object) -> None:
        raise AssertionError("decoded")

    monkeypatch.setattr(images.cv2, "imdecode", decode)
    for read in (read_image, read_image_size):
        with pytest.raises(ImageFileError) as caught:
            read(tmp_path / name)
        message = str(caught.value)
        assert str(tmp_path / name) in message and f"declares {declared} pixels" in message
        assert f"limit of {MAX_IMAGE_PIXELS:,}" in message


def _folder_with_bomb(root: Path) -> Path:
    for side in ("input", "target"):
        (root / side).mkdir(parents=True)
        for index in (0, 2):
            image = np.random.default_rng(index).integers(0, 256, (16, 16, 3), dtype=np.uint8)
            cv2.imwrite(str(root / side / f"{index}.png"), image if side == "target" else 255 - image)
        (root / side / "1.png").write_bytes(png_declaring(100_000, 100_000))
    return root


def test_derain_skips_a_bomb_and_derains_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _folder_with_bomb(tmp_path / "photos") / "input"
    report = derain_paths(_identity(), [source], tmp_path / "out", progress=False)
    assert [path.name for path in report.written] == ["0.png", "2.png"]
    [(skipped, reason)] = report.skipped
    assert skipped == source / "1.png" and "declares 100000x100000 pixels" in reason
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("derain_tool", REPO / "tools/derain.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / "net.yml").write_text(yaml.safe_dump({"network_g": {"type": "MEMD", **TINY}}))
    torch.save({"params": MEMD(**TINY).state_dict()}, tmp_path / "m.pth")
    args = ["--opt", "net.yml", "--checkpoint", "m.pth", "--input", str(source), "--output", "tool", "--no-progress"]
    assert tool.main([*args, "--device", "cpu"]) == 1  # skipped files: exit 1, the rest written
    assert sorted(path.name for path in (tmp_path / "tool").glob("*.png")) == ["0.png", "2.png"]


def test_create_lmdb_stops_at_a_bomb_or_skips_it_with_skip_bad(tmp_path: Path) -> None:
    source = _folder_with_bomb(tmp_path / "src")
    with pytest.raises(ConversionError, match=r"input/1\.png declares 100000x100000 pixels.*--skip-bad"):
        convert_dataset("pairs", source, tmp_path / "stopped", progress=False)
    assert not (tmp_path / "stopped").exists()
    summary = convert_dataset("pairs", source, tmp_path / "dst", progress=False, skip_bad=True)
    assert summary.pairs == 2 and [lq for lq, _, _ in summary.skipped] == ["input/1.png"]
    result = run_python(
        [str(REPO / "tools/create_lmdb.py"), "--layout", "pairs", "src", "tool", "--skip-bad"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert "skipped 1 bad pair(s)" in result.stdout and "declares 100000x100000 pixels" in result.stdout


# ------------------------------------------------------------------------------------------ symlink loops
def looped_pairs(root: Path, loops: int = 1) -> Path:
    """``root/input`` and ``root/target`` with 3 pairs, each folder holding ``loops`` links back to itself."""
    for side in ("input", "target"):
        (root / side).mkdir(parents=True)
        for index in range(3):
            image = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(root / side / f"{index}.png"), image if side == "target" else 255 - image)
        for loop in range(loops):
            os.symlink(root / side, root / side / f"loop{loop}", target_is_directory=True)
    return root


def test_a_symlink_loop_is_scanned_once(tmp_path: Path) -> None:
    root = looped_pairs(tmp_path / "data", loops=2)
    assert scan_images(root / "input") == ["0.png", "1.png", "2.png"]
    assert len(find_pairs("pairs", root)) == 3
    opt = {"dataroot_lq": str(root / "input"), "dataroot_gt": str(root / "target"), "phase": "val"}
    assert len(DerainPairedDataset({**opt, "io_backend": {"type": "disk"}})) == 3
    assert [path.name for path in collect_images([root / "input"])] == ["0.png", "1.png", "2.png"]
    assert convert_dataset("pairs", root, tmp_path / "lmdb", progress=False).pairs == 3


def test_symlinked_folders_are_followed_but_each_real_folder_listed_once(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    cv2.imwrite(str(tmp_path / "elsewhere/far.png"), np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "root/real").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "root/real/near.png"), np.zeros((4, 4, 3), np.uint8))
    os.symlink(tmp_path / "elsewhere", tmp_path / "root/a_link")
    os.symlink(tmp_path / "elsewhere", tmp_path / "root/b_link")  # a second way in: not listed again
    os.symlink(tmp_path / "root", tmp_path / "root/real/up")  # back to the top: a loop
    assert scan_images(tmp_path / "root") == ["a_link/far.png", "real/near.png"]
    assert scan_images(tmp_path / "root", recursive=False) == []


def test_two_loops_do_not_hang_the_options_check(tmp_path: Path) -> None:
    root = looped_pairs(tmp_path, loops=2)
    section = {
        "type": "DerainPairedDataset",
        "dataroot_lq": str(root / "input"),
        "dataroot_gt": str(root / "target"),
        "io_backend": {"type": "disk"},
        "gt_size": 16,
        "small_images": "skip",
    }
    check = f"from erl_plugin.data.dataset_check import check_dataset; check_dataset({section!r}, 'train', True)"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    check_dataset(section, "train", True)  # here too, now that it is known to end


@pytest.mark.slow
def test_training_on_a_looped_folder_trains_and_validates_on_its_3_pairs(
    tmp_path: Path, tiny_lmdb: dict[str, str]
) -> None:
    root = looped_pairs(tmp_path / "data", loops=2)
    section = {
        "type": "DerainPairedDataset",
        "dataroot_lq": str(root / "input"),
        "dataroot_gt": str(root / "target"),
        "io_backend": {"type": "disk"},
    }
    opt = tiny_options(tiny_lmdb, name="looped", total_iter=1)
    opt["datasets"]["train"] = {**opt["datasets"]["train"], **section, "gt_size": 16, "batch_size_per_gpu": 1}
    opt["datasets"]["val"] = {"name": "looped", **section}
    result = run_python(["-m", "erl_plugin.train", "-opt", str(write_options(tmp_path, opt))], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Number of train images: 3\n" in result.stderr
    assert "Number of val images/folders in looped: 3\n" in result.stderr
    assert "Validation looped" in result.stderr


def test_read_image_size_reads_no_pixels_of_a_plain_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The size check of small_images reads headers only, also for a PNG without EXIF."""
    cv2.imwrite(str(tmp_path / "plain.png"), np.zeros((12, 20, 3), np.uint8))
    loads = SimpleNamespace(count=0)
    original = ImageFile.ImageFile.load

    def counting_load(image: ImageFile.ImageFile) -> object:
        loads.count += 1
        return original(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    monkeypatch.setattr(images.cv2, "imdecode", lambda *_: None)
    assert read_image_size(tmp_path / "plain.png") == (12, 20)
    assert loads.count == 0
