"""NIQE of rainy photos without clean images: scorer, limits, erl-evaluate --no-reference, erl-derain --score."""

import csv
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.metrics.niqe import calculate_niqe
from conftest import tiny_options, write_options

from erl_plugin.archs import MEMD
from erl_plugin.cli.derain import main as derain_main
from erl_plugin.cli.evaluate import main as evaluate_main
from erl_plugin.evaluation.evaluate import derain, load_network
from erl_plugin.metrics.no_reference import NIQE_PROTOCOL, NiqeError, NiqeScores, niqe

TINY = {"type": "MEMD", "num_feat": 4, "num_dense_layers": 1, "growth_rate": 4}
MINIMUM = "2 whole 96x96 blocks (96x192 or 192x96 pixels)"


def scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A BGR scene with natural-image statistics: 1/f noise per channel under a few flat shapes with hard edges."""
    frequency = np.fft.fftfreq(height)[:, None] ** 2 + np.fft.fftfreq(width)[None, :] ** 2
    frequency[0, 0] = 1.0
    channels = []
    for _ in range(3):
        spectrum = (rng.normal(size=(height, width)) + 1j * rng.normal(size=(height, width))) / frequency**0.9
        field = np.real(np.fft.ifft2(spectrum))
        channels.append((field - field.min()) / (field.max() - field.min()))
    image = (np.stack(channels, axis=-1) * 200 + 20).astype(np.uint8)
    for _ in range(8):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        corners = [tuple(int(v) for v in rng.integers(0, min(height, width), 2)) for _ in range(2)]
        cv2.rectangle(image, corners[0], corners[1], colour, -1)
        cv2.circle(image, corners[0][::-1], int(rng.integers(5, 30)), colour, -1)
    return image


def streaked(clean: np.ndarray, rng: np.random.Generator, per_pixel: float = 300 / 192**2) -> np.ndarray:
    """``clean`` under bright, slanted, anti-aliased rain streaks (about ``per_pixel`` streaks per pixel)."""
    height, width = clean.shape[:2]
    layer = np.zeros((height, width), np.float32)
    for _ in range(round(per_pixel * height * width)):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.line(layer, (x, y), (x + 4, y + 18), 1.0, 1, cv2.LINE_AA)
    alpha = 0.8 * cv2.GaussianBlur(layer, (3, 3), 0)[..., None]
    return np.clip(clean * (1 - alpha) + 230 * alpha, 0, 255).astype(np.uint8)


def rainy_photos(folder: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Write streaked scenes of the given (height, width) as PNG photos into ``folder``; return them by name."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = {}
    for index, (name, (height, width)) in enumerate(sizes.items()):
        rng = np.random.default_rng(index)
        photos[name] = streaked(scene(rng, height, width), rng)
        cv2.imwrite(str(folder / name), photos[name])
    return photos


@pytest.fixture
def tiny_model(tmp_path: Path, tiny_lmdb: dict[str, str]) -> tuple[str, str]:
    """``(options file, checkpoint)`` of a tiny random MEMD, the options shaped as the training tests' ones."""
    opt = tiny_options(tiny_lmdb)
    assert opt["network_g"] == TINY
    torch.manual_seed(0)
    net = MEMD(**{key: value for key, value in TINY.items() if key != "type"})
    torch.save({"params": net.state_dict()}, tmp_path / "memd.pth")
    return str(write_options(tmp_path, opt, "memd.yml")), str(tmp_path / "memd.pth")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def assert_no_reference_only(table: str, header: list[str]) -> None:
    """The table's and the CSV's column headers name NIQE and its protocol, never PSNR or SSIM."""
    [columns] = [line for line in table.splitlines() if line.startswith("| version |")]
    assert "mean NIQE (no-reference; lower is better)" in columns
    for text in (columns, *header):
        assert "PSNR" not in text and "SSIM" not in text and "dB" not in text
    assert all(NIQE_PROTOCOL in column for column in header[1:-1])
    assert NIQE_PROTOCOL in table.splitlines()[0]


def test_niqe_is_basicsrs_calculate_niqe_on_the_y_channel() -> None:
    rng = np.random.default_rng(0)
    clean = scene(rng, 192, 288)
    for image in (clean, streaked(clean, rng)):
        assert niqe(image, "scene") == calculate_niqe(image, crop_border=0, input_order="HWC", convert_to="y")
    gray = cv2.cvtColor(clean, cv2.COLOR_BGR2GRAY)
    with pytest.raises(NiqeError, match=r"gray: NIQE takes 8-bit BGR images \(H, W, 3\), got uint8 of shape"):
        niqe(gray, "gray")
    with pytest.raises(NiqeError, match="deep: NIQE takes 8-bit BGR images .* got uint16"):
        niqe(clean.astype(np.uint16) * 257, "deep")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_clean_scene_scores_lower_than_the_same_scene_in_heavy_rain(seed: int) -> None:
    """Holds on these scenes at 384x384 (16 blocks); at 192x192 (4 blocks) NIQE is too noisy to tell them apart."""
    rng = np.random.default_rng(seed)
    clean = scene(rng, 384, 384)
    rainy = streaked(clean, rng, per_pixel=1200 / 384**2)
    assert niqe(clean) + 2.0 < niqe(rainy)


def test_images_too_small_or_flat_are_refused_naming_them_and_never_averaged() -> None:
    rng = np.random.default_rng(0)
    for height, width in ((128, 128), (96, 191), (95, 400)):
        with pytest.raises(
            NiqeError, match=rf"small.png: {width}x{height} pixels \(width x height\).*{re.escape(MINIMUM)}"
        ):
            niqe(scene(rng, height, width), "small.png")
    assert np.isfinite(niqe(scene(rng, 96, 192))) and np.isfinite(niqe(scene(rng, 192, 96)))
    with pytest.raises(NiqeError, match=r"flat.png: NIQE is undefined for it \(fewer than 2 of its 96x96 blocks"):
        niqe(np.full((192, 192, 3), 128, np.uint8), "flat.png")

    scores = NiqeScores(["rainy input", "derained"])
    big = scene(rng, 192, 192)
    assert scores.add("big.png", [big, streaked(big, rng)])
    assert not scores.add("tiny.png", [big[:100, :100], big[:100, :100]])
    assert not scores.add("flat.png", [big, np.full_like(big, 7)])  # one version unscorable: the image is left out
    assert scores.names == ["big.png"] and [name for name, _ in scores.skipped] == ["tiny.png", "flat.png"]
    assert scores.means()["rainy input"] == niqe(big)
    assert "tiny.png (rainy input): 100x100 pixels" in scores.markdown("t")
    assert "1 of 3 images" in scores.summary() and NIQE_PROTOCOL in scores.summary()
    assert "nan" not in (scores.csv() + scores.markdown("t") + scores.summary()).lower()
    with pytest.raises(ValueError, match="distinct names"):
        NiqeScores(["rainy input", "rainy input"])


def test_evaluate_no_reference_scores_input_and_each_model_in_a_niqe_table(
    tmp_path: Path, tiny_model: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = rainy_photos(tmp_path / "photos", {"garden.png": (192, 192), "roof.png": (160, 200), "dot.png": (64, 80)})
    opt, checkpoint = tiny_model
    out = tmp_path / "out"
    args = ["--model", "MEMD", opt, checkpoint, "--no-reference", str(tmp_path / "photos"), "--out", str(out)]
    assert evaluate_main(args) == 0
    printed = capsys.readouterr().out
    assert {path.name for path in out.iterdir()} >= {"niqe.csv", "niqe.md", "comparison.png"}
    assert not (out / "scores.csv").exists() and not (out / "summary.md").exists()

    rows = {Path(row["image"]).name: row for row in read_csv(out / "niqe.csv")}
    header = list(read_csv(out / "niqe.csv")[0])
    table = (out / "niqe.md").read_text()
    assert_no_reference_only(table, header)
    assert header == ["image", f"rainy input {NIQE_PROTOCOL}", f"MEMD {NIQE_PROTOCOL}", "not scored because"]
    net = load_network(opt, checkpoint).net
    for name in ("garden.png", "roof.png"):
        assert float(rows[name][f"rainy input {NIQE_PROTOCOL}"]) == pytest.approx(niqe(photos[name]), abs=5e-5)
        output = niqe(derain(net, photos[name]))
        assert float(rows[name][f"MEMD {NIQE_PROTOCOL}"]) == pytest.approx(output, abs=5e-5)
    assert rows["dot.png"][f"rainy input {NIQE_PROTOCOL}"] == ""
    assert (
        f"dot.png: 80x64 pixels (width x height), smaller than NIQE's minimum of {MINIMUM}"
        in (rows["dot.png"]["not scored because"])
    )
    assert "2 of 3 images scored" in table and "dot.png" in table and "not comparable to PSNR/SSIM" in table
    rainy_mean = np.mean([float(rows[n][f"rainy input {NIQE_PROTOCOL}"]) for n in ("garden.png", "roof.png")])
    assert f"| rainy input | {rainy_mean:.3f} | (baseline) | the input itself |" in table
    model_mean = np.mean([float(rows[n][f"MEMD {NIQE_PROTOCOL}"]) for n in ("garden.png", "roof.png")])
    change = f"{model_mean - rainy_mean:+.3f}"
    assert f"| MEMD | {model_mean:.3f} | {change} | MEMD (network_g of memd.yml) |" in table
    assert table.rstrip() in printed and f"MEMD: {change} mean change from the rainy input, {NIQE_PROTOCOL}" in printed
    assert cv2.imread(str(out / "comparison.png")).shape[1] == 2 * 256  # rainy | MEMD


def test_evaluate_no_reference_refuses_photos_all_too_small_and_options_that_need_clean_images(
    tmp_path: Path, tiny_model: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rainy_photos(tmp_path / "photos", {"a.png": (64, 64), "b.png": (96, 150)})
    opt, checkpoint = tiny_model
    model = ["--model", "MEMD", opt, checkpoint]
    assert evaluate_main([*model, "--no-reference", str(tmp_path / "photos"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no photo can be scored: ") and "a.png" in error and "b.png" in error
    assert MINIMUM in error
    assert not any((tmp_path / "out").glob("*"))
    rainy_photos(tmp_path / "big", {"c.png": (96, 192)})
    photos = ["--no-reference", str(tmp_path / "big"), "--out", str(tmp_path / "out")]
    assert evaluate_main(["--model", "rainy input", opt, checkpoint, *photos]) == 2
    assert "model label 'rainy input' names the input or target" in capsys.readouterr().err
    assert evaluate_main([*model, *model, *photos]) == 2
    assert "model label 'MEMD' is given twice" in capsys.readouterr().err
    assert not any((tmp_path / "out").glob("*"))
    for extra in (["--layout", "rain100h"], ["--min-gain-db", "1"], ["--data", str(tmp_path)]):
        with pytest.raises(SystemExit):
            evaluate_main([*model, "--no-reference", str(tmp_path / "photos"), "--out", "o", *extra])
        assert "--no-reference" in capsys.readouterr().err


def test_derain_score_writes_niqe_of_each_input_and_output(
    tmp_path: Path, tiny_model: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    photos = rainy_photos(tmp_path / "photos", {"garden.png": (192, 192), "dot.png": (64, 80)})
    deep = cv2.cvtColor(
        streaked(scene(np.random.default_rng(5), 96, 200), np.random.default_rng(6)), cv2.COLOR_BGR2GRAY
    )
    cv2.imwrite(str(tmp_path / "photos/deep.png"), deep.astype(np.uint16) * 257)  # 16-bit gray: scored as 8-bit BGR
    opt, checkpoint = tiny_model
    common = ["--opt", opt, "--checkpoint", checkpoint, "--input", str(tmp_path / "photos"), "--no-progress"]
    assert derain_main([*common, "--device", "cpu", "--output", str(tmp_path / "plain")]) == 0
    assert not (tmp_path / "plain/niqe.csv").exists() and not (tmp_path / "plain/niqe.md").exists()
    capsys.readouterr()

    out = tmp_path / "scored"
    assert derain_main([*common, "--device", "cpu", "--output", str(out), "--score"]) == 0
    error = capsys.readouterr().err.splitlines()
    assert (out / "dot.png").is_file()  # derained, though too small to score
    assert (
        error[-2].startswith("note: ") and "dot.png (rainy input): 80x64 pixels" in error[-2] and MINIMUM in error[-2]
    )
    assert error[-1].startswith(f"{NIQE_PROTOCOL} over 2 of 3 images: rainy input ")
    assert "derained" in error[-1] and error[-1].endswith(f"per image in {out / 'niqe.csv'}")
    rows = read_csv(out / "niqe.csv")
    assert_no_reference_only((out / "niqe.md").read_text(), list(rows[0]))
    [garden] = [row for row in rows if row["image"].endswith("garden.png")]
    assert float(garden[f"rainy input {NIQE_PROTOCOL}"]) == pytest.approx(niqe(photos["garden.png"]), abs=5e-5)
    derained = cv2.imread(str(out / "garden.png"))
    assert float(garden[f"derained {NIQE_PROTOCOL}"]) == pytest.approx(niqe(derained), abs=5e-5)
    assert (out / "garden.png").read_bytes() == (tmp_path / "plain/garden.png").read_bytes()
    [deep_row] = [row for row in rows if row["image"].endswith("deep.png")]
    expected = niqe(cv2.cvtColor(deep, cv2.COLOR_GRAY2BGR))
    assert float(deep_row[f"rainy input {NIQE_PROTOCOL}"]) == pytest.approx(expected, abs=5e-5)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "niqe.md").write_text("my notes")
    assert derain_main([*common, "--device", "cpu", "--output", str(mine), "--score"]) == 2
    assert "niqe.md exists and was not written by the tools" in capsys.readouterr().err
    assert sorted(path.name for path in mine.iterdir()) == ["niqe.md"]  # refused before any image was written
