"""Pairing files of the RainTrainH layout (rain-N with norain-N)."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from erl_plugin.data.layouts import Pair, raintrainh_pairs


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
