"""ERL-Net vs baseline analysis (paper Section 4.3): RIM, rain maps, IoR/IoB, shares, outputs, errors.

Images are 16x16 and grey, so every protocol's Y is an increasing function of the grey level and the
maps, ratios and PSNRs can be worked out by hand. The clean image is 100 everywhere; the rain region
is the first two rows (32 pixels), the background the other 224.
"""

import csv
import math
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO, run_python

from erl_plugin.data.convert import convert_dataset
from erl_plugin.evaluation.analysis import analyze, intersection_ratio, rain_map, result_indicator_map
from erl_plugin.metrics.protocols import PROTOCOLS

SIZE = 16
RAIN = 2 * SIZE  # the first two rows


def _grey(flat: np.ndarray) -> np.ndarray:
    """A BGR uint8 image from SIZE*SIZE grey levels in row-major order."""
    return np.repeat(flat.reshape(SIZE, SIZE, 1), 3, axis=2).astype(np.uint8)


def _case(rain_exact: int, background_better: int) -> dict[str, np.ndarray]:
    """Baseline 30 off everywhere; ERL-Net exact on ``rain_exact`` rain pixels (60 off on the other
    rain pixels) and 10 off on ``background_better`` background pixels (tied with the baseline elsewhere).
    So IoR = rain_exact / 32 and IoB = background_better / 224.
    """
    clean = np.full(SIZE * SIZE, 100)
    rainy = clean.copy()
    rainy[:RAIN] = 200
    erl = np.full(SIZE * SIZE, 130)
    erl[:rain_exact] = 100
    erl[rain_exact:RAIN] = 160
    erl[RAIN : RAIN + background_better] = 110
    return {
        "baseline": _grey(np.full(SIZE * SIZE, 130)),
        "erl": _grey(erl),
        "clean": _grey(clean),
        "rainy": _grey(rainy),
    }


def _write(root: Path, name: str, images: dict[str, np.ndarray]) -> None:
    for role, image in images.items():
        (root / role).mkdir(parents=True, exist_ok=True)
        assert cv2.imwrite(str(root / role / name), image)


def _dirs(root: Path, roles: tuple[str, ...] = ("baseline", "erl", "clean", "rainy")) -> list[str]:
    return [str(root / role) for role in roles]


def test_maps_follow_eq6_and_the_mean_threshold() -> None:
    clean = np.array([[10.0, 10.0, 10.0, 10.0]])
    baseline = np.array([[12.0, 20.0, 10.0, 0.0]])
    erl = np.array([[11.0, 30.0, 10.0, 5.0]])
    assert result_indicator_map(baseline, erl, clean).tolist() == [[True, False, False, True]]  # ties give 0
    rainy = np.array([[10.0, 50.0, 12.0, 10.0]])  # |rainy - clean| = 0, 40, 2, 0; mean 10.5
    assert rain_map(rainy, clean).tolist() == [[False, True, False, False]]
    assert not rain_map(clean, clean).any()
    assert intersection_ratio(np.array([True, True, False]), np.array([True, False, True])) == 0.5
    assert intersection_ratio(np.zeros(3, bool), np.ones(3, bool)) is None


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_miou_rain_and_background_are_exact(tmp_path: Path, protocol: str) -> None:
    _write(tmp_path, "a.png", _case(rain_exact=24, background_better=56))  # IoR 0.75, IoB 0.25
    _write(tmp_path, "b.png", _case(rain_exact=16, background_better=28))  # IoR 0.5, IoB 0.125
    no_rain = _case(rain_exact=0, background_better=0)
    no_rain["rainy"] = no_rain["clean"]  # no rain pixel: IoR undefined; ERL-Net ties or loses: IoB 0
    _write(tmp_path, "c.png", no_rain)
    analysis = analyze(*_dirs(tmp_path), out_dir=str(tmp_path / "out"), protocol=protocol, progress=False)
    by_name = {image.name: image for image in analysis.images}
    assert (by_name["a.png"].ior, by_name["a.png"].iob) == (0.75, 0.25)
    assert (by_name["b.png"].ior, by_name["b.png"].iob) == (0.5, 0.125)
    assert (by_name["c.png"].ior, by_name["c.png"].iob) == (None, 0.0)
    assert analysis.miou_rain == 0.625  # c.png left out
    assert analysis.miou_background == pytest.approx(0.375 / 3, abs=1e-15)
    assert (analysis.rain_undefined, analysis.background_undefined) == (1, 0)
    summary = (tmp_path / "out/summary.md").read_text()
    assert "| mIoR | 0.6250 | 2 of 3 (1 without rain pixels left out) |" in summary
    assert f"protocol {protocol}" in summary


def test_shares_split_hard_and_easy_at_the_baseline_mean(tmp_path: Path) -> None:
    # Errors (grey levels) of baseline / ERL-Net; PSNR = 20 log10(255 / error) on a uniform error.
    errors = {"a.png": (40, 20), "b.png": (30, 25), "c.png": (5, 3), "d.png": (4, 6)}
    for name, (baseline_error, erl_error) in errors.items():
        clean = np.full(SIZE * SIZE, 100)
        rainy = clean.copy()
        rainy[:RAIN] = 200
        images = {"baseline": clean + baseline_error, "erl": clean + erl_error, "clean": clean, "rainy": rainy}
        _write(tmp_path, name, {role: _grey(image) for role, image in images.items()})
    analysis = analyze(*_dirs(tmp_path), out_dir=str(tmp_path / "out"), hardest=2, progress=False)
    for image in analysis.images:
        baseline_error, erl_error = errors[image.name]
        assert image.baseline_psnr == pytest.approx(20 * math.log10(255 / baseline_error), abs=1e-9)
        assert image.erl_psnr == pytest.approx(20 * math.log10(255 / erl_error), abs=1e-9)
    # Baseline PSNRs 16.1, 18.6, 34.2, 36.1 dB: mean 26.2, so a and b are hard.
    assert analysis.hard == (True, True, False, False)
    assert (analysis.overall.improved, analysis.overall.total) == (3, 4)
    assert (analysis.hard_share.improved, analysis.hard_share.total, analysis.hard_share.fraction) == (2, 2, 1.0)
    assert (analysis.easy_share.improved, analysis.easy_share.total, analysis.easy_share.fraction) == (1, 2, 0.5)
    with open(tmp_path / "out/per_image.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["image"], row["improved"], row["subset"]) for row in rows] == [
        ("a.png", "1", "hard"),
        ("b.png", "1", "hard"),
        ("c.png", "1", "easy"),
        ("d.png", "0", "easy"),
    ]
    summary = (tmp_path / "out/summary.md").read_text()
    assert "| overall | 4 | 3 | 75.0% |" in summary and "| easy (the rest) | 2 | 1 | 50.0% |" in summary
    assert sorted(path.name for path in (tmp_path / "out/hardest").iterdir()) == ["a.png", "b.png"]


def test_masks_replace_the_thresholded_rain_map(tmp_path: Path) -> None:
    images = _case(rain_exact=24, background_better=56)
    del images["rainy"]
    _write(tmp_path, "a.png", images)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[:2] = 1  # any nonzero value is rain
    mask[2:4] = 255
    (tmp_path / "masks").mkdir()
    cv2.imwrite(str(tmp_path / "masks/a.png"), mask)
    analysis = analyze(
        *_dirs(tmp_path, ("baseline", "erl", "clean")),
        out_dir=str(tmp_path / "out"),
        masks_dir=str(tmp_path / "masks"),
        progress=False,
    )
    # Rain: 64 pixels, of which 24 (rows 0-1) + 32 (rows 2-3) improved; background: 24 of 192.
    assert (analysis.images[0].ior, analysis.images[0].iob) == (56 / 64, 24 / 192)
    assert (tmp_path / "out/hardest/a.png").is_file()


def test_bad_input_is_named(tmp_path: Path) -> None:
    _write(tmp_path, "a.png", _case(24, 56))
    _write(tmp_path, "b.png", _case(16, 28))
    out = str(tmp_path / "out")
    (tmp_path / "erl/b.png").unlink()
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'erl'} lacks b.png")):
        analyze(*_dirs(tmp_path), out_dir=out, progress=False)
    cv2.imwrite(str(tmp_path / "erl/b.png"), np.zeros((SIZE, SIZE + 4, 3), np.uint8))
    with pytest.raises(
        ValueError, match=re.escape(f"{tmp_path / 'erl/b.png'} is 20x16 but {tmp_path / 'clean/b.png'}")
    ):
        analyze(*_dirs(tmp_path), out_dir=out, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'empty'}: no image files")):
        analyze(str(tmp_path / "empty"), *_dirs(tmp_path)[1:], out_dir=out, progress=False)
    with pytest.raises(ValueError, match="allowed: basicsr, paper, matlab"):
        analyze(*_dirs(tmp_path), out_dir=out, protocol="psnr-y", progress=False)
    with pytest.raises(ValueError, match="no rainy folder and no masks folder"):
        analyze(*_dirs(tmp_path, ("baseline", "erl", "clean")), out_dir=out, progress=False)
    assert not (tmp_path / "out").exists()


def _rain100h(root: Path, cases: dict[int, dict[str, np.ndarray]]) -> Path:
    """Rain100H as published (norain-NNN.png, rainy/rain-NNN.png); outputs named as derain.py writes them
    (baseline/rain-NNN.png) and as BasicSR's test writes them (erl/rain-NNN_erl.png)."""
    data = root / "Rain100H"
    for folder in (data / "rainy", root / "baseline", root / "erl"):
        folder.mkdir(parents=True, exist_ok=True)
    for index, images in cases.items():
        assert cv2.imwrite(str(data / f"norain-{index:03d}.png"), images["clean"])
        assert cv2.imwrite(str(data / "rainy" / f"rain-{index:03d}.png"), images["rainy"])
        assert cv2.imwrite(str(root / "baseline" / f"rain-{index:03d}.png"), images["baseline"])
        assert cv2.imwrite(str(root / "erl" / f"rain-{index:03d}_erl.png"), images["erl"])
    return data


def test_a_test_set_in_any_layout_gives_the_clean_and_rainy_images(tmp_path: Path) -> None:
    data = _rain100h(tmp_path, {1: _case(24, 56), 2: _case(16, 28)})
    by_folder = tmp_path / "folders"
    _write(by_folder, "rain-001.png", _case(24, 56))
    _write(by_folder, "rain-002.png", _case(16, 28))
    expected = analyze(*_dirs(by_folder), out_dir=str(tmp_path / "expected"), progress=False)
    dirs = (str(tmp_path / "baseline"), str(tmp_path / "erl"))
    analysis = analyze(*dirs, data=str(data), out_dir=str(tmp_path / "out"), progress=False)
    assert [image.name for image in analysis.images] == ["rain-001", "rain-002"]
    for got, want in zip(analysis.images, expected.images, strict=True):
        assert (got.erl_psnr, got.baseline_ssim, got.ior, got.iob) == (
            want.erl_psnr,
            want.baseline_ssim,
            want.ior,
            want.iob,
        )
    assert sorted(path.name for path in (tmp_path / "out/hardest").iterdir()) == ["rain-001.png", "rain-002.png"]
    convert_dataset("rain100h", data, tmp_path / "packed", progress=False)
    packed = analyze(*dirs, data=str(tmp_path / "packed"), out_dir=str(tmp_path / "out_lmdb"), progress=False)
    assert packed.miou_rain == analysis.miou_rain and packed.erl_mean_psnr == analysis.erl_mean_psnr

    out = str(tmp_path / "bad")
    (tmp_path / "erl/rain-002_erl.png").rename(tmp_path / "erl/rain-002_erl_old.png")
    cv2.imwrite(str(tmp_path / "erl/rain-002_erl.png"), _case(16, 28)["erl"])
    with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'erl'}: several outputs for rain-002")):
        analyze(*dirs, data=str(data), out_dir=out, progress=False)
    (tmp_path / "erl/rain-002_erl.png").unlink()
    (tmp_path / "erl/rain-002_erl_old.png").rename(tmp_path / "erl/stray.png")
    with pytest.raises(ValueError, match=r"no output for rain-002; images matching no pair: stray.png"):
        analyze(*dirs, data=str(data), out_dir=out, progress=False)
    with pytest.raises(ValueError, match="not both"):
        analyze(*dirs, str(data), data=str(data), out_dir=out, progress=False)
    (tmp_path / "odd").mkdir()
    cv2.imwrite(str(tmp_path / "odd/photo.png"), _case(1, 1)["clean"])
    with pytest.raises(ValueError, match=r"no known layout reads it \(it holds photo.png\)"):
        analyze(*dirs, data=str(tmp_path / "odd"), out_dir=out, progress=False)
    assert not (tmp_path / "bad").exists()


def test_tool_writes_all_outputs(tmp_path: Path) -> None:
    _write(tmp_path, "a.png", _case(24, 56))
    _write(tmp_path, "b.png", _case(16, 28))
    tool = str(REPO / "tools/analyze.py")
    result = run_python([tool, *_dirs(tmp_path), "--out", "out", "--hardest", "1", "--no-progress"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "protocol paper" in result.stdout
    with open(tmp_path / "out/per_image.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert "ERL-Net PSNR (paper)" in header and "IoR (Y, paper)" in header
    assert "| mIoR | 0.6250 |" in (tmp_path / "out/summary.md").read_text()
    assert cv2.imread(str(tmp_path / "out/improvement.png")) is not None
    overlays = list((tmp_path / "out/hardest").iterdir())
    assert len(overlays) == 1 and cv2.imread(str(overlays[0])).shape[1] == 6 * 256  # rainy .. rain map

    data = _rain100h(tmp_path / "set", {1: _case(24, 56), 2: _case(16, 28)})
    from_set = run_python(
        [tool, "set/baseline", "set/erl", "--data", str(data), "--out", "out_set", "--no-progress"], tmp_path
    )
    assert from_set.returncode == 0, from_set.stderr
    assert "| mIoR | 0.6250 |" in (tmp_path / "out_set/summary.md").read_text()

    bad = run_python([tool, *_dirs(tmp_path), "--out", "out", "--protocol", "nope"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr
    assert "allowed: basicsr, paper, matlab" in bad.stderr
