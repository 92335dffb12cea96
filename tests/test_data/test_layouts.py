"""Pairing files of the RainTrainH layout (rain-N with norain-N)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from erl_plugin.data.layouts import (
    LayoutError,
    Pair,
    find_pairs,
    natural_key,
    rain13k_layout,
    rain100_layout,
    raindrop_layout,
    raintrainh_pairs,
)


def _touch_pairs(folder: Path, count: int) -> None:
    for index in range(1, count + 1):
        for name in (f"rain-{index}.png", f"norain-{index}.png"):
            cv2.imwrite(str(folder / name), np.zeros((4, 4, 3), np.uint8))


def test_pairs_are_sorted_by_number(tmp_path: Path) -> None:
    _touch_pairs(tmp_path, 11)
    pairs = raintrainh_pairs(str(tmp_path))
    assert [pair.name for pair in pairs] == [f"rain-{i}" for i in range(1, 12)]
    assert pairs[0] == Pair(1, str(tmp_path / "rain-1.png"), str(tmp_path / "norain-1.png"))


def test_missing_clean_twin_and_empty_folder_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no rain-N.png"):
        raintrainh_pairs(str(tmp_path))
    cv2.imwrite(str(tmp_path / "rain-3.png"), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="norain-3.png"):
        raintrainh_pairs(str(tmp_path))


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), np.zeros((4, 4, 3), np.uint8))


def test_rain100_detects_test_and_training_forms(tmp_path: Path) -> None:
    _touch(tmp_path / "test", "norain-001.png", "norain-010.png", "rainy/rain-001.png", "rainy/rain-010.png")
    assert rain100_layout(tmp_path / "test") == [
        ("rainy/rain-001.png", "norain-001.png"),
        ("rainy/rain-010.png", "norain-010.png"),
    ]
    _touch(tmp_path / "train", "rain-10.png", "norain-10.png", "rain-2.png", "norain-2.png")
    assert rain100_layout(tmp_path / "train") == [("rain-2.png", "norain-2.png"), ("rain-10.png", "norain-10.png")]
    _touch(tmp_path / "train", "photo.png")
    with pytest.raises(LayoutError, match="photo.png does not fit the layout"):
        rain100_layout(tmp_path / "train")


def test_layout_functions_pair_by_name(tmp_path: Path) -> None:
    _touch(tmp_path / "ddn", "rainy_image/1_1.jpg", "rainy_image/1_14.jpg", "rainy_image/1_2.jpg", "ground_truth/1.jpg")
    assert [lq for lq, _ in find_pairs("ddn", tmp_path / "ddn")] == [f"rainy_image/1_{k}.jpg" for k in (1, 2, 14)]
    assert {gt for _, gt in find_pairs("ddn", tmp_path / "ddn")} == {"ground_truth/1.jpg"}
    _touch(tmp_path / "r200", "rain/X2/norain-1x2.png", "norain/norain-1.png")
    assert find_pairs("rain200l", tmp_path / "r200") == [("rain/X2/norain-1x2.png", "norain/norain-1.png")]
    _touch(tmp_path / "p", "lq/a/b.png", "gt/a/b.jpg")
    assert find_pairs("pairs", tmp_path / "p", lq_dir="lq", gt_dir="gt") == [("lq/a/b.png", "gt/a/b.jpg")]
    _touch(tmp_path / "did", "x/1.jpg", "x/notes.txt.png")
    assert find_pairs("did", tmp_path / "did") == [("x/1.jpg", "x/1.jpg")]


def test_layout_errors_name_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="no rain/X2/ folder"):
        find_pairs("rain200h", tmp_path)
    with pytest.raises(LayoutError, match="unknown layout 'rain300'"):
        find_pairs("rain300", tmp_path)
    _touch(tmp_path / "drop", "data/0_rain.png", "gt/0_clean.png", "gt/1_clean.png")
    with pytest.raises(LayoutError, match="1_clean.png has no rainy counterpart"):
        raindrop_layout(tmp_path / "drop")
    (tmp_path / "both" / "input").mkdir(parents=True)
    (tmp_path / "both" / "Source").mkdir()
    (tmp_path / "both" / "TARGET").mkdir()
    with pytest.raises(LayoutError, match="ambiguous"):
        rain13k_layout(tmp_path / "both")


def test_natural_key_orders_numbers_by_value() -> None:
    names = ["rain-10.png", "rain-2.png", "a/rain-1.png", "rain-02.png"]
    assert sorted(names, key=natural_key) == ["a/rain-1.png", "rain-02.png", "rain-2.png", "rain-10.png"]
