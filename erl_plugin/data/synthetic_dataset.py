"""Rainy/clean pairs rendered on the fly from clean photos, for BasicSR: ``type: SyntheticRainDataset``.

Every sample is a pure function of its seed: under ``erl-train`` (or ``basicsr/train.py`` with the
plugin) the training sampler gives each index the seed of ``(manual_seed, epoch, position in the
epoch's global order)`` (:func:`erl_plugin.utils.resume.sample_seed`), so every epoch draws new crops and new
rain, DataLoader workers and DDP ranks draw distinct samples, a run with workers sees the batches of a
run without, and a resumed run sees those of an uninterrupted one. An index without a seed (validation,
a plain DataLoader) is seeded from ``(seed, index)``: a fixed set.

Example options::

    datasets:
      train:
        name: RainOnTheFly
        type: SyntheticRainDataset
        preset: wide                 # a domain of erl_plugin.data.synthetic_rain.PRESETS
        rain: {angle: [-30, 30]}     # optional: change some of the preset's ranges
        gt_size: 48
        rescale: [0.5, 1.0]
        num_samples: 1000            # samples per epoch
        batch_size_per_gpu: 8
        num_worker_per_gpu: 2
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import skimage.data
import torch
from basicsr.utils import img2tensor
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data
from tqdm import tqdm

from erl_plugin.data.dataset_keys import check_keys
from erl_plugin.data.synthetic_rain import (
    PRESETS,
    RainDataError,
    RainPreset,
    add_rain,
    fit_view,
    load_source_images,
    read_photos,
    write_png,
)
from erl_plugin.utils.outputs import staged_directory

__all__ = [
    "SKIMAGE_TEST_PHOTOS",
    "SKIMAGE_TRAIN_PHOTOS",
    "SyntheticRainDataset",
    "skimage_photos",
    "synthesize_generalization_splits",
]

# scikit-image's bundled photographs, split once: the study trains and validates on the first list and
# tests on the second, which no training run ever sees. motorcycle_right, the stereo twin of
# motorcycle_left, is in neither.
SKIMAGE_TRAIN_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "moon.png",
)
SKIMAGE_TEST_PHOTOS = ("motorcycle_left.png", "rocket.jpg")

_OWN_KEYS = {
    "dataroot_gt": "folder of clean photos (default: scikit-image's training photos)",
    "photos": "file names in that folder to use (default: every image in it)",
    "preset": f"rain domain, one of {sorted(PRESETS)}",
    "rain": "mapping that changes some of the preset's fields",
    "gt_size": "crop side, pixels",
    "rescale": "[low, high] scale drawn per sample before cropping",
    "use_hflip": "random horizontal flips",
    "use_rot": "random vertical flips and 90-degree rotations",
    "num_samples": "samples per epoch",
    "seed": "seed of samples whose index carries none (validation)",
}


def skimage_photos(names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """``(name, BGR uint8 image)`` of the named photographs in scikit-image's package folder."""
    root = Path(os.path.dirname(skimage.data.__file__))
    missing = [name for name in names if not (root / name).is_file()]
    if missing:
        raise RainDataError(f"scikit-image's data folder {root} lacks {missing}")
    return read_photos([root / name for name in names])


def _error(key: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"SyntheticRainDataset option {key!r} = {value!r} is invalid: {allowed}")


def _range(key: str, value: Any, low: float, high: float) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2 or not all(isinstance(v, int | float) for v in value):
        raise _error(key, value, "expected [low, high]")
    if not low <= value[0] <= value[1] <= high:
        raise _error(key, value, f"expected {low} <= low <= high <= {high}")
    return float(value[0]), float(value[1])


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _error(key, value, "expected a positive integer")
    return value


def build_domain(preset: Any, changes: Any) -> RainPreset:
    """The rain domain of ``preset`` (a name in :data:`PRESETS`) with ``changes`` (a mapping) applied."""
    if preset not in PRESETS:
        raise _error("preset", preset, f"expected one of {sorted(PRESETS)}")
    if changes is None:
        return PRESETS[preset]
    if not isinstance(changes, Mapping):
        raise _error("rain", changes, "expected a mapping of preset fields, e.g. {angle: [-30, 30]}")
    try:
        return PRESETS[preset].replace(**dict(changes))
    except (TypeError, ValueError) as error:
        raise _error("rain", dict(changes), str(error)) from None


@DATASET_REGISTRY.register()
class SyntheticRainDataset(data.Dataset):
    """Pairs rendered on the fly: a crop of a clean photo (gt) and the same crop with rain (lq).

    Items are BasicSR's paired dict ``{'lq', 'gt', 'lq_path', 'gt_path'}`` (float32 RGB CHW in [0, 1]);
    the paths read ``<photo>#<index>``. A sample: photo ``index % len(photos)``, a scale drawn from
    ``rescale``, a random crop of ``gt_size / scale`` pixels (reflect-padded if the photo is smaller)
    resized to ``gt_size``, flips and rotations, then rain drawn from the domain (:func:`add_rain`).

    Args:
        opt: BasicSR dataset options; see :data:`_OWN_KEYS` and the module docstring. ``gt_size`` is
            required. Unknown keys are refused.

    Raises:
        ValueError: An unknown key or a bad value (the message names the key and what is allowed).
        RainDataError: A missing or empty photo folder, an unreadable photo, an unknown photo name.
    """

    OPTION_KEYS = _OWN_KEYS
    """The keys this dataset reads (besides BasicSR's): what the options check accepts."""

    def __init__(self, opt: Mapping[str, Any]) -> None:
        super().__init__()
        self.opt = copy.deepcopy(dict(opt))  # BasicSR's validation reads opt["name"]
        check_keys("SyntheticRainDataset", opt, _OWN_KEYS)
        if opt.get("scale", 1) != 1:
            raise _error("scale", opt["scale"], "deraining keeps the size: expected 1")
        self.domain = build_domain(opt.get("preset", "wide"), opt.get("rain"))
        self.gt_size = _positive_int("gt_size", opt.get("gt_size"))
        self.rescale = _range("rescale", opt.get("rescale", [1.0, 1.0]), 1e-3, 1e3)
        self.flags = {}
        for key in ("use_hflip", "use_rot"):
            value = opt.get(key, True)
            if not isinstance(value, bool):
                raise _error(key, value, "expected true or false")
            self.flags[key] = value
        seed = opt.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise _error("seed", seed, "expected an integer >= 0")
        self.seed = seed
        self.photos = self._load_photos(opt.get("dataroot_gt"), opt.get("photos"))
        self.num_samples = _positive_int("num_samples", opt.get("num_samples", 100 * len(self.photos)))

    @staticmethod
    def _load_photos(folder: Any, names: Any) -> list[tuple[str, np.ndarray]]:
        if names is not None and (
            not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names)
        ):
            raise _error("photos", names, "expected a non-empty list of file names")
        if folder is None:
            return skimage_photos(tuple(names or SKIMAGE_TRAIN_PHOTOS))
        if not isinstance(folder, str | os.PathLike):
            raise _error("dataroot_gt", folder, "expected a folder of clean photos")
        try:
            photos = load_source_images(folder)
        except RainDataError as error:
            raise RainDataError(f"SyntheticRainDataset option 'dataroot_gt': {error}") from None
        if names is None:
            return photos
        by_name = dict(photos)
        missing = [name for name in names if name not in by_name]
        if missing:
            raise RainDataError(
                f"SyntheticRainDataset option 'photos': {missing} not in {os.fspath(folder)} (it has {sorted(by_name)})"
            )
        return [(name, by_name[name]) for name in names]

    def __len__(self) -> int:
        return self.num_samples

    def generator(self, index: int) -> np.random.Generator:
        """The generator of sample ``index``: its own seed if it carries one, else ``(seed, index)``."""
        seed = getattr(index, "seed", None)
        if seed is None:
            return np.random.default_rng(np.random.SeedSequence([self.seed, int(index)]))
        return np.random.default_rng(seed)

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """``(clean, rainy, name)``: BGR uint8 ``gt_size`` squares, and ``<photo>#<index>``."""
        if not 0 <= int(index) < self.num_samples:
            raise IndexError(f"SyntheticRainDataset index {int(index)} out of range 0..{self.num_samples - 1}")
        rng = self.generator(index)
        name, photo = self.photos[int(index) % len(self.photos)]
        crop = self._crop(photo, rng)
        if self.flags["use_hflip"] and rng.random() < 0.5:
            crop = crop[:, ::-1]
        if self.flags["use_rot"]:
            if rng.random() < 0.5:
                crop = crop[::-1]
            if rng.random() < 0.5:
                crop = crop.transpose(1, 0, 2)
        crop = np.ascontiguousarray(crop)
        return crop, add_rain(crop, self.domain, rng), f"{name}#{int(index)}"

    def _crop(self, photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        scale = rng.uniform(*self.rescale)
        side = max(1, round(self.gt_size / scale))
        height, width = photo.shape[:2]
        if height < side or width < side:
            pad_y, pad_x = max(0, side - height), max(0, side - width)
            border = cv2.BORDER_REFLECT_101 if min(height, width) > 1 else cv2.BORDER_REPLICATE
            photo = cv2.copyMakeBorder(photo, 0, pad_y, 0, pad_x, border)
            height, width = photo.shape[:2]
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = photo[top : top + side, left : left + side]
        if side != self.gt_size:
            interpolation = cv2.INTER_AREA if side > self.gt_size else cv2.INTER_CUBIC
            crop = cv2.resize(crop, (self.gt_size, self.gt_size), interpolation=interpolation)
        return crop

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | str]:
        clean, rainy, name = self.pair(index)
        gt, lq = img2tensor([clean.astype(np.float32) / 255.0, rainy.astype(np.float32) / 255.0], bgr2rgb=True)
        return {"lq": lq, "gt": gt, "lq_path": name, "gt_path": name}


PLATEAU_SEED_OFFSET = 1000
"""The plateau split's crops are drawn with ``seed + PLATEAU_SEED_OFFSET``: other crops than ``val``'s."""


def _written_with(out_dir: str | os.PathLike[str], settings: Mapping[str, Any], test_variants: int) -> dict | None:
    """The ``synthesis.json`` of ``out_dir`` when it records exactly these settings (the splits are then what
    this call would write: every image is a function of them), else None."""
    try:
        recorded = json.loads((Path(out_dir) / "synthesis.json").read_text(encoding="utf-8"))
        test = dict(recorded["test"])
        images = test.pop("images")
        pairs = test.pop("pairs")
    except (OSError, ValueError, KeyError, TypeError):
        return None
    expected_pairs = len(settings["test"]["photos"]) * len(settings["test"]["domains"]) * test_variants
    same = {**recorded, "test": test} == {
        **settings,
        "test": {k: v for k, v in settings["test"].items() if k != "images"},
    }
    return recorded if same and pairs == expected_pairs == len(images) else None


def synthesize_generalization_splits(
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    train_domain: str = "wide",
    shifted_domain: str = "shifted",
    val_per_photo: int = 2,
    plateau_per_photo: int = 2,
    val_size: int = 128,
    test_variants: int = 6,
    test_max_side: int = 256,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the validation, plateau and generalization test splits, in the RainTrainH layout, once.

    ``out_dir/val``: ``val_per_photo`` crops of ``val_size`` pixels per training photo
    (:data:`SKIMAGE_TRAIN_PHOTOS`) with rain from ``train_domain``, rendered as the training dataset
    renders them (scale 0.5-1): for choosing settings. ``out_dir/plateau``: ``plateau_per_photo`` other
    crops of the same kind, which training runs validate on to detect their plateau (``PlateauLR``), so
    that neither stopping nor the learning rate is tuned on ``val``. ``out_dir/test``: the photos no training run sees
    (:data:`SKIMAGE_TEST_PHOTOS`), whole (at most ``test_max_side``, multiples of 8), each with
    ``test_variants`` renderings from ``train_domain`` and as many from ``shifted_domain`` (other
    angles, lengths, widths and a blend mode per layer). ``out_dir/synthesis.json`` records, for every
    test image, its photo and domain. The folder is built under a temporary name and renamed when done.
    A folder whose ``synthesis.json`` records these very settings is left as it is (written once: a second
    call, ``make demo``'s included, has nothing to do); other contents need ``overwrite``.

    Returns:
        The summary written to ``synthesis.json`` (with ``"already_written": True`` when it was there).
    """
    counts = {"val_per_photo": val_per_photo, "plateau_per_photo": plateau_per_photo, "val_size": val_size}
    for key, value in {**counts, "test_variants": test_variants}.items():
        _positive_int(key, value)
    for domain in (train_domain, shifted_domain):
        build_domain(domain, None)
    val_set = SyntheticRainDataset(
        {"preset": train_domain, "gt_size": val_size, "rescale": [0.5, 1.0], "seed": seed,
         "num_samples": val_per_photo * len(SKIMAGE_TRAIN_PHOTOS)}
    )  # fmt: skip
    plateau_set = SyntheticRainDataset(
        {"preset": train_domain, "gt_size": val_size, "rescale": [0.5, 1.0], "seed": seed + PLATEAU_SEED_OFFSET,
         "num_samples": plateau_per_photo * len(SKIMAGE_TRAIN_PHOTOS)}
    )  # fmt: skip
    test_photos = skimage_photos(SKIMAGE_TEST_PHOTOS)
    test_rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    summary: dict[str, Any] = {
        "seed": seed,
        "source": "scikit-image",
        "val": {"photos": list(SKIMAGE_TRAIN_PHOTOS), "domain": train_domain, "size": val_size,
                "pairs": len(val_set)},
        "plateau": {"photos": list(SKIMAGE_TRAIN_PHOTOS), "domain": train_domain, "size": val_size,
                    "pairs": len(plateau_set), "seed": seed + PLATEAU_SEED_OFFSET},
        "test": {"photos": list(SKIMAGE_TEST_PHOTOS), "domains": [train_domain, shifted_domain],
                 "max_side": test_max_side, "images": {}},
    }  # fmt: skip
    written = _written_with(out_dir, summary, test_variants) if not overwrite else None
    if written is not None:
        return {**written, "already_written": True}
    photos = os.path.dirname(skimage.data.__file__)
    with staged_directory(out_dir, overwrite=overwrite, inputs=[photos], tool="synthesize_rain") as staging:
        test_dir = staging / "test"
        test_dir.mkdir()
        for split, dataset in (("val", val_set), ("plateau", plateau_set)):
            (staging / split).mkdir()
            for index in tqdm(range(len(dataset)), desc=split, unit="pair", disable=not progress):
                clean, rainy, _ = dataset.pair(index)
                write_png(staging / split / f"rain-{index + 1}.png", rainy)
                write_png(staging / split / f"norain-{index + 1}.png", clean)
        number = 0
        jobs = [(name, photo, d) for name, photo in test_photos for d in (train_domain, shifted_domain)]
        for name, photo, domain in tqdm(jobs, desc="test", unit="photo x domain", disable=not progress):
            view = fit_view(photo, test_max_side)
            for _ in range(test_variants):
                number += 1
                write_png(test_dir / f"rain-{number}.png", add_rain(view, PRESETS[domain], test_rng))
                write_png(test_dir / f"norain-{number}.png", view)
                summary["test"]["images"][f"rain-{number}"] = {"photo": name, "domain": domain}
        summary["test"]["pairs"] = number
        (staging / "synthesis.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary
