"""Evaluation of a trained network on a RainTrainH-layout folder: pairing, scores, outputs, errors."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, run_python
from skimage.metrics import peak_signal_noise_ratio

from erl_plugin.archs import MEMD
from erl_plugin.data.convert import convert_dataset
from erl_plugin.engine.options import load_options
from erl_plugin.evaluation.evaluate import PROTOCOL, derain, evaluate, format_table, load_network, score, side_by_side


def _write_pairs(folder: Path, count: int, size: tuple[int, int] = (20, 28)) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        clean = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"norain-{index}.png"), clean)
        cv2.imwrite(str(folder / f"rain-{index}.png"), np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8))


def test_score_matches_skimage_psnr_on_basicsr_y() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
    # BasicSR's Y: MATLAB's BT.601 studio-range luma of the BGR image, unrounded (float32 there).
    weights = np.array([24.966, 128.553, 65.481]) / 255.0
    y_a, y_b = a.astype(np.float64) @ weights + 16.0, b.astype(np.float64) @ weights + 16.0
    assert score(a, b).psnr == pytest.approx(peak_signal_noise_ratio(y_a, y_b, data_range=255), abs=1e-4)
    assert score(a, a).ssim == pytest.approx(1.0)


def test_derain_keeps_odd_sizes() -> None:
    net = MEMD(num_feat=4, num_dense_layers=1, growth_rate=4).eval()
    image = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    assert derain(net, image).shape == image.shape


def test_side_by_side_has_one_column_per_label() -> None:
    tiles = [[np.zeros((10, 20, 3), np.uint8)] * 3, [np.zeros((20, 20, 3), np.uint8)] * 3]
    picture = side_by_side(tiles, ["rainy", "MEMD", "clean"], width=64)
    assert picture.shape == (28 + 32 + 64, 3 * 64, 3)


def test_evaluate_writes_scores_image_and_table(tmp_path: Path) -> None:
    _write_pairs(tmp_path / "test", 3)
    opt = load_options(str(REPO / "options/memd_demo.yml"))
    torch.manual_seed(0)
    net = MEMD(**{k: v for k, v in opt["network_g"].items() if k != "type"})
    torch.save({"params": net.state_dict()}, tmp_path / "net.pth")
    models = [("MEMD", str(REPO / "options/memd_demo.yml"), str(tmp_path / "net.pth"))]
    means = evaluate(models, str(tmp_path / "test"), str(tmp_path / "out"), show=2)
    assert set(means) == {"rainy input", "MEMD"}
    rows = (tmp_path / "out/scores.csv").read_text().splitlines()
    columns = [f"{v} {m} ({PROTOCOL})" for v in ("rainy", "MEMD") for m in ("PSNR", "SSIM")]
    assert rows[0] == ",".join(["image", *columns])
    assert len(rows) == 4
    assert cv2.imread(str(tmp_path / "out/comparison.png")).shape[1] == 3 * 256  # rainy | MEMD | clean
    summary = (tmp_path / "out/summary.md").read_text()
    assert f"protocol {PROTOCOL}" in summary and f"| rainy input | {means['rainy input'].psnr:.2f} |" in summary
    header = f"| version | PSNR (dB, {PROTOCOL}) | SSIM ({PROTOCOL}) | network scored |"
    assert format_table("t", means).splitlines()[2] == header
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for out in ("test", ".", "test/results"):  # is, holds, lies inside the test data
        with pytest.raises(ValueError, match="output folder .* the input"):
            evaluate(models, str(tmp_path / "test"), str(tmp_path / out))
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_evaluate_replaces_only_its_own_files_and_never_writes_through_a_link(tmp_path: Path) -> None:
    """A rerun needs overwrite; a user's file or a link where an output goes is refused before any work."""
    _write_pairs(tmp_path / "test", 2)
    torch.manual_seed(0)
    opt = load_options(str(REPO / "options/memd_demo.yml"))
    net = MEMD(**{k: v for k, v in opt["network_g"].items() if k != "type"})
    torch.save({"params": net.state_dict()}, tmp_path / "net.pth")
    models = [("MEMD", str(REPO / "options/memd_demo.yml"), str(tmp_path / "net.pth"))]
    evaluate(models, str(tmp_path / "test"), str(tmp_path / "out"), show=1)
    with pytest.raises(FileExistsError, match=r"\(an earlier run's\); pass --overwrite"):
        evaluate(models, str(tmp_path / "test"), str(tmp_path / "out"), show=1)
    evaluate(models, str(tmp_path / "test"), str(tmp_path / "out"), show=1, overwrite=True)

    precious = tmp_path / "checkpoint.pth"
    precious.write_bytes(b"weights")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/summary.md").write_text("my notes")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked/scores.csv").symlink_to(precious)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="summary.md exists and was not written by the tools"):
        evaluate(models, str(tmp_path / "test"), str(tmp_path / "mine"), overwrite=True)
    with pytest.raises(FileExistsError, match="scores.csv is a symbolic link"):
        evaluate(models, str(tmp_path / "test"), str(tmp_path / "linked"), overwrite=True)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_evaluate_tool_reports_bad_input(tmp_path: Path) -> None:
    model = ["--model", "MEMD", str(REPO / "options/memd_demo.yml"), "nowhere.pth"]
    result = run_python([str(REPO / "tools/evaluate.py"), *model, "--data", "data", "--out", "o"], tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "nowhere.pth" in result.stderr


def test_evaluate_reads_the_real_rain100h_naming_lmdb_and_refuses_an_unknown_layout(tmp_path: Path) -> None:
    """Rain100H as published: norain-001.png with rainy/rain-001.png; an LMDB pair; a folder of neither."""
    rng = np.random.default_rng(0)
    (tmp_path / "Rain100H/rainy").mkdir(parents=True)
    for index in (1, 2):
        clean = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(tmp_path / f"Rain100H/norain-{index:03d}.png"), clean)
        cv2.imwrite(str(tmp_path / f"Rain100H/rainy/rain-{index:03d}.png"), 255 - clean)
    opt = load_options(str(REPO / "options/memd_demo.yml"))
    torch.manual_seed(0)
    torch.save(
        {"params": MEMD(**{k: v for k, v in opt["network_g"].items() if k != "type"}).state_dict()}, tmp_path / "n.pth"
    )
    models = [("MEMD", str(REPO / "options/memd_demo.yml"), str(tmp_path / "n.pth"))]
    folder = evaluate(models, str(tmp_path / "Rain100H"), str(tmp_path / "out"))
    rows = (tmp_path / "out/scores.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["rain-001", "rain-002"]
    assert "layout rain100h" in (tmp_path / "out/summary.md").read_text()
    convert_dataset("rain100h", tmp_path / "Rain100H", tmp_path / "lmdb", progress=False)
    packed = evaluate(models, str(tmp_path / "lmdb"), str(tmp_path / "out_lmdb"))
    assert packed["MEMD"].psnr == pytest.approx(folder["MEMD"].psnr)
    (tmp_path / "odd").mkdir()
    cv2.imwrite(str(tmp_path / "odd/picture.png"), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"no known layout reads it \(it holds picture.png\); tried rain100h: .*rain13k"
    ):
        evaluate(models, str(tmp_path / "odd"), str(tmp_path / "out_odd"))


def test_what_was_scored_is_said_and_a_teacher_is_refused(tmp_path: Path) -> None:
    """A backbone checkpoint under ERLNet options scores the backbone, and the summary says so."""
    _write_pairs(tmp_path / "test", 2)
    network = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}
    (tmp_path / "erl.yml").write_text(f"network_g: {{type: ERLNet, entangle: mlgd, backbone: {network}}}\n")
    torch.manual_seed(0)
    state = MEMD(**{k: v for k, v in network.items() if k != "type"}).state_dict()
    torch.save({"params": state}, tmp_path / "memd_stage1.pth")
    torch.save({"params": state}, tmp_path / "net_t_teacher.pth")
    loaded = load_network(str(tmp_path / "erl.yml"), str(tmp_path / "memd_stage1.pth"))
    assert isinstance(loaded.net, MEMD) and loaded.scored.startswith("MEMD alone")
    evaluate(
        [("baseline", str(tmp_path / "erl.yml"), str(tmp_path / "memd_stage1.pth"))],
        str(tmp_path / "test"),
        str(tmp_path / "out"),
    )
    assert (
        "| MEMD alone (a backbone checkpoint under ERLNet options), not ERL-Net |"
        in (tmp_path / "out/summary.md").read_text()
    )
    with pytest.raises(ValueError, match="net_t_teacher.pth is ERL-Net's teacher, a MEMD trained clean to clean"):
        load_network(str(tmp_path / "erl.yml"), str(tmp_path / "net_t_teacher.pth"))
