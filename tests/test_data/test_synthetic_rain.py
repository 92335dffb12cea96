"""Tests for erl_plugin.data.synthetic_rain and tools/synthesize_rain.py."""

import json
from pathlib import Path

import cv2
import lmdb
import numpy as np
import pytest
from basicsr.data.data_util import paired_paths_from_lmdb
from basicsr.metrics import calculate_psnr
from conftest import REPO, run_python

from erl_plugin.data import synthetic_rain
from erl_plugin.data.synthetic_rain import (
    RainDataError,
    StreakLayer,
    add_rain,
    load_source_images,
    render_streaks,
    synthesize_dataset,
)

SMALL = {
    "patch_size": 32,
    "patches_per_image": 2,
    "variants_per_patch": 2,
    "test_variants": 2,
    "progress": False,
}


def _photo(rng: np.random.Generator, height: int = 40, width: int = 48) -> np.ndarray:
    noise = rng.random((height // 8, width // 8, 3)).astype(np.float32)
    return (cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)


@pytest.fixture
def source_dir(tmp_path: Path) -> Path:
    """Three small photos (one grey), plus a non-image file that must be ignored."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), _photo(rng))
    cv2.imwrite(str(folder / "b.JPG"), _photo(rng))
    cv2.imwrite(str(folder / "c.png"), cv2.cvtColor(_photo(rng), cv2.COLOR_BGR2GRAY))
    (folder / "notes.txt").write_text("not a photo")
    return folder


def _y_psnr(a: np.ndarray, b: np.ndarray) -> float:
    return calculate_psnr(a, b, crop_border=0, test_y_channel=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_add_rain_is_deterministic_by_seed():
    clean = _photo(np.random.default_rng(1), 64, 64)
    first = add_rain(clean, "heavy", np.random.default_rng(0))
    assert first.dtype == np.uint8 and first.shape == clean.shape
    assert first.tobytes() == add_rain(clean, "heavy", np.random.default_rng(0)).tobytes()
    assert first.tobytes() != add_rain(clean, "heavy", np.random.default_rng(1)).tobytes()


def test_render_streaks_range_and_peak():
    layer = StreakLayer(angle=15.0, length=20.0, width=1, density=0.0005, intensity=0.6)
    streaks = render_streaks((96, 80), layer, np.random.default_rng(0))
    assert streaks.dtype == np.float32 and streaks.shape == (96, 80)
    # Sparse seeds rarely overlap: peaks are seed brightness (0.5..1) times intensity.
    assert 0.3 <= streaks.max() <= 0.6 + 1e-6
    assert streaks.min() == 0.0
    assert (streaks > 1e-3).mean() < 0.2  # FFT-based filtering leaves ~1e-17 elsewhere


def test_explicit_layers_only_brighten_without_haze():
    clean = _photo(np.random.default_rng(2), 48, 48)
    layer = StreakLayer(angle=0.0, length=10.0, width=1, density=0.01, intensity=0.8)
    rainy = add_rain(clean, [layer], np.random.default_rng(0))
    assert np.all(rainy >= clean) and np.any(rainy > clean)


def test_heavy_degrades_more_than_light_on_photos():
    photos = dict(load_source_images(None))
    heavy, light = [], []
    for name in ("motorcycle_left.png", "rocket.jpg"):
        clean = cv2.resize(photos[name], (192, 128), interpolation=cv2.INTER_AREA)
        for seed in range(3):
            heavy.append(_y_psnr(add_rain(clean, "heavy", np.random.default_rng(seed)), clean))
            light.append(_y_psnr(add_rain(clean, "light", np.random.default_rng(seed)), clean))
    assert max(heavy) < min(light)
    assert 13.0 < np.mean(heavy) < 19.0, heavy
    assert 22.0 < np.mean(light) < 28.0, light


def test_default_sources_are_colour_photos():
    sources = load_source_images(None)
    names = [name for name, _ in sources]
    assert names == sorted(names) and len(names) >= 3
    assert names[-2:] == ["motorcycle_left.png", "rocket.jpg"]
    assert all(image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 for _, image in sources)


def test_dataset_layout_split_and_determinism(tmp_path, source_dir):
    summary = synthesize_dataset(tmp_path / "ds", source=source_dir, num_test_sources=1, seed=3, **SMALL)
    written = json.loads((tmp_path / "ds" / "synthesis.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["train"]["sources"] == ["a.png", "b.JPG"]
    assert written["test"]["sources"] == ["c.png"]
    assert set(written["train"]["sources"]).isdisjoint(written["test"]["sources"])
    assert (written["train"]["pairs"], written["test"]["pairs"]) == (8, 2)
    assert (written["preset"], written["seed"]) == ("heavy", 3)
    for split, count in (("train", 8), ("test", 2)):
        names = sorted(p.name for p in (tmp_path / "ds" / split).iterdir())
        expected = sorted(
            [f"rain-{n}.png" for n in range(1, count + 1)] + [f"norain-{n}.png" for n in range(1, count + 1)]
        )
        assert names == expected
        for n in range(1, count + 1):
            rainy = cv2.imread(str(tmp_path / "ds" / split / f"rain-{n}.png"))
            clean = cv2.imread(str(tmp_path / "ds" / split / f"norain-{n}.png"))
            assert rainy.shape == clean.shape
            assert split == "test" or rainy.shape == (32, 32, 3)
            assert not np.array_equal(rainy, clean)

    synthesize_dataset(tmp_path / "same", source=source_dir, num_test_sources=1, seed=3, **SMALL)
    synthesize_dataset(tmp_path / "other", source=source_dir, num_test_sources=1, seed=4, **SMALL)
    reference = _files(tmp_path / "ds")
    assert _files(tmp_path / "same") == reference
    other = _files(tmp_path / "other")
    assert other.keys() == reference.keys()
    assert other["train/rain-1.png"] != reference["train/rain-1.png"]


def test_small_sources_are_padded_to_patch_size(tmp_path, source_dir):
    synthesize_dataset(tmp_path / "ds", source=source_dir, num_test_sources=1, **{**SMALL, "patch_size": 64})
    assert cv2.imread(str(tmp_path / "ds" / "train" / "norain-1.png")).shape == (64, 64, 3)


def test_dataset_with_lmdb_is_read_by_basicsr(tmp_path, source_dir):
    synthesize_dataset(tmp_path / "ds", source=source_dir, num_test_sources=1, lmdb=True, **SMALL)
    split = tmp_path / "ds" / "test"
    lq, gt = str(split / "lq.lmdb"), str(split / "gt.lmdb")
    paths = paired_paths_from_lmdb([lq, gt], ["lq", "gt"])
    assert sorted(p["lq_path"] for p in paths) == ["0001", "0002"]
    env = lmdb.open(lq, readonly=True, lock=False, readahead=False)
    try:
        with env.begin() as txn:
            stored = cv2.imdecode(np.frombuffer(txn.get(b"0002"), np.uint8), cv2.IMREAD_UNCHANGED)
    finally:
        env.close()
    np.testing.assert_array_equal(stored, cv2.imread(str(split / "rain-2.png"), cv2.IMREAD_UNCHANGED))
    assert (
        len(
            paired_paths_from_lmdb(
                [str(tmp_path / "ds/train/lq.lmdb"), str(tmp_path / "ds/train/gt.lmdb")], ["lq", "gt"]
            )
        )
        == 8
    )


def _bad_folder(tmp_path: Path, source_dir: Path, case: str) -> Path:
    """Return the path (folder or file) that the error must name."""
    if case == "missing folder":
        return tmp_path / "does-not-exist"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty"
    if case == "no images":
        (tmp_path / "text").mkdir()
        (tmp_path / "text" / "readme.txt").write_text("hello")
        return tmp_path / "text"
    encoded = {
        ".png": cv2.imencode(".png", _photo(np.random.default_rng(0), 64, 64))[1].tobytes(),
        ".jpg": cv2.imencode(".jpg", _photo(np.random.default_rng(0), 64, 64))[1].tobytes(),
    }
    content = {
        "non-image .png": (".png", b"this is plain text, not a PNG"),
        "truncated png": (".png", encoded[".png"][: len(encoded[".png"]) // 2]),
        "png without end": (".png", encoded[".png"][:-12]),
        "truncated jpeg": (".jpg", encoded[".jpg"][: len(encoded[".jpg"]) - 40]),
        "zero-byte file": (".png", b""),
    }[case]
    bad = source_dir / f"zz_bad{content[0]}"
    bad.write_bytes(content[1])
    return bad


@pytest.mark.parametrize(
    "case",
    [
        "missing folder",
        "empty folder",
        "no images",
        "non-image .png",
        "truncated png",
        "png without end",
        "truncated jpeg",
        "zero-byte file",
    ],
)
def test_bad_sources_raise_rain_data_error_naming_the_path(tmp_path, source_dir, case):
    bad = _bad_folder(tmp_path, source_dir, case)
    folder = bad if case.endswith(("folder", "images")) else source_dir
    with pytest.raises(RainDataError) as info:
        load_source_images(folder)
    assert str(bad) in str(info.value)
    if case in ("empty folder", "no images"):
        assert str(info.value).startswith(f"no images in {bad} (looked for .png, .jpg")


def test_too_few_sources_for_a_test_split(tmp_path, source_dir):
    with pytest.raises(RainDataError, match="num_test_sources=3 needs at least 4"):
        synthesize_dataset(tmp_path / "ds", source=source_dir, num_test_sources=3, **SMALL)
    assert not (tmp_path / "ds").exists()


def test_existing_out_dir_refused_and_unchanged(tmp_path, source_dir):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(FileExistsError, match=str(out)):
        synthesize_dataset(out, source=source_dir, num_test_sources=1, **SMALL)
    assert _files(out) == {"keep.txt": b"precious"}

    with pytest.raises(FileExistsError, match="was not written by this project"):
        synthesize_dataset(out, source=source_dir, num_test_sources=1, overwrite=True, **SMALL)
    assert _files(out) == {"keep.txt": b"precious"}
    ours = tmp_path / "ours"
    synthesize_dataset(ours, source=source_dir, num_test_sources=1, **SMALL)
    synthesize_dataset(ours, source=source_dir, num_test_sources=1, overwrite=True, seed=1, **SMALL)
    assert json.loads((ours / "synthesis.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "ours", "photos"]


@pytest.mark.parametrize("out", [".", "photos", "photos/inside"])
def test_an_output_that_is_holds_or_lies_in_the_source_is_refused_even_with_overwrite(tmp_path, source_dir, out):
    before = _files(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match=f"the input {source_dir}"):
            synthesize_dataset(tmp_path / out, source=source_dir, num_test_sources=1, overwrite=overwrite, **SMALL)
    assert _files(tmp_path) == before


def test_crash_mid_synthesis_leaves_no_dataset(tmp_path, source_dir, monkeypatch):
    calls = []
    real_add_rain = synthetic_rain.add_rain

    def failing_add_rain(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_add_rain(*args, **kwargs)

    monkeypatch.setattr(synthetic_rain, "add_rain", failing_add_rain)
    with pytest.raises(RuntimeError, match="simulated crash"):
        synthesize_dataset(tmp_path / "ds", source=source_dir, num_test_sources=1, **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_cli_writes_a_dataset_and_reports_bad_input(tmp_path, source_dir):
    ok = run_python(
        [
            "tools/synthesize_rain.py",
            "--out",
            str(tmp_path / "ds"),
            "--source",
            str(source_dir),
            "--num-test-sources",
            "1",
            "--patch-size",
            "32",
            "--preset",
            "light",
            "--lmdb",
            "--no-progress",
        ],
        REPO,
    )
    assert ok.returncode == 0, ok.stderr
    summary = json.loads((tmp_path / "ds" / "synthesis.json").read_text())
    assert (summary["preset"], summary["lmdb"], summary["train"]["pairs"]) == ("light", True, 24)
    assert (tmp_path / "ds" / "train" / "gt.lmdb" / "meta_info.txt").is_file()

    (tmp_path / "empty").mkdir()
    bad = run_python(
        ["tools/synthesize_rain.py", "--out", str(tmp_path / "ds2"), "--source", str(tmp_path / "empty")],
        REPO,
    )
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: no images in ") and str(tmp_path / "empty") in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "ds2").exists()
