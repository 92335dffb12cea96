"""SyntheticRainDataset (rain on the fly), the wider rain domains, and the generalization splits."""

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from conftest import REPO, run_python
from torch.utils.data import DataLoader

import erl_plugin  # noqa: F401  (registers the dataset)
from erl_plugin.data.synthetic_dataset import (
    SKIMAGE_TEST_PHOTOS,
    SKIMAGE_TRAIN_PHOTOS,
    SyntheticRainDataset,
    synthesize_generalization_splits,
)
from erl_plugin.data.synthetic_rain import PRESETS, RainDataError, StreakLayer, add_rain
from erl_plugin.utils.resume import ResumableSampler, SeededDataset, SeededIndex, sample_seed

BASE = {"name": "rain", "type": "SyntheticRainDataset", "phase": "train", "gt_size": 24, "num_samples": 12}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three small photos in a folder (one grey, one smaller than the crops)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, shape in (("a.png", (40, 56, 3)), ("b.png", (32, 32, 3)), ("c.png", (16, 20))):
        noise = rng.random((4, 4, 3)).astype(np.float32)
        image = (cv2.resize(noise, shape[1::-1], interpolation=cv2.INTER_CUBIC).clip(0, 1) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / name), image if len(shape) == 3 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return folder


def _dataset(folder: Path, **options) -> SyntheticRainDataset:
    return build_dataset({**BASE, "dataroot_gt": str(folder), **options})


def _bytes(item: dict) -> bytes:
    return item["lq"].numpy().tobytes() + item["gt"].numpy().tobytes()


def test_the_heavy_preset_renders_the_bytes_it_always_has():
    # Digest of add_rain(clean, "heavy", default_rng(0)) before the wider domains existed.
    clean = (np.random.default_rng(5).random((64, 80, 3)) * 255).astype(np.uint8)
    rainy = add_rain(clean, "heavy", np.random.default_rng(0))
    assert hashlib.md5(rainy.tobytes()).hexdigest() == "51907b30d09893b12da2f6a0dd5c2ebb"


def test_blend_modes_blur_noise_and_jpeg_change_the_rendering():
    clean = np.full((48, 48, 3), 120, np.uint8)
    layer = [StreakLayer(angle=10.0, length=20.0, width=2, density=0.01, intensity=0.6)]
    base = PRESETS["heavy"].replace(layers=(1, 1), haze=(0.0, 0.0))
    renders = {
        mode: add_rain(clean, base.replace(blend=(mode,)), np.random.default_rng(1))
        for mode in ("screen", "additive", "alpha")
    }
    assert len({r.tobytes() for r in renders.values()}) == 3
    # Screen and additive only brighten; the alpha composite pulls towards a grey that may be darker.
    assert (renders["screen"] >= clean).all() and (renders["additive"] >= clean).all()
    assert (
        add_rain(clean, layer, np.random.default_rng(0)).tobytes()
        == add_rain(clean, layer, np.random.default_rng(0)).tobytes()
    )
    blurred = add_rain(clean, base.replace(streak_blur=(1.5, 1.5)), np.random.default_rng(1))
    sharp = renders["screen"]
    assert np.abs(np.diff(blurred.astype(int), axis=1)).mean() < np.abs(np.diff(sharp.astype(int), axis=1)).mean()
    noisy = add_rain(clean, base.replace(noise=(0.02, 0.02)), np.random.default_rng(1))
    assert noisy.tobytes() != sharp.tobytes()
    jpeg = add_rain(clean, base.replace(jpeg_probability=1.0, jpeg_quality=(30, 30)), np.random.default_rng(1))
    assert jpeg.shape == clean.shape and jpeg.tobytes() != sharp.tobytes()


def test_shifted_rain_lies_outside_the_training_ranges():
    wide, shifted = PRESETS["wide"], PRESETS["shifted"]
    assert shifted.angle[0] > wide.angle[1] and shifted.mirror_angle
    assert shifted.length[0] >= wide.length[1] and shifted.width[0] > wide.width[0]
    assert shifted.haze[1] > wide.haze[1] and shifted.streak_blur[1] > wide.streak_blur[1]
    assert shifted.blend_per_layer and not wide.blend_per_layer


def test_a_sample_is_a_function_of_its_seed_and_index(photos: Path):
    dataset = _dataset(photos)
    first = dataset[SeededIndex(4, 1234)]
    assert first["lq"].shape == first["gt"].shape == (3, 24, 24)
    assert first["lq_path"] == "b.png#4"  # photos are taken in turn: index 4 of 3 photos
    assert _bytes(first) == _bytes(_dataset(photos)[SeededIndex(4, 1234)])
    assert _bytes(first) != _bytes(dataset[SeededIndex(4, 1235)])  # another epoch or position: other rain
    assert not torch.equal(first["lq"], first["gt"])
    # Without a seed (validation), the index alone fixes the sample, and the dataset's seed the set.
    assert _bytes(dataset[3]) == _bytes(dataset[3]) != _bytes(dataset[4])
    assert _bytes(dataset[3]) != _bytes(_dataset(photos, seed=1)[3])
    assert dataset.opt["name"]  # what BasicSR's validation names its results by


def test_workers_and_ranks(photos: Path):
    """Loader workers give the batches of no workers; the ranks of a DDP run draw distinct samples."""
    dataset = SeededDataset(_dataset(photos))

    def batches(workers: int, rank: int = 0, replicas: int = 1) -> list[bytes]:
        sampler = ResumableSampler(dataset, replicas, rank, ratio=2, seed=7, batch_size=2)
        sampler.set_epoch(1)
        loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=workers, drop_last=True)
        return [_bytes(batch) for batch in loader]

    assert batches(0) == batches(2)
    rank0, rank1 = batches(0, 0, 2), batches(0, 1, 2)
    assert len(rank0) == len(rank1) == 6 and not set(rank0) & set(rank1)
    assert sample_seed(7, 1, 0) != sample_seed(7, 2, 0)  # every epoch draws afresh


def test_default_photos_are_scikit_images_training_photos():
    dataset = build_dataset({**BASE, "num_samples": len(SKIMAGE_TRAIN_PHOTOS)})
    names = {dataset[i]["gt_path"].split("#")[0] for i in range(len(dataset))}
    assert names == set(SKIMAGE_TRAIN_PHOTOS) and not names & set(SKIMAGE_TEST_PHOTOS)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rain": {"angle": [30, -30]}}, "angle=(30, -30) must satisfy -90.0 <= low <= high <= 90.0"),
        ({"rain": {"blend": ["screen", "multiply"]}}, "blend=['screen', 'multiply'] must list blend modes from"),
        ({"rain": {"drops": 3}}, "unknown rain option(s) ['drops']"),
        ({"preset": "storm"}, "'preset' = 'storm' is invalid: expected one of ['heavy', 'light', 'shifted', 'wide']"),
        ({"rescale": [1.0, 0.5]}, "'rescale' = [1.0, 0.5] is invalid: expected 0.001 <= low <= high"),
        ({"gt_size": 0}, "'gt_size' = 0 is invalid: expected a positive integer"),
        ({"gt_szie": 24}, "unknown option(s) 'gt_szie' (did you mean 'gt_size'?); allowed: dataroot_gt"),
        ({"photos": ["missing.png"]}, "'photos': ['missing.png'] not in"),
        ({"use_rot": "yes"}, "'use_rot' = 'yes' is invalid: expected true or false"),
    ],
)
def test_bad_options_are_refused_naming_the_key(photos: Path, options: dict, message: str):
    with pytest.raises(ValueError, match="SyntheticRainDataset") as error:
        _dataset(photos, **options)
    assert message in str(error.value)


def test_an_empty_or_missing_photo_folder_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    for folder, message in ((tmp_path / "empty", "no images in"), (tmp_path / "nowhere", "does not exist")):
        with pytest.raises(RainDataError, match="SyntheticRainDataset option 'dataroot_gt'") as error:
            build_dataset({**BASE, "dataroot_gt": str(folder)})
        assert message in str(error.value) and str(folder) in str(error.value)


def test_generalization_splits(tmp_path: Path):
    out = tmp_path / "splits"
    summary = synthesize_generalization_splits(
        out, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
    )
    val, test = sorted((out / "val").iterdir()), sorted((out / "test").iterdir())
    assert len(val) == 2 * len(SKIMAGE_TRAIN_PHOTOS) and len(test) == 2 * 2 * len(SKIMAGE_TEST_PHOTOS)
    recorded = json.loads((out / "synthesis.json").read_text())
    assert recorded == summary
    domains = [entry["domain"] for entry in summary["test"]["images"].values()]
    assert sorted(set(domains)) == ["shifted", "wide"] and domains.count("shifted") == len(SKIMAGE_TEST_PHOTOS)
    assert {entry["photo"] for entry in summary["test"]["images"].values()} == set(SKIMAGE_TEST_PHOTOS)
    assert cv2.imread(str(out / "test/rain-1.png")).shape[0] % 8 == 0
    again = tmp_path / "again"
    synthesize_generalization_splits(
        again, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
    )
    assert all((out / p.relative_to(again)).read_bytes() == p.read_bytes() for p in again.rglob("*.png"))
    with pytest.raises(FileExistsError):
        synthesize_generalization_splits(out, progress=False)
    # Written once: the same call again (make demo, then the docs' command) finds its splits and writes nothing.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    repeated = synthesize_generalization_splits(
        out, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
    )
    assert repeated == {**summary, "already_written": True}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps
    (out / "test/rain-1.png").unlink()
    (out / "synthesis.json").write_text(json.dumps({**recorded, "test": {**recorded["test"], "pairs": 3}}))
    with pytest.raises(FileExistsError):  # a record that does not match: nothing is assumed
        synthesize_generalization_splits(
            out, val_per_photo=1, val_size=32, test_variants=1, test_max_side=64, progress=False
        )


def test_generalization_cli(tmp_path: Path):
    result = run_python(
        [str(REPO / "tools/synthesize_rain.py"), "--generalization", "--out", "g", "--no-progress"], tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert (
        "18 validation and 18 plateau pairs" in result.stdout
        and "24 test pairs (photos never trained on" in result.stdout
    )
    assert len(list((tmp_path / "g/test").glob("rain-*.png"))) == 24
